"""``voicebot bench --soak MINUTES``: a real ``voicebot serve`` under hours of real-time use.

What a server left running for weeks meets, compressed: ``sessions`` clients that stream
microphone-like audio in real time the whole time (silence between questions, as a browser
does), ask spoken questions, interrupt some replies by talking over them (barge-in), send a
malformed frame now and then (bad JSON, an unknown type, a second ``start``, an odd-length
audio frame, an over-long text), and now and then drop the connection with an oversized frame
and reconnect, resuming their conversation.

The server is its own process, so what it holds is measured from outside: resident memory,
threads (native ones included) and open descriptors from ``/proc``, asyncio tasks from its
``/metrics``. They are taken after a warm-up (every path above run once, all sessions closed:
the baseline), every ``sample_s`` while the soak runs, and after it (sessions closed again).
Voice-to-voice latency (end of the question's speech in the clip to the first reply audio at
the client) is reported for the first and the last window of the soak, to show drift.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .audio import silence
from .bench import QUESTIONS, avx2_environment, cpu_info, summarize
from .speech_samples import SpeechMaker, speech_end_s

__all__ = ["SoakOptions", "format_load_table", "format_soak", "run_soak"]

RATE = 16000
_STEP = 2 * RATE // 50  # 20 ms of 16 kHz PCM16
_BAD_FRAMES: tuple[str | bytes, ...] = (
    "{this is not json",
    json.dumps({"type": "dance"}),
    json.dumps({"type": "start", "sample_rate": RATE}),
    b"\x01\x02\x03",
    json.dumps({"type": "text", "text": "x" * 5000}),
)
"""Malformed frames a session sends now and then: each gets an ``error`` event, no close."""
_BAD_FRAME_CODES = frozenset(
    {"bad_json", "unknown_type", "already_started", "bad_audio", "bad_message"}
)
"""The codes of the ``error`` events that answer them (docs/protocol.md)."""


@dataclass
class SoakOptions:
    """What the soak runs."""

    minutes: float
    """How long the sessions talk, after the warm-up."""
    sessions: int = 4
    """Clients talking at once."""
    barge_in_every: int = 4
    """Every n-th question of a session is talked over by the next one as soon as its reply
    starts."""
    bad_frame_every: int = 3
    """Every n-th question of a session is preceded by a malformed frame."""
    reconnect_every: int = 6
    """A session drops its connection (an oversized frame: close 1009) after n questions,
    reconnects and resumes its conversation."""
    pause_s: tuple[float, float] = (0.5, 2.5)
    """Silence streamed between a reply's end and the next question (uniform)."""
    sample_s: float = 30.0
    """How often the server's resources are read while the soak runs."""
    avx2: bool = True
    """Run the server capped at AVX2 (the plain-CPU path); else the machine's best."""
    config: str | None = None
    """The TOML config the server reads (default: the user's)."""
    seed: int = 1


