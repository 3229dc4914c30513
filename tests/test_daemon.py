"""The smart-speaker daemon on fakes: wake word, follow-up window, barge-in, recovery, status."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve

from voicebot.audio import pcm16_to_float, silence
from voicebot.config import DaemonSettings, Settings, SkillSettings
from voicebot.engines import Engines
from voicebot.engines.fake import FakeChat, FakeStt, FakeTts, FakeVad, FakeWakeWord, tone
from voicebot.events import (
    AudioOut,
    Interrupted,
    ReplyDone,
    SessionState,
    StateChanged,
    Transcript,
    WakeWordDetected,
)
from voicebot.session import Session
from voicebot.store import Store
from voicebot.transports.daemon import Daemon, ResamplingSource, StatusReporter, cue, sd_notify
from voicebot.transports.satellite import RemoteConversation

from .conftest import REPO, Recorder, paced

RATE = 16000


def wake_word() -> bytes:
    return tone(0.5, hz=880.0, level=0.4)


def speech(seconds: float = 0.8) -> bytes:
    return tone(seconds, hz=220.0)


def make_daemon(
    settings: Settings,
    recorder: Recorder,
    *,
    replies: list[str] | None = None,
    texts: list[str] | None = None,
    daemon: DaemonSettings | None = None,
    token_delay_s: float = 0.0,
    store: Store | None = None,
    clock: Any = None,
    wake: Any = None,
) -> tuple[Daemon, FakeStt]:
    stt = FakeStt(texts or ["what is two plus two", "and three plus three", "later"])
    engines = Engines(
        stt=stt,
        llm=FakeChat(replies or ["Four.", "Six.", "Later."], token_delay_s=token_delay_s),
        tts=FakeTts(seconds_per_char=0.05),
        vad_factory=FakeVad,
    )
    options = daemon or DaemonSettings(follow_up_s=2.0, command_timeout_s=2.0)

    # The fake chat model answers "what is two plus two" here, not the arithmetic skill.
    plain = replace(settings, skills=SkillSettings(enabled=False))

    def conversation(sink):  # type: ignore[no-untyped-def]
        return Session(engines, plain, sink=sink, store=store, barge_in=False)

    return (
        Daemon(
            options,
            wake=wake or FakeWakeWord(),
            make_conversation=conversation,
            speaker=recorder,
            output_sample_rate_hz=16000,
            **({"clock": clock} if clock else {}),
        ),
        stt,
    )


async def test_the_wake_word_then_a_question_gets_an_answer(settings: Settings) -> None:
    recorder = Recorder()
    daemon, stt = make_daemon(settings, recorder)
    pcm = silence(0.5, RATE) + wake_word() + silence(0.2, RATE) + speech() + silence(3.0, RATE)
    await asyncio.wait_for(daemon.run(lambda: paced(pcm), restart=False), 30)
    assert len(recorder.of(WakeWordDetected)) == 1
    assert [e.text for e in recorder.of(Transcript)] == ["what is two plus two"]
    assert [e.text for e in recorder.of(ReplyDone)] == ["Four."]
    cues = [e for e in recorder.of(AudioOut) if e.turn_id == 0]
    assert cues and cues[0].pcm == cue("wake", 16000)
    states = [e.state for e in recorder.of(StateChanged)]
    assert states[:3] == [SessionState.IDLE, SessionState.LISTENING, SessionState.THINKING]
    assert SessionState.SPEAKING in states
    assert states[-1] is SessionState.IDLE  # the follow-up window closed


async def test_without_the_wake_word_nothing_happens(settings: Settings) -> None:
    recorder = Recorder()
    daemon, stt = make_daemon(settings, recorder)
    pcm = silence(0.5, RATE) + speech() + silence(1.5, RATE) + speech() + silence(1.5, RATE)
    await asyncio.wait_for(daemon.run(lambda: paced(pcm), restart=False), 30)
    assert not stt.calls
    assert not recorder.of(ReplyDone)


async def test_a_follow_up_within_the_window_needs_no_wake_word(settings: Settings) -> None:
    recorder = Recorder()
    daemon, stt = make_daemon(settings, recorder)
    # "Four." speaks for 0.25 s; the follow-up starts ~1 s after the reply.
    pcm = (
        wake_word()
        + silence(0.2, RATE)
        + speech()
        + silence(2.5, RATE)
        + speech()
        + silence(2.5, RATE)
    )
    await asyncio.wait_for(daemon.run(lambda: paced(pcm), restart=False), 30)
    assert [e.text for e in recorder.of(ReplyDone)] == ["Four.", "Six."]
    assert len(recorder.of(WakeWordDetected)) == 1


async def test_after_the_window_a_question_is_ignored(settings: Settings) -> None:
    recorder = Recorder()
    daemon, stt = make_daemon(settings, recorder)
    pcm = (
        wake_word()
        + silence(0.2, RATE)
        + speech()
        + silence(5.0, RATE)
        + speech()
        + silence(2.0, RATE)
    )
    await asyncio.wait_for(daemon.run(lambda: paced(pcm), restart=False), 30)
    assert [e.text for e in recorder.of(ReplyDone)] == ["Four."]
    assert len(stt.calls) == 1


async def test_nobody_speaking_after_the_wake_word_times_out(settings: Settings) -> None:
    recorder = Recorder()
    daemon, stt = make_daemon(settings, recorder)
    pcm = wake_word() + silence(3.0, RATE) + speech() + silence(2.0, RATE)
    await asyncio.wait_for(daemon.run(lambda: paced(pcm), restart=False), 30)
    assert not stt.calls
    assert [e.state for e in recorder.of(StateChanged)][-1] is SessionState.IDLE


async def test_one_long_wake_word_wakes_it_once(settings: Settings) -> None:
    recorder = Recorder()
    daemon, _ = make_daemon(settings, recorder)
    pcm = tone(1.5, hz=880.0, level=0.4) + silence(2.5, RATE)
    await asyncio.wait_for(daemon.run(lambda: paced(pcm), restart=False), 30)
    assert len(recorder.of(WakeWordDetected)) == 1


async def test_the_wake_word_interrupts_the_reply(settings: Settings) -> None:
    recorder = Recorder()
    long = "One. Two. Three. Four. Five. Six. Seven. Eight."
    wide = replace(settings, llm=replace(settings.llm, max_sentences=0))
    daemon, _ = make_daemon(wide, recorder, replies=[long, "Okay."])
    pcm = (
        wake_word()
        + silence(0.2, RATE)
        + speech()
        + silence(1.5, RATE)
        + wake_word()
        + silence(0.2, RATE)
        + speech()
        + silence(3.0, RATE)
    )
    await asyncio.wait_for(daemon.run(lambda: paced(pcm), restart=False), 30)
    assert len(recorder.of(WakeWordDetected)) == 2
    interrupted = recorder.of(Interrupted)
    assert interrupted and interrupted[0].turn_id == 1
    assert len(interrupted[0].heard_text) < len(long)
    assert [e.text for e in recorder.of(ReplyDone)][-1] == "Okay."


async def test_a_failing_source_is_reopened_and_the_next_wake_word_answered(
    settings: Settings,
) -> None:
    recorder = Recorder()
    daemon, _ = make_daemon(settings, recorder)
    opened = 0

    async def flaky() -> AsyncIterator[bytes]:
        nonlocal opened
        opened += 1
        if opened == 1:
            async for chunk in paced(silence(0.3, RATE)):
                yield chunk
            raise OSError("USB microphone unplugged")
        async for chunk in paced(wake_word() + silence(0.2, RATE) + speech() + silence(3.0, RATE)):
            yield chunk
        daemon.stop()

    await asyncio.wait_for(daemon.run(flaky), 30)
    assert opened == 2
    assert [e.text for e in recorder.of(ReplyDone)] == ["Four."]
    assert daemon.status.info["errors"] == 1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def http_status(port: int) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert response.startswith(b"HTTP/1.1 200")
    data: dict[str, Any] = json.loads(response.split(b"\r\n\r\n", 1)[1])
    return data


async def test_status_file_hook_and_http_endpoint(settings: Settings, tmp_path: Path) -> None:
    status_file = tmp_path / "status.json"
    hook_log = tmp_path / "hook.log"
    hook = tmp_path / "hook.sh"
    hook.write_text(f'#!/bin/sh\necho "$1" >> {hook_log}\n')
    hook.chmod(0o755)
    port = free_port()
    options = DaemonSettings(
        follow_up_s=1.0,
        command_timeout_s=2.0,
        status_file=str(status_file),
        state_hook=str(hook),
        status_port=port,
    )
    queries: list[asyncio.Task[dict[str, Any]]] = []

    class AskOnWake(Recorder):
        """Asks the HTTP endpoint for the state as soon as the daemon listens after a wake."""

        async def __call__(self, event: Any) -> None:
            await super().__call__(event)
            if isinstance(event, StateChanged) and event.state is SessionState.LISTENING:
                if not queries:
                    queries.append(asyncio.create_task(http_status(port)))

    recorder = AskOnWake()
    daemon, _ = make_daemon(settings, recorder, daemon=options)
    pcm = wake_word() + silence(0.2, RATE) + speech() + silence(2.5, RATE)
    await asyncio.wait_for(daemon.run(lambda: paced(pcm), restart=False), 30)
    seen = await asyncio.wait_for(queries[0], 10)
    # Not "starting": the state of the moment, a conversation in progress.
    assert seen["state"] in ("listening", "thinking", "speaking") and seen["wake_words"] == 1
    data = json.loads(status_file.read_text())
    assert data["state"] == "idle" and data["wake_words"] == 1 and data["turns"] == 1
    lines = hook_log.read_text().split()
    assert lines[:3] == ["idle", "listening", "thinking"] and "speaking" in lines
    assert lines[-1] == "idle"  # hooks ran in order, and close() waited for them


async def test_status_http_endpoint_answers(settings: Settings) -> None:
    port = free_port()
    reporter = StatusReporter(DaemonSettings(status_port=port))
    await reporter.start()
    try:
        assert (await http_status(port))["state"] == "starting"
    finally:
        await reporter.close()


async def test_an_unreachable_server_gets_an_error_chime_and_the_daemon_carries_on(
    settings: Settings,
) -> None:
    from voicebot.transports.satellite import RemoteConversation

    recorder = Recorder()
    daemon = Daemon(
        DaemonSettings(follow_up_s=1.0, command_timeout_s=1.0),
        wake=FakeWakeWord(),
        make_conversation=lambda sink: RemoteConversation("ws://127.0.0.1:9/ws", sink),
        speaker=recorder,
        output_sample_rate_hz=16000,
    )
    pcm = wake_word() + silence(1.0, RATE) + speech() + silence(2.5, RATE) + wake_word()
    pcm += silence(0.5, RATE)
    await asyncio.wait_for(daemon.run(lambda: paced(pcm), restart=False), 30)
    chimes = [e.pcm for e in recorder.of(AudioOut)]
    assert chimes.count(cue("error", 16000)) == 2
    assert len(recorder.of(WakeWordDetected)) == 2
    assert daemon.status.info["errors"] == 2


# ----------------------------------------------------------------------------- restarts


class FlakyWakeWord(FakeWakeWord):
    """Raises once, on its ``fail_at``-th chunk: an unexpected error inside a cycle."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.chunks = 0
        self.fail_at = fail_at

    def process(self, pcm: bytes) -> bool:
        self.chunks += 1
        if self.chunks == self.fail_at:
            raise RuntimeError("wake word model crashed")
        return super().process(pcm)


