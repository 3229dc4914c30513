"""The smart-speaker daemon on fakes: wake word, follow-up window, barge-in, recovery, status."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

from voicebot.audio import silence
from voicebot.config import DaemonSettings, Settings
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
from voicebot.transports.daemon import Daemon, StatusReporter, cue

from .conftest import Recorder, paced

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
) -> tuple[Daemon, FakeStt]:
    stt = FakeStt(texts or ["what is two plus two", "and three plus three", "later"])
    engines = Engines(
        stt=stt,
        llm=FakeChat(replies or ["Four.", "Six.", "Later."], token_delay_s=token_delay_s),
        tts=FakeTts(seconds_per_char=0.05),
        vad_factory=FakeVad,
    )
    options = daemon or DaemonSettings(follow_up_s=2.0, command_timeout_s=2.0)

    def conversation(sink):  # type: ignore[no-untyped-def]
        return Session(engines, settings, sink=sink, barge_in=False)

    return (
        Daemon(
            options,
            wake=FakeWakeWord(),
            make_conversation=conversation,
            speaker=recorder,
            output_sample_rate_hz=16000,
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


async def test_status_file_hook_and_http_endpoint(settings: Settings, tmp_path: Path) -> None:
    status_file = tmp_path / "status.json"
    hook_log = tmp_path / "hook.log"
    hook = tmp_path / "hook.sh"
    hook.write_text(f'#!/bin/sh\necho "$1" >> {hook_log}\n')
    hook.chmod(0o755)
    options = DaemonSettings(
        follow_up_s=1.0,
        command_timeout_s=2.0,
        status_file=str(status_file),
        state_hook=str(hook),
        status_port=0,
    )
    recorder = Recorder()
    daemon, _ = make_daemon(settings, recorder, daemon=options)
    pcm = wake_word() + silence(0.2, RATE) + speech() + silence(2.5, RATE)
    await asyncio.wait_for(daemon.run(lambda: paced(pcm), restart=False), 30)
    data = json.loads(status_file.read_text())
    assert data["state"] == "idle" and data["wake_words"] == 1 and data["turns"] == 1
    deadline = time.monotonic() + 5
    # The hook runs in its own process: poll its log.
    while time.monotonic() < deadline and "speaking" not in hook_log.read_text():  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    lines = hook_log.read_text().split()
    assert lines[:3] == ["idle", "listening", "thinking"] and "speaking" in lines


async def test_status_http_endpoint_answers(settings: Settings) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    reporter = StatusReporter(DaemonSettings(status_port=port))
    await reporter.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert response.startswith(b"HTTP/1.1 200")
        assert json.loads(response.split(b"\r\n\r\n", 1)[1])["state"] == "starting"
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