@dataclass
class _Tally:
    """What the clients saw."""

    latencies: list[tuple[float, float]] = field(default_factory=list)
    """(seconds into the soak, voice-to-voice ms) per answered question."""
    questions: int = 0
    unanswered: list[str] = field(default_factory=list)
    barge_ins: int = 0
    interrupted: int = 0
    """Replies the server reported cut (``interrupted``)."""
    bad_frames: int = 0
    bad_frame_errors: int = 0
    """``error`` events answering the malformed frames."""
    other_errors: dict[str, int] = field(default_factory=dict)
    reconnects: int = 0
    resumed: int = 0
    """Reconnections whose ``ready`` brought the conversation back (same id, history)."""
    refused: int = 0
    """Connections refused (1013, server full), retried."""
    close_codes: dict[str, int] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _proc_counts(pid: int) -> dict[str, float]:
    values: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key == "VmRSS":
                values["rss_mb"] = round(int(value.split()[0]) / 1024, 1)
            elif key == "Threads":
                values["threads"] = int(value)
    values["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return values


def _metric(port: int, name: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:  # noqa: S310
        for line in reply.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def _snapshot(pid: int, port: int) -> dict[str, float]:
    # The scrape itself is a connection (and a task) while it is served: read the tasks
    # first, then the process again, so the descriptors are counted without it.
    tasks = _metric(port, "voicebot_asyncio_tasks")
    values = _proc_counts(pid)
    values["tasks"] = -1 if tasks is None else int(tasks)
    return values


class _Client:
    """One simulated user: a microphone that never stops, and the questions it asks."""

    def __init__(
        self,
        index: int,
        url: str,
        questions: list[tuple[bytes, float, str]],
        options: SoakOptions,
        tally: _Tally,
        soak_start: Callable[[], float],
    ) -> None:
        self.index = index
        self.url = url
        self.questions = questions
        self.options = options
        self.tally = tally
        self.soak_start = soak_start
        self.random = random.Random(options.seed * 100 + index)
        self.conversation_id: str | None = None
        self.confirmed = 0
        """Turns this client saw answered in its conversation (user + assistant each)."""
        self.asked = 0

    async def run(self, until: float) -> None:
        """Talk until ``until`` (``time.monotonic``); ends its connection cleanly after."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidStatus

        while time.monotonic() < until:
            try:
                async with connect(self.url, max_size=None, compression=None) as ws:
                    await self._talk(ws, until)
            except ConnectionClosed as closed:
                code = str(closed.rcvd.code if closed.rcvd else "none")
                self.tally.close_codes[code] = self.tally.close_codes.get(code, 0) + 1
                if code == "1013":
                    self.tally.refused += 1
                    await asyncio.sleep(1.0)
                self.tally.reconnects += 1
            except (InvalidStatus, OSError) as error:
                self.tally.other_errors[type(error).__name__] = (
                    self.tally.other_errors.get(type(error).__name__, 0) + 1
                )
                await asyncio.sleep(1.0)

    async def _talk(self, ws: Any, until: float) -> None:
        start: dict[str, Any] = {"type": "start", "sample_rate": RATE}
        if self.conversation_id:
            start["conversation_id"] = self.conversation_id
        await ws.send(json.dumps(start))
        ready = json.loads(await ws.recv())
        if ready.get("type") != "ready":
            raise RuntimeError(f"expected ready, got {ready}")
        if self.conversation_id:
            resumed = ready["conversation_id"] == self.conversation_id and len(
                ready.get("history", [])
            ) >= min(self.confirmed, 50)
            self.tally.resumed += resumed
        self.conversation_id = ready["conversation_id"]
        frames: asyncio.Queue[tuple[float, str | bytes]] = asyncio.Queue()
        mic = _Mic(ws)
        tasks = [asyncio.create_task(mic.run()), asyncio.create_task(_read(ws, frames))]
        try:
            on_this_connection = 0
            while time.monotonic() < until:
                if on_this_connection == self.options.reconnect_every:
                    # Drop the connection the rude way: a frame over the server's limit.
                    await ws.send(b"\0" * (1 << 21))
                    await ws.wait_closed()
                    code = str(ws.close_code)
                    self.tally.close_codes[code] = self.tally.close_codes.get(code, 0) + 1
                    self.tally.reconnects += 1
                    return
                await self._question(ws, mic, frames)
                on_this_connection += 1
                await asyncio.sleep(self.random.uniform(*self.options.pause_s))
            await ws.close()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _next_question(self) -> tuple[bytes, float, str]:
        question = self.questions[(self.index + self.asked) % len(self.questions)]
        self.asked += 1
        return question

    async def _question(
        self, ws: Any, mic: _Mic, frames: asyncio.Queue[tuple[float, str | bytes]]
    ) -> None:
        """Ask one question (maybe after a bad frame; maybe talked over by the next)."""
        options = self.options
        if self.asked % options.bad_frame_every == options.bad_frame_every - 1:
            bad = _BAD_FRAMES[(self.asked // options.bad_frame_every) % len(_BAD_FRAMES)]
            self.tally.bad_frames += 1
            await ws.send(bad)
        barge = self.asked % options.barge_in_every == options.barge_in_every - 1
        pcm, end_s, text = self._next_question()
        speech_end_at = await mic.say(pcm) + end_s
        self.tally.questions += 1
        answered = await self._await_reply(frames, speech_end_at, text, barge=barge, mic=mic)
        if barge and answered:
            self.tally.barge_ins += 1
            pcm, end_s, text = self._next_question()
            speech_end_at = await mic.say(pcm) + end_s
            self.tally.questions += 1
            await self._await_reply(frames, speech_end_at, text, barge=False, mic=mic)

    async def _await_reply(
        self,
        frames: asyncio.Queue[tuple[float, str | bytes]],
        speech_end_at: float,
        text: str,
        *,
        barge: bool,
        mic: _Mic,
    ) -> bool:
        """Wait for this question's transcript, first reply audio and the reply's end.

        With ``barge``, returns as soon as the reply's first audio arrives (the caller then
        talks over it). Returns whether the question was answered.
        """
        turn_id: int | None = None
        first_audio: float | None = None
        replied = False
        reply = ""
        deadline = time.monotonic() + 60
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                async with asyncio.timeout(remaining):
                    at, frame = await frames.get()
                if isinstance(frame, bytes):
                    if turn_id is not None and first_audio is None:
                        first_audio = at
                        self.tally.latencies.append(
                            (at - self.soak_start(), (at - speech_end_at) * 1000)
                        )
                        if barge:
                            return True
                    continue
                event = json.loads(frame)
                kind = event.get("type")
                if kind == "error":
                    code = event.get("code", "")
                    if code in _BAD_FRAME_CODES:
                        self.tally.bad_frame_errors += 1
                    else:
                        self.tally.other_errors[code] = self.tally.other_errors.get(code, 0) + 1
                elif kind == "interrupted":
                    self.tally.interrupted += 1
                elif kind == "transcript" and event.get("final", True) and turn_id is None:
                    if not event.get("text"):
                        self.tally.unanswered.append(f"{text} (heard nothing)")
                        return False
                    if at >= speech_end_at:
                        turn_id = event.get("turn_id")
                elif kind == "reply_done" and turn_id is not None:
                    if event.get("turn_id") == turn_id:
                        replied = True
                        reply = event.get("text", "")
                        self.confirmed += 2
                elif kind == "state" and event.get("state") == "listening" and replied:
                    if first_audio is None:  # a reply nobody heard is no answer
                        self.tally.unanswered.append(f"{text} (silent reply {reply!r})")
                    return first_audio is not None
        except TimeoutError:
            self.tally.unanswered.append(text)
            return False


async def _read(ws: Any, frames: asyncio.Queue[tuple[float, str | bytes]]) -> None:
    from websockets.exceptions import ConnectionClosed

    with contextlib.suppress(ConnectionClosed):
        async for frame in ws:
            frames.put_nowait((time.perf_counter(), frame))


class _Mic:
    """Streams 20 ms frames in real time, silence unless a clip is being said."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self._clips: asyncio.Queue[tuple[bytes, asyncio.Future[float]]] = asyncio.Queue()

    async def say(self, pcm: bytes) -> float:
        """Queue ``pcm``; returns the ``perf_counter`` time its first sample was "captured"."""
        started: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._clips.put_nowait((pcm, started))
        return await started

    async def run(self) -> None:
        from websockets.exceptions import ConnectionClosed

        quiet = silence(0.02, RATE)
        clip = b""
        offset = 0
        begin = time.perf_counter()
        sent = 0
        with contextlib.suppress(ConnectionClosed):
            while True:
                if offset >= len(clip) and not self._clips.empty():
                    clip, started = self._clips.get_nowait()
                    offset = 0
                    # The chunk goes out once its last sample would have been captured.
                    started.set_result(begin + sent * 0.02)
                if offset < len(clip):
                    chunk = clip[offset : offset + _STEP]
                    offset += _STEP
                else:
                    chunk = quiet
                sent += 1
                delay = begin + sent * 0.02 - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -1.0:  # the loop was stalled: do not burst to catch up
                    begin -= delay
                await self.ws.send(chunk)


def _questions(maker: SpeechMaker) -> list[tuple[bytes, float, str]]:
    out = []
    voices = maker.voices()
    for i, text in enumerate(QUESTIONS):
        name, speak = voices[i % len(voices)]
        pcm = silence(0.2, RATE) + speak(text) + silence(0.1, RATE)
        out.append((pcm, speech_end_s(pcm), f"{name}: {text}"))
    return out


def _server_env(options: SoakOptions, data_dir: str) -> dict[str, str]:
    env = dict(os.environ)
    if options.avx2:
        env = avx2_environment(env)
    env["VOICEBOT_DATA_DIR"] = data_dir
    # Every soak client comes from 127.0.0.1, reconnecting while its last connection closes.
    env.setdefault("VOICEBOT_SERVER_MAX_SESSIONS_PER_ADDRESS", "0")
    if options.config:
        env["VOICEBOT_CONFIG"] = str(Path(options.config).resolve())
    return env


def _wait_ready(server: subprocess.Popen[bytes], port: int, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):  # noqa: S310
                return
        except OSError:
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with {server.returncode}") from None
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not become ready") from None
            time.sleep(0.5)


def _settled(pid: int, port: int, baseline: Mapping[str, float] | None) -> dict[str, float]:
    """The server's counts once closed sessions are gone (polled for up to 20 s).

    Without a baseline: until two readings a second apart agree. With one: until no count is
    above it.
    """
    keys = ("threads", "fds", "tasks")
    deadline = time.monotonic() + 20
    snap = _snapshot(pid, port)
    while time.monotonic() < deadline:
        time.sleep(1)
        previous, snap = snap, _snapshot(pid, port)
        if baseline is None and all(snap[k] == previous[k] for k in keys):
            break
        if baseline is not None and all(snap[k] <= baseline[k] for k in keys):
            break
    return snap


def run_soak(
    maker: SpeechMaker, options: SoakOptions, log: Callable[[str], None]
) -> dict[str, Any]:
    """Run the soak against a ``voicebot serve`` of its own; returns the report."""
    questions = _questions(maker)
    port = _free_port()
    url = f"ws://127.0.0.1:{port}/ws"
    with tempfile.TemporaryDirectory() as data_dir:
        server = subprocess.Popen(  # noqa: S603 - our own command
            [sys.executable, "-m", "voicebot", "serve", "--port", str(port)],
            env=_server_env(options, data_dir),
            stdout=subprocess.DEVNULL,
            stderr=open(Path(data_dir) / "server.log", "wb"),  # noqa: SIM115 - closed with the dir
        )
        try:
            _wait_ready(server, port)
            log(f"server ready on port {port} (pid {server.pid}); warming up")
            warm = _Tally()
            asyncio.run(_talk_all(url, questions, _warm_up(options), warm, seconds=0))
            baseline = _settled(server.pid, port, None)
            log(f"baseline after the warm-up: {baseline}")
            tally = _Tally()
            samples: list[dict[str, float]] = []
            asyncio.run(
                _talk_all(
                    url,
                    questions,
                    options,
                    tally,
                    seconds=options.minutes * 60,
                    sample=lambda t: samples.append(
                        {"t_s": round(t, 1), **_snapshot(server.pid, port)}
                    ),
                    log=log,
                )
            )
            after = _settled(server.pid, port, baseline)
            log(f"after the soak, sessions closed: {after}")
            alive = server.poll() is None
        finally:
            server.terminate()
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
    return _report(options, baseline, samples, after, tally, alive)


def _warm_up(options: SoakOptions) -> SoakOptions:
    # Every path once: a bad frame, a barge-in, a dropped connection and a resume.
    return SoakOptions(
        minutes=0,
        sessions=options.sessions,
        barge_in_every=1,
        bad_frame_every=1,
        reconnect_every=1,
        pause_s=(0.2, 0.4),
        seed=options.seed + 7,
    )


async def _talk_all(
    url: str,
    questions: list[tuple[bytes, float, str]],
    options: SoakOptions,
    tally: _Tally,
    *,
    seconds: float,
    sample: Callable[[float], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> None:
    begin = time.perf_counter()
    # The warm-up (no seconds): enough for a question talked over and the next one, a
    # dropped connection and its resume, and the same again.
    until = time.monotonic() + (seconds if seconds > 0 else 25)
    clients = [
        _Client(i, url, questions, options, tally, lambda: begin) for i in range(options.sessions)
    ]
    runs = asyncio.gather(*(c.run(until) for c in clients))
    loop = asyncio.get_running_loop()
    next_sample = 0.0
    assert options.sample_s > 0
    while not runs.done():
        elapsed = time.perf_counter() - begin
        if sample is not None and elapsed >= next_sample:
            await loop.run_in_executor(None, sample, elapsed)
            next_sample += options.sample_s
            if log is not None:
                p50 = summarize([ms for _, ms in tally.latencies[-40:]]).get("p50")
                log(
                    f"{elapsed / 60:5.1f} min: {tally.questions} questions, "
                    f"{len(tally.unanswered)} unanswered, recent p50 {p50} ms"
                )
        await asyncio.wait({runs}, timeout=1.0)
    await runs


def _window(latencies: list[tuple[float, float]], start_s: float, end_s: float) -> dict[str, Any]:
    return summarize([ms for t, ms in latencies if start_s <= t < end_s])


def _report(
    options: SoakOptions,
    baseline: dict[str, float],
    samples: list[dict[str, float]],
    after: dict[str, float],
    tally: _Tally,
    alive: bool,
) -> dict[str, Any]:
    total_s = options.minutes * 60
    window_s = max(30.0, min(600.0, total_s / 4))
    first = _window(tally.latencies, 0, window_s)
    last = _window(tally.latencies, total_s - window_s, total_s + 120)
    drift = None
    if first.get("p50") and last.get("p50"):
        drift = round(last["p50"] / first["p50"], 2)
    # Memory grows while sessions first open (their detectors, buffers, cache slots), then
    # should stay flat: the growth that would show a leak is from the first sample taken after
    # the first window (sessions open, steady) to the last one.
    steady = [x for x in samples if x["t_s"] >= window_s] or samples[-1:]
    rss_growth = None
    if steady:
        first_rss, last_rss = steady[0]["rss_mb"], samples[-1]["rss_mb"]
        rss_growth = round(100 * (last_rss - first_rss) / first_rss, 1)
    idle_growth = round(100 * (after["rss_mb"] - baseline["rss_mb"]) / baseline["rss_mb"], 1)
    return {
        "machine": {
            "cpu": cpu_info(),
            "path": "avx2" if options.avx2 else "best",
            "allocator": _allocator(options),
        },
        "options": {
            "minutes": options.minutes,
            "sessions": options.sessions,
            "barge_in_every": options.barge_in_every,
            "bad_frame_every": options.bad_frame_every,
            "reconnect_every": options.reconnect_every,
        },
        "server_alive": alive,
        "baseline": baseline,
        "after": after,
        "samples": samples,
        "rss_growth_pct": rss_growth,
        "rss_steady_from": steady[0] if steady else None,
        "rss_idle_growth_pct": idle_growth,
        "back_to_baseline": {k: after[k] <= baseline[k] for k in ("threads", "fds", "tasks")},
        "voice_to_voice_ms": summarize([ms for _, ms in tally.latencies]),
        "first_window_ms": {"minutes": round(window_s / 60, 1), **first},
        "last_window_ms": {"minutes": round(window_s / 60, 1), **last},
        "p50_drift": drift,
        "questions": tally.questions,
        "answered": len(tally.latencies),
        "unanswered": len(tally.unanswered),
        "unanswered_names": tally.unanswered[:20],
        "barge_ins": tally.barge_ins,
        "interrupted": tally.interrupted,
        "bad_frames": tally.bad_frames,
        "bad_frame_errors": tally.bad_frame_errors,
        "other_errors": tally.other_errors,
        "reconnects": tally.reconnects,
        "resumed": tally.resumed,
        "refused": tally.refused,
        "close_codes": tally.close_codes,
    }


def _allocator(options: SoakOptions) -> str:
    """How the server's malloc was set up (voicebot.heap), as the report says it."""
    from .config import load_settings

    server = load_settings(options.config).server
    arenas = os.environ.get("MALLOC_ARENA_MAX")
    arenas = f"MALLOC_ARENA_MAX={arenas}" if arenas else f"malloc_arenas {server.malloc_arenas}"
    return f"{arenas}, malloc_trim every {server.memory_trim_interval_s:g} s"


def format_soak(report: Mapping[str, Any]) -> str:
    """The report as a few lines of text."""
    base, after = report["baseline"], report["after"]
    steady = report["rss_steady_from"]
    cpu = report["machine"]["cpu"]
    flags = ", ".join(name for name, has in cpu["flags"].items() if has)
    lines = [
        f"soak: {report['options']['minutes']} min, {report['options']['sessions']} sessions, "
        f"{report['machine']['path']} path; {cpu['model']} ({flags}); "
        f"{report['machine'].get('allocator', '')}",
        f"  server alive at the end: {report['server_alive']}",
        f"  RSS with the sessions open: {steady['rss_mb']} MB at {steady['t_s'] / 60:.1f} min -> "
        f"{report['samples'][-1]['rss_mb']} MB at the end ({report['rss_growth_pct']:+} %); idle "
        f"{base['rss_mb']} -> {after['rss_mb']} MB ({report['rss_idle_growth_pct']:+} %)",
    ]
    for key in ("threads", "fds", "tasks"):
        lines.append(f"  {key}: {base[key]:g} -> {after[key]:g} (sessions closed)")
    v2v, first, last = (
        report["voice_to_voice_ms"],
        report["first_window_ms"],
        report["last_window_ms"],
    )
    lines += [
        f"  voice-to-voice p50/p95: all {v2v.get('p50')}/{v2v.get('p95')} ms; first "
        f"{first['minutes']} min {first.get('p50')}/{first.get('p95')}; last "
        f"{last.get('p50')}/{last.get('p95')} (drift {report['p50_drift']}x)",
        f"  questions {report['questions']}, answered {report['answered']}, unanswered "
        f"{report['unanswered']}; barge-ins {report['barge_ins']} (interrupted "
        f"{report['interrupted']}); bad frames {report['bad_frames']} (errors "
        f"{report['bad_frame_errors']}); reconnects {report['reconnects']} (resumed "
        f"{report['resumed']}, refused {report['refused']}); other errors "
        f"{report['other_errors'] or 'none'}",
    ]
    return "\n".join(lines)


def format_load_table(reports: Sequence[Mapping[str, Any]]) -> str:
    """Soaks at several session counts side by side, p50 against the first count's."""
    first = reports[0]["voice_to_voice_ms"].get("p50")
    lines = [
        "| sessions | questions | voice-to-voice p50 / p95 | p50 / the first row's | unanswered |",
        "|---|---|---|---|---|",
    ]
    for report in reports:
        v2v = report["voice_to_voice_ms"]
        ratio = f"{v2v['p50'] / first:.2f}x" if first and v2v.get("p50") else "-"
        lines.append(
            f"| {report['options']['sessions']} | {report['questions']} | "
            f"{v2v.get('p50')} / {v2v.get('p95')} ms | {ratio} | {report['unanswered']} |"
        )
    return "\n".join(lines)