async def test_every_source_is_closed_on_restart_and_on_exit(settings: Settings) -> None:
    recorder = Recorder()
    daemon, _ = make_daemon(settings, recorder, wake=FlakyWakeWord(fail_at=5))
    opened = 0
    closed: list[int] = []

    async def chunks(n: int) -> AsyncIterator[bytes]:
        if n == 1:  # the cycle fails in the wake word model, not in the source
            async for chunk in paced(silence(2.0, RATE)):
                yield chunk
        elif n == 2:  # the device fails
            async for chunk in paced(silence(0.2, RATE)):
                yield chunk
            raise OSError("USB microphone unplugged")
        else:
            async for chunk in paced(wake_word() + silence(0.2, RATE) + speech()):
                yield chunk
            async for chunk in paced(silence(3.0, RATE)):
                if recorder.of(ReplyDone):
                    daemon.stop()
                yield chunk
            raise AssertionError("never stopped")

    def open_source() -> ResamplingSource:
        nonlocal opened
        opened += 1
        n = opened
        return ResamplingSource(chunks(n), RATE, close=lambda: closed.append(n))

    await asyncio.wait_for(daemon.run(open_source), 30)
    assert opened == 3
    assert closed == [1, 2, 3]  # each device closed as its cycle ended, the last one on exit
    assert [e.text for e in recorder.of(ReplyDone)] == ["Four."]
    assert daemon.status.info["errors"] == 2


# ----------------------------------------------------------------------------- cue echo


class ListeningConversation:
    """A conversation that only records what the daemon gives it."""

    conversation_id = "c1"
    replying = False

    def __init__(self) -> None:
        self.log: list[str | bytes] = []

    async def start(self) -> str:
        return self.conversation_id

    async def feed(self, pcm: bytes) -> None:
        self.log.append(pcm)

    def reset_input(self) -> None:
        self.log.append("reset")

    async def interrupt(self) -> None:
        self.log.append("interrupt")

    async def end_of_input(self) -> None:
        pass

    async def close(self) -> None:
        pass


def peak_hz(pcm: bytes) -> float:
    samples = pcm16_to_float(pcm)
    return float(np.argmax(np.abs(np.fft.rfft(samples)))) * RATE / samples.size


def loud(pcm: bytes) -> bool:
    return float(np.sqrt(np.mean(pcm16_to_float(pcm) ** 2))) > 0.05


async def test_the_wake_cue_and_its_echo_are_not_fed_to_the_conversation() -> None:
    conversation = ListeningConversation()
    daemon = Daemon(
        DaemonSettings(follow_up_s=1.0, command_timeout_s=2.0),
        wake=FakeWakeWord(),
        make_conversation=lambda sink: conversation,
        speaker=Recorder(),
        output_sample_rate_hz=16000,
    )
    echo = cue("wake", RATE)  # what the microphone hears of the chime, right after the wake
    pcm = wake_word() + echo + silence(0.3, RATE) + speech(0.6) + silence(1.0, RATE)
    await asyncio.wait_for(daemon.run(lambda: paced(pcm), restart=False), 30)
    fed = [item for item in conversation.log if isinstance(item, bytes)]
    heard = [chunk for chunk in fed if loud(chunk)]
    assert heard, "the user's speech after the cue must be fed"
    assert all(peak_hz(chunk) < 400 for chunk in heard)  # 220 Hz speech; no 660/880 Hz cue
    first_feed = next(i for i, item in enumerate(conversation.log) if isinstance(item, bytes))
    assert conversation.log[first_feed - 1] == "reset"  # the segmenter starts clean


# ----------------------------------------------------------------------------- state hooks


def words(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


async def read_lines(path: Path, count: int) -> list[str]:
    async with asyncio.timeout(15):
        while len(words(path)) < count:  # noqa: ASYNC110  (another process writes it)
            await asyncio.sleep(0.05)
    return words(path)


async def test_state_hooks_run_one_at_a_time_in_order(tmp_path: Path) -> None:
    log = tmp_path / "hook.log"
    hook = tmp_path / "hook.sh"
    # The first hook is the slowest: run side by side, it would finish last.
    hook.write_text(f'#!/bin/sh\n[ "$1" = idle ] && sleep 0.5\necho "$1" >> {log}\n')
    hook.chmod(0o755)
    reporter = StatusReporter(DaemonSettings(state_hook=str(hook)))
    await reporter.start()
    order = [
        SessionState.IDLE,
        SessionState.LISTENING,
        SessionState.THINKING,
        SessionState.SPEAKING,
        SessionState.LISTENING,
        SessionState.IDLE,
    ]
    for state in order:
        reporter.set(state)
    try:
        assert await read_lines(log, len(order)) == [s.value for s in order]
    finally:
        await asyncio.wait_for(reporter.close(), 10)


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_a_hook_past_its_timeout_is_killed_and_the_next_one_runs(tmp_path: Path) -> None:
    log = tmp_path / "hook.log"
    pid_file = tmp_path / "pid"
    hook = tmp_path / "hook.sh"
    hook.write_text(
        f'#!/bin/sh\nif [ "$1" = idle ]; then echo $$ > {pid_file}; exec sleep 60; fi\n'
        f'echo "$1" >> {log}\n'
    )
    hook.chmod(0o755)
    reporter = StatusReporter(DaemonSettings(state_hook=str(hook)), hook_timeout_s=0.5)
    await reporter.start()
    reporter.set(SessionState.IDLE)
    reporter.set(SessionState.LISTENING)
    try:
        assert await read_lines(log, 1) == ["listening"]
        assert process_gone(int(pid_file.read_text()))
    finally:
        await asyncio.wait_for(reporter.close(), 10)


async def test_closing_the_reporter_kills_a_hanging_hook(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 60\n")
    hook.chmod(0o755)
    reporter = StatusReporter(DaemonSettings(state_hook=str(hook)), hook_timeout_s=60)
    await reporter.start()
    reporter.set(SessionState.IDLE)
    async with asyncio.timeout(15):
        while not pid_file.exists() or not pid_file.read_text().strip():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    await asyncio.wait_for(reporter.close(), 10)
    assert process_gone(int(pid_file.read_text()))


# ----------------------------------------------------------------------------- store


async def test_a_conversation_continues_across_wake_ups_until_its_timeout(
    settings: Settings, tmp_path: Path
) -> None:
    store = Store(tmp_path / "daemon.db")
    offset = [0.0]
    recorder = Recorder()
    daemon, _ = make_daemon(
        settings,
        recorder,
        daemon=DaemonSettings(follow_up_s=0.5, command_timeout_s=1.5, conversation_timeout_s=60),
        store=store,
        clock=lambda: time.monotonic() + offset[0],
    )
    turn = wake_word() + silence(0.2, RATE) + speech() + silence(2.0, RATE)

    async def source() -> AsyncIterator[bytes]:
        async for chunk in paced(turn + turn):  # two wake-ups within the timeout
            yield chunk
        offset[0] += 3600.0  # an hour later
        async for chunk in paced(turn):
            yield chunk

    try:
        await asyncio.wait_for(daemon.run(source, restart=False), 60)
        assert len(recorder.of(WakeWordDetected)) == 3
        conversations = sorted(store.conversations(), key=lambda c: c.created_at)
        assert len(conversations) == 2
        first, second = (store.turns(c.id) for c in conversations)
        assert [t.role for t in first] == ["user", "assistant", "user", "assistant"]
        assert [t.text for t in first if t.role == "user"] == [
            "what is two plus two",
            "and three plus three",
        ]
        assert [(t.role, t.text) for t in second] == [("user", "later"), ("assistant", "Later.")]
    finally:
        store.close()


# ----------------------------------------------------------------------------- systemd


async def test_systemd_hears_ready_watchdog_status_and_stopping(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = tmp_path / "notify"
    messages: list[str] = []

    async def listen(systemd: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            messages.append((await loop.sock_recv(systemd, 4096)).decode())

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(address))
        systemd.setblocking(False)
        listener = asyncio.create_task(listen(systemd))
        monkeypatch.setenv("NOTIFY_SOCKET", str(address))
        monkeypatch.setenv("WATCHDOG_USEC", "400000")  # ping every 0.2 s
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
        recorder = Recorder()
        daemon, _ = make_daemon(settings, recorder)
        pcm = wake_word() + silence(0.2, RATE) + speech() + silence(3.0, RATE)
        try:
            await asyncio.wait_for(daemon.run(lambda: paced(pcm), restart=False), 30)
            async with asyncio.timeout(5):
                while "STOPPING=1" not in messages:  # noqa: ASYNC110  (the listener fills it)
                    await asyncio.sleep(0.01)
        finally:
            listener.cancel()
    assert messages[0] == "READY=1"
    assert messages.count("WATCHDOG=1") >= 2
    assert "STATUS=listening" in messages and "STATUS=speaking" in messages
    assert messages[-1] == "STOPPING=1"


def test_sd_notify_speaks_to_an_abstract_socket_and_is_quiet_without_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = f"voicebot-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind("\0" + name)
        systemd.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd_notify("READY=1")
        assert systemd.recv(100) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sd_notify("READY=1")


def install_service(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voicebot", "daemon", *argv],
        env={**os.environ, "VOICEBOT_MODELS": str(REPO / "models")},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


def test_install_service_keeps_every_flag_and_hides_a_token(tmp_path: Path) -> None:
    unit = tmp_path / "voicebot.service"
    result = install_service(
        tmp_path,
        "--wake-word",
        "hey_jarvis",
        "--no-cue",
        "--token",
        "S3CRET",
        "--install-service",
        str(unit),
        "--credential-file",
        str(tmp_path / "token"),
        "--",
        "--follow-up",
        "5",
    )
    assert result.returncode == 0, result.stderr
    exec_start = next(line for line in unit.read_text().splitlines() if "ExecStart=" in line)
    assert exec_start.endswith("daemon --wake-word hey_jarvis --no-cue --follow-up 5")
    # The token goes to a root-only credential file (tests/test_security.py), not the unit.
    assert "S3CRET" not in unit.read_text()
    assert f"LoadCredential=token:{tmp_path / 'token'}" in unit.read_text()
    assert unit.stat().st_mode & 0o777 == 0o644
    assert "RuntimeDirectory=voicebot" in unit.read_text()
    assert "/opt/" not in unit.read_text()

    plain = tmp_path / "plain.service"
    assert install_service(tmp_path, "--install-service", str(plain)).returncode == 0
    assert plain.stat().st_mode & 0o777 == 0o644


# ----------------------------------------------------------------------------- satellite


class FakeServer:
    """A ``voicebot serve`` stand-in: records what comes, and can drop a reply half-way."""

    def __init__(self) -> None:
        self.starts: list[dict[str, Any]] = []
        self.audio: list[bytearray] = []
        self.release = asyncio.Event()
        """Set: "ready" is sent (clear it to make connecting hang)."""
        self.release.set()
        self.drop_first_after_bytes = 0
        """On the first connection, start a reply after this much audio, then vanish."""

    async def handler(self, ws: ServerConnection) -> None:
        self.starts.append(json.loads(await ws.recv()))
        received = bytearray()
        self.audio.append(received)
        await self.release.wait()
        await ws.send(json.dumps({"type": "ready", "conversation_id": "conv-1"}))
        async for frame in ws:
            if isinstance(frame, str):
                if json.loads(frame).get("type") == "stop":
                    return
                continue
            received += frame
            first = len(self.starts) == 1
            if (
                first
                and self.drop_first_after_bytes
                and len(received) >= self.drop_first_after_bytes
            ):
                await ws.send(json.dumps({"type": "state", "state": "thinking"}))
                await ws.send(json.dumps({"type": "transcript", "turn_id": 1, "text": "hi"}))
                await ws.send(json.dumps({"type": "state", "state": "speaking"}))
                await ws.send(bytes(2 * 2205))  # 0.1 s of the reply, then the server dies
                return


def satellite(url: str, recorder: Recorder) -> Daemon:
    return Daemon(
        DaemonSettings(follow_up_s=1.0, command_timeout_s=3.0),
        wake=FakeWakeWord(),
        make_conversation=lambda sink: RemoteConversation(url, sink),
        speaker=recorder,
        output_sample_rate_hz=16000,
    )


async def test_a_satellite_losing_its_server_mid_reply_chimes_and_sleeps(
    settings: Settings,
) -> None:
    fake = FakeServer()
    fake.drop_first_after_bytes = 2 * 8000  # half a second of the question
    async with serve(fake.handler, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
        recorder = Recorder()
        daemon = satellite(url, recorder)
        pcm = (
            wake_word()
            + silence(0.2, RATE)
            + speech(1.5)
            + silence(1.0, RATE)
            + speech(1.0)  # no wake word: not for the satellite, asleep again
            + silence(1.0, RATE)
            + wake_word()
            + silence(0.2, RATE)
            + speech(0.5)
            + silence(0.5, RATE)
        )
        await asyncio.wait_for(daemon.run(lambda: paced(pcm), restart=False), 30)
    chimes = [e.pcm for e in recorder.of(AudioOut)]
    assert chimes.count(cue("error", 16000)) == 1
    states = [e.state for e in recorder.of(StateChanged)]
    speaking = states.index(SessionState.SPEAKING)
    assert states[speaking + 1] is SessionState.IDLE  # no follow-up window on a dead server
    assert len(fake.starts) == 2  # reconnected by the second wake word only
    assert fake.starts[1]["conversation_id"] == "conv-1"  # the same conversation resumed
    assert daemon.status.info["errors"] == 1


async def test_connecting_does_not_hold_up_the_daemon_and_drops_that_audio(
    settings: Settings,
) -> None:
    fake = FakeServer()
    fake.release.clear()
    async with serve(fake.handler, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
        recorder = Recorder()
        daemon = satellite(url, recorder)

        async def source() -> AsyncIterator[bytes]:
            # While "ready" is withheld the daemon must keep taking audio: if connecting
            # blocked its loop, this would never get to answer the server.
            async for chunk in paced(wake_word() + silence(0.2, RATE) + speech(1.0)):
                yield chunk
            fake.release.set()
            async for chunk in paced(silence(1.5, RATE)):
                yield chunk

        await asyncio.wait_for(daemon.run(source, restart=False), 30)
    assert cue("error", 16000) not in [e.pcm for e in recorder.of(AudioOut)]
    assert len(fake.audio) == 1 and fake.audio[0], "audio flows once connected"
    assert not loud(bytes(fake.audio[0])), "the speech said while connecting was dropped"
