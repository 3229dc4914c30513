"""The websocket server on fake engines: the protocol contract and every bad input."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import threading
import wave
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from voicebot.audio import StreamResampler, silence, write_wav
from voicebot.config import Settings
from voicebot.engines import Engines
from voicebot.engines.fake import FakeChat, FakeStt, FakeTts, FakeVad, tone
from voicebot.errors import ConfigError
from voicebot.skills import TimerService
from voicebot.store import Store
from voicebot.transports.websocket import Pacer, VoiceServer

from .conftest import make_settings

RATE = 16000


def engines(llm: FakeChat | None = None, stt: FakeStt | None = None) -> Engines:
    return Engines(
        stt=stt or FakeStt(lambda pcm: "hello there"),
        llm=llm or FakeChat(lambda messages: f"You said {messages[-1]['content']}."),
        tts=FakeTts(sample_rate_hz=22050),
        vad_factory=FakeVad,
    )


class Running:
    def __init__(self, server: VoiceServer) -> None:
        self.server = server

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/ws"

    async def client(self, **start: Any) -> tuple[ClientConnection, dict[str, Any]]:
        ws = await connect(self.ws_url, open_timeout=5)
        await ws.send(json.dumps({"type": "start", "sample_rate": RATE, **start}))
        ready = await next_event(ws, "ready")
        return ws, ready


async def next_event(ws: ClientConnection, kind: str, timeout_s: float = 10) -> dict[str, Any]:
    async with asyncio.timeout(timeout_s):
        while True:
            frame = await ws.recv()
            if isinstance(frame, str):
                event: dict[str, Any] = json.loads(frame)
                if event["type"] == kind:
                    return event


async def collect_until(ws: ClientConnection, kind: str, timeout_s: float = 10) -> list[Any]:
    frames: list[Any] = []
    async with asyncio.timeout(timeout_s):
        while True:
            frame = await ws.recv()
            frames.append(frame if isinstance(frame, bytes) else json.loads(frame))
            if isinstance(frames[-1], dict) and frames[-1]["type"] == kind:
                return frames


async def send_speech(ws: ClientConnection, pcm: bytes, chunk_s: float = 0.02) -> None:
    step = 2 * round(chunk_s * RATE)
    for offset in range(0, len(pcm), step):
        await ws.send(pcm[offset : offset + step])
        await asyncio.sleep(chunk_s / 4)


@pytest.fixture
async def running(settings: Settings, tmp_path: Path) -> AsyncIterator[Running]:
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<!doctype html><title>voicebot</title>")
    settings = replace(settings, server=replace(settings.server, port=0, max_sessions=3))
    store = Store(settings.database_path())
    server = VoiceServer(engines(), settings, store, web_dir=web)
    await server.start()
    yield Running(server)
    await asyncio.wait_for(server.close(), 10)
    store.close()


async def make_server(settings: Settings, **server_settings: Any) -> VoiceServer:
    settings = replace(settings, server=replace(settings.server, port=0, **server_settings))
    server = VoiceServer(engines(), settings, Store(settings.database_path()))
    await server.start()
    return server


async def test_a_spoken_turn_produces_events_in_order(running: Running) -> None:
    ws, ready = await running.client()
    assert ready["protocol"] == 1 and ready["sample_rate"] == 22050 and ready["conversation_id"]
    await send_speech(ws, tone(0.8) + silence(1.0, RATE))
    frames = await collect_until(ws, "metrics")
    kinds = [f["type"] if isinstance(f, dict) else "audio" for f in frames]
    kinds = [k for k in kinds if k != "state"]
    assert kinds[:4] == ["speech_started", "speech_stopped", "transcript", "reply_text"]
    assert kinds.index("audio") > kinds.index("reply_text")
    assert kinds[-2:] == ["reply_done", "metrics"]
    transcript = next(f for f in frames if isinstance(f, dict) and f["type"] == "transcript")
    assert transcript == {"type": "transcript", "turn_id": 1, "text": "hello there", "final": True}
    metrics = frames[-1]["ms"]
    assert {"end_of_turn", "stt", "first_audio", "voice_to_voice"} <= set(metrics)
    await ws.close()


async def test_typed_text_gets_a_spoken_reply(running: Running) -> None:
    ws, _ = await running.client()
    await ws.send(json.dumps({"type": "text", "text": "ping"}))
    frames = await collect_until(ws, "reply_done")
    assert frames[-1]["text"] == "You said ping."
    assert any(isinstance(f, bytes) and len(f) > 0 for f in frames)
    await ws.close()


async def test_output_rate_can_be_requested(running: Running) -> None:
    ws, ready = await running.client(output_sample_rate=16000)
    assert ready["sample_rate"] == 16000
    await ws.send(json.dumps({"type": "text", "text": "abcdefghij"}))
    frames = await collect_until(ws, "reply_done")
    audio = b"".join(f for f in frames if isinstance(f, bytes))
    expected_s = len("You said abcdefghij.") * 0.02
    assert abs(len(audio) / 2 / 16000 - expected_s) < 0.05
    await ws.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("this is not json", "bad_json"),
        ('{"type": "sing"}', "unknown_type"),
        (b"\x01\x02\x03", "bad_audio"),
        ('{"type": "start", "sample_rate": 16000}', "already_started"),
        ('{"type": "text", "text": ""}', "bad_message"),
        ('{"type": "text", "n": ' + "9" * 5000 + "}", "bad_json"),  # valid JSON, too big an int
    ],
)
async def test_bad_input_after_start_is_an_error_and_the_session_goes_on(
    running: Running, frame: str | bytes, code: str
) -> None:
    ws, _ = await running.client()
    await ws.send(frame)
    error = await next_event(ws, "error")
    assert error["code"] == code
    await ws.send(json.dumps({"type": "text", "text": "still there"}))
    assert (await next_event(ws, "reply_done"))["text"] == "You said still there."
    await ws.close()


@pytest.mark.parametrize(
    ("first", "code"),
    [
        (b"\x00\x00" * 160, "not_started"),
        ('{"type": "text", "text": "hi"}', "not_started"),
        ('{"type": "start", "sample_rate": 96000}', "bad_rate"),
        ('{"type": "start", "sample_rate": "fast"}', "bad_rate"),
        ("{{{", "bad_json"),
    ],
)
async def test_bad_input_before_start_is_an_error_and_start_still_works(
    running: Running, first: str | bytes, code: str
) -> None:
    ws = await connect(running.ws_url, open_timeout=5)
    await ws.send(first)
    assert (await next_event(ws, "error"))["code"] == code
    await ws.send(json.dumps({"type": "start", "sample_rate": 8000}))
    assert (await next_event(ws, "ready"))["sample_rate"] == 22050
    await ws.close()


async def test_audio_at_8khz_and_48khz_is_understood(running: Running) -> None:
    from voicebot.audio import resample

    for rate in (8000, 48000):
        ws = await connect(running.ws_url, open_timeout=5)
        await ws.send(json.dumps({"type": "start", "sample_rate": rate}))
        await next_event(ws, "ready")
        pcm = resample(tone(0.8) + silence(1.0, RATE), RATE, rate)
        step = 2 * rate // 50
        for offset in range(0, len(pcm), step):
            await ws.send(pcm[offset : offset + step])
        assert (await next_event(ws, "transcript"))["text"] == "hello there"
        await ws.close()


async def test_an_oversized_message_closes_only_that_session(settings: Settings) -> None:
    server = await make_server(settings, max_message_bytes=4096)
    try:
        url = f"ws://127.0.0.1:{server.port}/ws"
        other = await connect(url, open_timeout=5)
        await other.send(json.dumps({"type": "start", "sample_rate": RATE}))
        await next_event(other, "ready")
        ws = await connect(url, open_timeout=5)
        await ws.send(json.dumps({"type": "start", "sample_rate": RATE}))
        await next_event(ws, "ready")
        await ws.send(bytes(8192))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        await other.send(json.dumps({"type": "text", "text": "fine"}))
        assert (await next_event(other, "reply_done"))["text"] == "You said fine."
        await other.close()
    finally:
        await server.close()


async def test_a_token_is_checked_before_any_audio(settings: Settings) -> None:
    server = await make_server(settings, token="s3cret")
    try:
        url = f"ws://127.0.0.1:{server.port}/ws"
        # Non-ASCII tokens too: a str compare_digest would raise on them, not refuse them.
        for token in (None, "wrong", "s3crét", "\ud800"):
            ws = await connect(url, open_timeout=5)
            start: dict[str, Any] = {"type": "start", "sample_rate": RATE}
            if token:
                start["token"] = token
            await ws.send(json.dumps(start))
            assert (await next_event(ws, "error"))["code"] == "unauthorized"
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert server.sessions == {}
        ws = await connect(url, open_timeout=5)
        await ws.send(json.dumps({"type": "start", "sample_rate": RATE, "token": "s3cret"}))
        assert (await next_event(ws, "ready"))["conversation_id"]
        await ws.close()
    finally:
        await server.close()


async def test_beyond_loopback_a_token_is_required(settings: Settings) -> None:
    public = replace(settings, server=replace(settings.server, host="0.0.0.0"))
    with pytest.raises(ConfigError, match="token"):
        VoiceServer(engines(), public, Store(":memory:"))


async def test_a_full_server_closes_with_1013(running: Running) -> None:
    clients = [await running.client() for _ in range(3)]
    extra = await connect(running.ws_url, open_timeout=5)
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(extra.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    for ws, _ in clients:
        await ws.close()


async def test_connections_beyond_the_cap_are_refused_even_before_start(
    running: Running,
) -> None:
    # Five arrive at once on a server of three slots, none having sent start yet.
    arrivals = await asyncio.gather(*(connect(running.ws_url, open_timeout=5) for _ in range(5)))
    async with asyncio.timeout(5):
        while sum(ws.close_code is not None for ws in arrivals) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    refused = [ws for ws in arrivals if ws.close_code is not None]
    admitted = [ws for ws in arrivals if ws.close_code is None]
    assert [ws.close_code for ws in refused] == [1013, 1013]
    assert running.server.active_connections == 3
    for ws in admitted:
        await ws.send(json.dumps({"type": "start", "sample_rate": RATE}))
        await next_event(ws, "ready")
    for ws in admitted:
        await ws.close()


async def test_an_idle_session_is_closed(settings: Settings) -> None:
    server = await make_server(settings, idle_timeout_s=0.5)
    try:
        ws = await connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=5)
        await ws.send(json.dumps({"type": "start", "sample_rate": RATE}))
        await next_event(ws, "ready")
        closed = await closed_by_server(ws)
        assert closed.rcvd is not None and closed.rcvd.reason == "idle timeout"
    finally:
        await server.close()


async def closed_by_server(ws: ClientConnection, timeout_s: float = 5.0) -> ConnectionClosed:
    """Read until the server closes the connection; what it closed with."""
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(timeout_s):
            while True:
                await ws.recv()
    return closed.value


@contextlib.asynccontextmanager
async def silence_streamed(
    ws: ClientConnection, chunk_s: float = 0.02, every_s: float = 0.02
) -> AsyncIterator[None]:
    """Meanwhile, send what a browser with its microphone on sends: silence, in real time
    (or ``chunk_s`` of it every ``every_s``: faster than real time)."""

    async def stream() -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.send(silence(chunk_s, RATE))
                await asyncio.sleep(every_s)

    streamer = asyncio.create_task(stream())
    try:
        yield
    finally:
        streamer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(streamer, 5)


async def test_streamed_silence_does_not_keep_a_session_alive(settings: Settings) -> None:
    server = await make_server(settings, idle_timeout_s=0.5)
    try:
        ws = await connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=5)
        await ws.send(json.dumps({"type": "start", "sample_rate": RATE}))
        await next_event(ws, "ready")
        async with silence_streamed(ws):
            closed = await closed_by_server(ws)
        assert closed.rcvd is not None
        assert (closed.rcvd.code, closed.rcvd.reason) == (1000, "idle timeout")
    finally:
        await server.close()


async def test_a_reply_longer_than_the_idle_timeout_is_not_cut(settings: Settings) -> None:
    server = await make_server(settings, idle_timeout_s=0.3)
    server.engines.llm = FakeChat(["a b c d e f g h"], token_delay_s=0.1)
    try:
        ws = await connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=5)
        await ws.send(json.dumps({"type": "start", "sample_rate": RATE}))
        await next_event(ws, "ready")
        async with silence_streamed(ws):
            await ws.send(json.dumps({"type": "text", "text": "tell me"}))
            assert (await next_event(ws, "reply_done"))["text"] == "a b c d e f g h"
            closed = await closed_by_server(ws)  # idle once the reply is over
        assert closed.rcvd is not None and closed.rcvd.reason == "idle timeout"
    finally:
        await server.close()


async def test_closing_the_server_closes_connections_still_to_start(settings: Settings) -> None:
    server = await make_server(settings)
    ws = await connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=5)
    async with asyncio.timeout(5):
        while server.active_connections < 1:  # noqa: ASYNC110  (a test polling server state)
            await asyncio.sleep(0.02)
    # Well under the 10 s allowed for start: close() must not wait for it.
    await asyncio.wait_for(server.close(), 5)
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001


async def test_stop_finishes_the_reply_then_closes_normally(running: Running) -> None:
    ws, _ = await running.client()
    await ws.send(json.dumps({"type": "text", "text": "bye"}))
    await ws.send(json.dumps({"type": "stop"}))
    frames: list[Any] = []
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(10):
            while True:
                frames.append(await ws.recv())
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    assert any(isinstance(f, str) and '"reply_done"' in f for f in frames)


async def test_a_vanished_client_leaves_nothing_running(running: Running) -> None:
    words = "one two three four, five six seven eight nine ten eleven twelve"
    slow = FakeChat([words], token_delay_s=0.2)
    running.server.engines.llm = slow
    ws, _ = await running.client()
    await ws.send(json.dumps({"type": "text", "text": "talk"}))
    await next_event(ws, "reply_text")
    session = next(iter(running.server.sessions.values()))
    ws.transport.abort()  # the client vanishes without a close frame
    async with asyncio.timeout(5):
        while running.server.sessions:  # noqa: ASYNC110  (a test polling server state)
            await asyncio.sleep(0.05)
    task = session._reply_task  # noqa: SLF001
    assert task is None or task.done()
    await asyncio.sleep(0.5)
    streamed = slow.tokens_streamed
    await asyncio.sleep(0.6)
    assert slow.tokens_streamed == streamed  # generation stopped
    assert streamed < len(words.split())


def leftover_tasks(before: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    return {task for task in asyncio.all_tasks() - before if task is not asyncio.current_task()}


async def test_a_client_vanishing_mid_utterance_leaves_no_tasks(running: Running) -> None:
    before = asyncio.all_tasks()
    ws, _ = await running.client()
    # Half an utterance: speech, then a pause shorter than the end of a turn (which starts
    # an early transcription), and no more.
    await send_speech(ws, tone(0.6) + silence(0.3, RATE))
    await next_event(ws, "speech_started")
    ws.transport.abort()  # the client vanishes without a close frame
    async with asyncio.timeout(5):
        while (  # noqa: ASYNC110  (a test polling server state)
            running.server.sessions or running.server.active_connections or leftover_tasks(before)
        ):
            await asyncio.sleep(0.05)


BAD_INPUTS = [
    (False, b"\x00\x00" * 160, "not_started"),  # audio before start
    (False, "{{{", "bad_json"),
    (True, "this is not json", "bad_json"),
    (True, '{"type": "text", "n": ' + "9" * 5000 + "}", "bad_json"),
    (True, b"\x01\x02\x03", "bad_audio"),
    (True, '{"type": "sing"}', "unknown_type"),
]


@pytest.mark.parametrize(("started", "frame", "code"), BAD_INPUTS)
async def test_bad_input_leaves_a_concurrent_session_untouched(
    running: Running, started: bool, frame: str | bytes, code: str
) -> None:
    running.server.engines.llm = FakeChat(
        lambda messages: f"You said {messages[-1]['content']}.", token_delay_s=0.05
    )
    good, _ = await running.client()
    await good.send(json.dumps({"type": "text", "text": "carry on please"}))
    frames = [await next_event(good, "reply_text")]  # its reply is under way
    if started:
        bad, _ = await running.client()
    else:
        bad = await connect(running.ws_url, open_timeout=5)
    await bad.send(frame)
    assert (await next_event(bad, "error"))["code"] == code
    frames += await collect_until(good, "reply_done")
    assert frames[-1]["text"] == "You said carry on please."
    assert not [f for f in frames if isinstance(f, dict) and f["type"] == "error"]
    assert any(isinstance(f, bytes) and f for f in frames)
    await bad.close()
    await good.close()


async def test_audio_of_an_interrupted_turn_never_leaks_into_the_next(running: Running) -> None:
    running.server.engines.llm = FakeChat(
        ["one. two. three. four. five. six.", "Fine, thanks."], token_delay_s=0.1
    )
    ws, ready = await running.client(output_sample_rate=16000)  # resampled from 22050 Hz
    await ws.send(json.dumps({"type": "text", "text": "count"}))
    async with asyncio.timeout(10):
        while not isinstance(await ws.recv(), bytes):  # some of turn 1's audio was sent
            pass
    await ws.send(json.dumps({"type": "interrupt"}))
    await next_event(ws, "interrupted")
    await ws.send(json.dumps({"type": "text", "text": "how are you"}))
    frames = await collect_until(ws, "reply_done")
    received = b"".join(f for f in frames if isinstance(f, bytes))
    pieces = [f["text"] for f in frames if isinstance(f, dict) and f["type"] == "reply_text"]
    voice = FakeTts(sample_rate_hz=22050)
    spoken = b"".join(b"".join(voice.synthesize(piece)) for piece in pieces)
    expected = StreamResampler(22050, ready["sample_rate"]).process(spoken, last=True)
    got = np.frombuffer(received, "<i2").astype(np.int32)
    want = np.frombuffer(expected, "<i2").astype(np.int32)
    assert abs(len(got) - len(want)) <= 2  # the reply's own end is not held back either
    n = min(len(got), len(want))
    assert np.abs(got[:n] - want[:n]).max() < 300  # no samples of turn 1 in front
    await ws.close()


async def test_the_event_loop_stays_free_during_inference(running: Running) -> None:
    running.server.engines.llm = FakeChat(["a b c d e f g h i j"], token_delay_s=0.15)
    busy, _ = await running.client()
    other, _ = await running.client()
    log: list[str] = []  # pongs and the busy session's events, in the order they came
    pings_sent = 0
    replied = asyncio.Event()

    async def pinger() -> None:
        nonlocal pings_sent
        while not replied.is_set():
            pings_sent += 1
            await asyncio.wait_for(await other.ping(), 5)
            log.append("pong")
            await asyncio.sleep(0.05)

    pings = asyncio.create_task(pinger())
    try:
        await busy.send(json.dumps({"type": "text", "text": "long"}))
        kind = ""
        async with asyncio.timeout(10):
            while kind != "reply_done":
                frame = await busy.recv()
                kind = json.loads(frame)["type"] if isinstance(frame, str) else "audio"
                if kind in ("transcript", "reply_done"):
                    log.append(kind)
    finally:
        replied.set()
        await asyncio.wait_for(pings, 5)
    assert log.count("pong") == pings_sent  # every ping was answered
    generating = log[log.index("transcript") : log.index("reply_done")]
    assert generating.count("pong") >= 2, log  # ... while the reply was being written
    await busy.close()
    await other.close()


async def test_sessions_get_their_own_answers(running: Running) -> None:
    clients = [await running.client() for _ in range(3)]
    for i, (ws, _) in enumerate(clients):
        await ws.send(json.dumps({"type": "text", "text": f"number {i}"}))
    for i, (ws, _) in enumerate(clients):
        assert (await next_event(ws, "reply_done"))["text"] == f"You said number {i}."
        await ws.close()


async def test_a_conversation_resumes_with_its_history(running: Running) -> None:
    ws, ready = await running.client()
    await ws.send(json.dumps({"type": "text", "text": "remember me"}))
    await next_event(ws, "reply_done")
    await next_event(ws, "state")  # back to listening once the reply has been played
    await ws.close()
    ws, again = await running.client(conversation_id=ready["conversation_id"])
    assert again["conversation_id"] == ready["conversation_id"]
    assert [h["text"] for h in again["history"]] == ["remember me", "You said remember me."]
    assert [h["interrupted"] for h in again["history"]] == [False, False]
    await ws.close()


async def test_an_unknown_conversation_or_profile_is_refused(running: Running) -> None:
    for start in ({"conversation_id": "nope"}, {"profile": "nobody"}):
        ws = await connect(running.ws_url, open_timeout=5)
        await ws.send(json.dumps({"type": "start", "sample_rate": RATE, **start}))
        error = await next_event(ws, "error")
        assert error["code"] in ("store", "config")
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    async with asyncio.timeout(5):  # no session was counted, and the slots are given back
        while running.server.active_connections:  # noqa: ASYNC110  (polling server state)
            await asyncio.sleep(0.02)
    assert running.server.sessions == {}


async def test_interrupt_cuts_the_reply(running: Running) -> None:
    running.server.engines.llm = FakeChat(["one. two. three. four. five. six."], token_delay_s=0.1)
    ws, _ = await running.client()
    await ws.send(json.dumps({"type": "text", "text": "count"}))
    await next_event(ws, "reply_text")
    await ws.send(json.dumps({"type": "interrupt"}))
    event = await next_event(ws, "interrupted")
    assert event["turn_id"] == 1
    await ws.close()


async def test_http_routes_and_static_files_stay_inside_the_web_root(running: Running) -> None:
    import urllib.request

    base = f"http://127.0.0.1:{running.server.port}"

    def get(path: str) -> tuple[int, bytes, str]:
        try:
            with urllib.request.urlopen(base + path, timeout=5) as response:
                return response.status, response.read(), response.headers["Content-Type"]
        except urllib.error.HTTPError as error:
            return error.code, b"", ""

    status, body, kind = await asyncio.to_thread(get, "/")
    assert status == 200 and b"<title>voicebot</title>" in body and kind.startswith("text/html")
    status, body, _ = await asyncio.to_thread(get, "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, body, _ = await asyncio.to_thread(get, "/config.json")
    assert json.loads(body)["profiles"][0]["name"] == "default"
    for path in (
        "/../pyproject.toml",
        "/%2e%2e/pyproject.toml",
        "/..%2fpyproject.toml",
        "/nope.js",
    ):
        status, _, _ = await asyncio.to_thread(get, path)
        assert status == 404, path


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [(None, True), ("same", True), ("http://evil.example", False), ("http://good.example", True)],
)
async def test_browser_origins_are_checked(
    settings: Settings, origin: str | None, allowed: bool
) -> None:
    server = await make_server(settings, allowed_origins=("http://good.example",))
    try:
        headers = {}
        if origin == "same":
            headers["Origin"] = f"http://127.0.0.1:{server.port}"
        elif origin:
            headers["Origin"] = origin
        url = f"ws://127.0.0.1:{server.port}/ws"
        if allowed:
            ws = await connect(url, additional_headers=headers, open_timeout=5)
            await ws.close()
        else:
            with pytest.raises(InvalidStatus) as refused:
                await connect(url, additional_headers=headers, open_timeout=5)
            assert refused.value.response.status_code == 403
    finally:
        await server.close()


def http_get(port: int, path: str, host: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("name", ["evil.example", "127.0.0.1.evil.example", "192.168.1.20"])
async def test_a_foreign_host_name_is_refused_without_a_token(running: Running, name: str) -> None:
    port = running.server.port
    for path in ("/", "/healthz", "/config.json"):
        status, body = await asyncio.to_thread(http_get, port, path, f"{name}:{port}")
        assert status == 421 and b"localhost" in body, path
    with pytest.raises(InvalidStatus) as refused:
        # The TCP connection goes to the server; the Host header names the other host.
        await connect(f"ws://{name}:{port}/ws", host="127.0.0.1", port=port, open_timeout=5)
    assert refused.value.response.status_code == 421


@pytest.mark.parametrize("name", ["localhost", "LOCALHOST", "127.0.0.1", "127.0.1.1", "[::1]"])
async def test_loopback_host_names_are_served(running: Running, name: str) -> None:
    port = running.server.port
    status, _ = await asyncio.to_thread(http_get, port, "/healthz", f"{name}:{port}")
    assert status == 200
    status, _ = await asyncio.to_thread(http_get, port, "/healthz", name)
    assert status == 200


async def test_with_a_token_any_host_name_is_served(settings: Settings) -> None:
    server = await make_server(settings, token="s3cret")
    try:
        status, _ = await asyncio.to_thread(http_get, server.port, "/healthz", "voice.example")
        assert status == 200
    finally:
        await server.close()


class FakeMic:
    """Stands in for the microphone: a question, then silence until the task is cancelled."""

    def __init__(self, device: str | None = None) -> None:
        self.sample_rate_hz = RATE

    def open(self) -> int:
        return RATE

    async def chunks(self) -> AsyncIterator[bytes]:
        audio = tone(0.8) + silence(1.0, RATE)
        step = 2 * RATE // 50
        for offset in range(0, len(audio), step):
            yield audio[offset : offset + step]
            await asyncio.sleep(0.005)
        while True:
            yield silence(0.02, RATE)
            await asyncio.sleep(0.02)

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("flags", "barge_in"), [([], False), (["--barge-in"], True)])
async def test_the_mic_client_saves_the_reply_on_ctrl_c_and_has_barge_in_off(
    running: Running,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    barge_in: bool,
) -> None:
    from voicebot import cli
    from voicebot.transports import mic

    monkeypatch.setattr(mic, "MicrophoneSource", FakeMic)
    out = tmp_path / "reply.wav"
    args = cli.build_parser().parse_args(["client", running.ws_url, "--output", str(out), *flags])
    client = asyncio.create_task(cli._client(args))  # noqa: SLF001
    try:
        async with asyncio.timeout(10):
            while not running.server.sessions:  # noqa: ASYNC110  (a test polling server state)
                await asyncio.sleep(0.02)
            session = next(iter(running.server.sessions.values()))
            while not session.metrics:  # noqa: ASYNC110  (a reply was answered in full)
                await asyncio.sleep(0.02)
            # ...and played: the client has had the time the audio lasts to receive it.
            await session.wait_idle()
        assert session.barge_in is barge_in
    finally:
        client.cancel()  # what Ctrl-C does to asyncio.run's main task
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(client, 10)
    with wave.open(str(out)) as saved:
        assert saved.getnframes() > 0
        assert saved.getframerate() == 22050


async def test_the_client_reports_an_abnormal_close_and_exits_non_zero(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from voicebot.cli import main

    server = await make_server(settings)
    question = tmp_path / "q.wav"
    write_wav(question, silence(5.0, RATE), RATE)
    argv = [
        "client",
        f"ws://127.0.0.1:{server.port}/ws",
        "--input",
        str(question),
        "--output",
        str(tmp_path / "r.wav"),
        "--reconnect-for",
        "0",  # by default it would reconnect and resume (tests/test_replicas.py)
    ]
    err = ""
    try:
        client = asyncio.create_task(asyncio.to_thread(main, argv))
        # Closed once the client has its session ("ready"): closed before, the client says
        # the server closed the session before it began (exit 2).
        async with asyncio.timeout(20):
            while "[connected:" not in err:
                await asyncio.sleep(0.02)
                err += capsys.readouterr().err
    finally:
        await asyncio.wait_for(server.close(), 10)  # closes the session with 1001
    assert await asyncio.wait_for(client, 20) == 1
    assert "1001 server shutting down" in err + capsys.readouterr().err


async def test_the_client_exits_2_when_the_server_is_full(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from voicebot.cli import main

    server = await make_server(settings, max_sessions=1)
    url = f"ws://127.0.0.1:{server.port}/ws"
    question = tmp_path / "q.wav"
    write_wav(question, silence(0.5, RATE), RATE)
    try:
        holder = await connect(url, open_timeout=5)
        argv = ["client", url, "--input", str(question), "--output", str(tmp_path / "r.wav")]
        assert await asyncio.wait_for(asyncio.to_thread(main, argv), 20) == 2
        assert "1013 server full" in capsys.readouterr().err
        await holder.close()
    finally:
        await server.close()


def test_serve_refuses_an_open_bind_without_a_token_before_loading(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "voicebot", "serve", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "VOICEBOT_MODELS": str(tmp_path)},
    )
    assert result.returncode == 2
    assert "set a token" in result.stderr
    assert "loading" not in result.stderr  # refused before any model is touched


# ------------------------------------------------------------------ profile models, load

PROFILES = """
[profiles.slow]
llm_model = "slow-chat"
voice = "slow-voice"

[profiles.broken]
llm_model = "broken-chat"
"""


class GatedLoader:
    """Loads a fake model in a thread, holding it until the test opens the gate."""

    def __init__(self, make: Any) -> None:
        self.make = make
        self.calls: list[str] = []
        self.entered = threading.Event()
        self.opened = threading.Event()

    def __call__(self, name: str) -> Any:
        self.calls.append(name)
        if name.startswith("broken"):
            raise RuntimeError("weights are corrupt")
        self.entered.set()
        assert self.opened.wait(10), "the test never opened the gate"
        return self.make(name)


@contextlib.asynccontextmanager
async def profile_server(tmp_path: Path) -> AsyncIterator[tuple[VoiceServer, GatedLoader]]:
    settings = make_settings(tmp_path, PROFILES)
    settings = replace(settings, server=replace(settings.server, port=0))
    chat = GatedLoader(lambda name: FakeChat(lambda messages: f"{name} answers."))
    voices = GatedLoader(lambda name: FakeTts(sample_rate_hz=16000))
    made = replace(engines(), llm_loader=chat, voice_loader=voices)
    voices.opened.set()  # the voice loads at once: the chat model is the slow one
    store = Store(settings.database_path())
    server = VoiceServer(made, settings, store)
    await server.start()
    try:
        yield server, chat
    finally:
        chat.opened.set()
        await asyncio.wait_for(server.close(), 10)
        store.close()


async def starting(port: int, **start: Any) -> ClientConnection:
    """A client that sent ``start`` and has not been answered yet."""
    ws = await connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5)
    await ws.send(json.dumps({"type": "start", "sample_rate": RATE, **start}))
    return ws


async def test_loading_a_profiles_model_does_not_stall_other_sessions(tmp_path: Path) -> None:
    async with profile_server(tmp_path) as (server, loader):
        running = Running(server)
        other, _ = await running.client()
        slow = await starting(server.port, profile="slow")
        assert await asyncio.to_thread(loader.entered.wait, 10)
        # The chat model is loading now: the other session is pinged and answered meanwhile,
        # and a new one starts.
        await asyncio.wait_for(await other.ping(), 5)
        await other.send(json.dumps({"type": "text", "text": "ping"}))
        assert (await next_event(other, "reply_done"))["text"] == "You said ping."
        newcomer, _ = await running.client()
        await asyncio.wait_for(await slow.ping(), 5)  # the loading session's pings too
        assert server.active_connections == 3 and len(server.sessions) == 2
        loader.opened.set()
        ready = await next_event(slow, "ready")
        assert ready["profile"] == "slow"
        await slow.send(json.dumps({"type": "text", "text": "hi"}))
        assert (await next_event(slow, "reply_done"))["text"] == "slow-chat answers."
        for ws in (other, slow, newcomer):
            await ws.close()


async def test_sessions_needing_the_same_model_load_it_once(tmp_path: Path) -> None:
    async with profile_server(tmp_path) as (server, loader):
        first = await starting(server.port, profile="slow")
        assert await asyncio.to_thread(loader.entered.wait, 10)
        second = await starting(server.port, profile="slow")
        await asyncio.wait_for(await second.ping(), 5)
        loader.opened.set()
        for ws in (first, second):
            assert (await next_event(ws, "ready"))["profile"] == "slow"
            await ws.send(json.dumps({"type": "text", "text": "hi"}))
            assert (await next_event(ws, "reply_done"))["text"] == "slow-chat answers."
        third, _ = await Running(server).client(profile="slow")
        assert loader.calls == ["slow-chat"]
        assert server.engines.chat_model("slow-chat") is server.engines.chat_model("slow-chat")
        for ws in (first, second, third):
            await ws.close()


async def test_a_profile_model_that_fails_to_load_closes_that_session_only(
    tmp_path: Path,
) -> None:
    async with profile_server(tmp_path) as (server, loader):
        broken = await starting(server.port, profile="broken")
        error = await next_event(broken, "error")
        assert error["code"] == "model" and "broken-chat" in error["message"]
        closed = await closed_by_server(broken)
        assert closed.rcvd is not None and closed.rcvd.code == 1011
        ws, _ = await Running(server).client()
        await ws.send(json.dumps({"type": "text", "text": "still there"}))
        assert (await next_event(ws, "reply_done"))["text"] == "You said still there."
        # A failed load is not remembered as loaded: the next session tries again.
        again = await starting(server.port, profile="broken")
        assert (await next_event(again, "error"))["code"] == "model"
        assert loader.calls == ["broken-chat", "broken-chat"]
        await ws.close()


# ------------------------------------------------------------------ pacing


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_pacer_lets_a_burst_through_then_paces_to_its_rate() -> None:
    clock = FakeClock()
    pacer = Pacer(burst=2.0, rate_per_s=1.0, max_paced_s=5.0, clock=clock)
    assert [pacer.charge(0.5) for _ in range(4)] == [0.0] * 4  # the burst, at once
    assert pacer.charge(0.5) == pytest.approx(0.5)  # over: wait until it is earned
    clock.now += 0.5
    assert pacer.charge(0.5) == pytest.approx(0.5)
    assert not pacer.over_limit
    clock.now += 10.0  # a pause refills the budget, up to the burst only
    assert pacer.charge(2.0) == 0.0
    assert pacer.charge(1.0) == pytest.approx(1.0)


def test_a_pacer_gives_up_on_a_client_that_never_slows_down() -> None:
    clock = FakeClock()
    pacer = Pacer(burst=1.0, rate_per_s=1.0, max_paced_s=3.0, clock=clock)
    pacer.charge(1.0)
    for _ in range(3):
        clock.now += pacer.charge(1.0)  # it sends again the moment it is read
        assert not pacer.over_limit
    clock.now += pacer.charge(1.0)
    clock.now += pacer.charge(1.0)
    assert pacer.over_limit


def test_a_client_that_slows_down_is_no_longer_paced() -> None:
    clock = FakeClock()
    pacer = Pacer(burst=1.0, rate_per_s=1.25, max_paced_s=3.0, clock=clock)
    for _ in range(3):
        clock.now += pacer.charge(1.0)
    assert pacer.paced_s > 0
    for _ in range(10):  # real time now: each second of audio a second later
        clock.now += 1.0
        assert pacer.charge(1.0) == 0.0
    clock.now += 10.0
    assert not pacer.over_limit


async def fast_server(settings: Settings, **server_settings: Any) -> VoiceServer:
    bounds: dict[str, Any] = {"audio_burst_s": 1.0, "audio_max_speed": 1.25, "max_paced_s": 1.5}
    return await make_server(settings, **{**bounds, **server_settings})


async def test_an_over_fast_client_is_closed_while_a_real_time_one_is_answered(
    settings: Settings,
) -> None:
    server = await fast_server(settings)
    try:
        running = Running(server)
        fair, _ = await running.client()
        flood, _ = await running.client()

        async def flood_audio() -> None:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await flood.send(silence(0.1, RATE))  # as fast as the socket takes it

        flooding = asyncio.create_task(flood_audio())
        try:
            async with silence_streamed(fair):
                await asyncio.wait_for(await fair.ping(), 5)
                await fair.send(json.dumps({"type": "text", "text": "ping"}))
                assert (await next_event(fair, "reply_done"))["text"] == "You said ping."
                closed = await closed_by_server(flood, timeout_s=15)
                assert closed.rcvd is not None
                assert (closed.rcvd.code, closed.rcvd.reason) == (1008, "too fast")
                # The fair session goes on after the flood was closed.
                await send_speech(fair, tone(0.8) + silence(1.0, RATE), chunk_s=0.02)
                transcript = await next_event(fair, "transcript")
                assert transcript["text"] == "hello there"
        finally:
            flooding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(flooding, 5)
        await fair.close()
    finally:
        await server.close()


async def test_a_burst_beyond_the_budget_is_paced_not_dropped(settings: Settings) -> None:
    server = await fast_server(settings)
    try:
        ws, _ = await Running(server).client()
        # Three seconds at once, three times the burst: read at the pace, every bit heard.
        speech = silence(0.5, RATE) + tone(0.8) + silence(1.7, RATE)
        for offset in range(0, len(speech), 3200):
            await ws.send(speech[offset : offset + 3200])
        frames = await collect_until(ws, "transcript", timeout_s=15)
        kinds = [f["type"] for f in frames if isinstance(f, dict) and f["type"] != "state"]
        assert kinds == ["speech_started", "speech_stopped", "transcript"]
        assert frames[-1]["text"] == "hello there"
        await asyncio.wait_for(await ws.ping(), 5)  # paced, not closed
        await ws.close()
    finally:
        await server.close()


async def test_a_flood_of_text_messages_is_closed(settings: Settings) -> None:
    server = await make_server(settings, text_burst=3, text_max_per_s=2.0, max_paced_s=1.0)
    try:
        ws, _ = await Running(server).client()
        with contextlib.suppress(ConnectionClosed):
            for _ in range(40):
                await ws.send(json.dumps({"type": "interrupt"}))
        closed = await closed_by_server(ws, timeout_s=15)
        assert closed.rcvd is not None
        assert (closed.rcvd.code, closed.rcvd.reason) == (1008, "too fast")
    finally:
        await server.close()


async def test_closing_the_server_does_not_wait_on_a_paced_client(settings: Settings) -> None:
    server = await fast_server(settings, max_paced_s=60.0)
    ws, _ = await Running(server).client()

    async def flood_audio() -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.send(silence(0.1, RATE))

    flooding = asyncio.create_task(flood_audio())
    try:
        async with asyncio.timeout(10):
            while server.sessions and not flooding.done():
                await asyncio.sleep(0.1)  # let it run into pacing: its sends back up
                if ws.transport.get_write_buffer_size() > 0:
                    break
        # Well within the 10 s a closing handshake may take: the unread frames are skipped.
        await asyncio.wait_for(server.close(), 5)
        closed = await closed_by_server(ws)
        assert closed.rcvd is not None and closed.rcvd.code == 1001
    finally:
        flooding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(flooding, 5)


# ----------------------------------------------------------------------------- timers


class _Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_timers_are_sent_to_every_session_of_the_conversation_and_survive_a_restart(
    settings: Settings,
) -> None:
    settings = replace(settings, server=replace(settings.server, port=0))
    store = Store(settings.database_path())
    clock = _Clock()
    server = VoiceServer(
        engines(), settings, store, timers=TimerService(store, clock=clock, poll_s=0.05)
    )
    await server.start()
    running = Running(server)
    try:
        ws, ready = await running.client()
        cid = ready["conversation_id"]
        await ws.send(json.dumps({"type": "text", "text": "Set a 30 second timer for the pasta."}))
        started = await next_event(ws, "timer_started")
        assert {k: started[k] for k in ("name", "seconds", "remaining_s")} == {
            "name": "pasta",
            "seconds": 30.0,
            "remaining_s": 30.0,
        }
        done = await next_event(ws, "reply_done")
        assert done["text"] == "Pasta timer set for 30 seconds."
        await ws.send(json.dumps({"type": "text", "text": "Set a timer for ten minutes."}))
        long_timer = await next_event(ws, "timer_started")
        await ws.send(json.dumps({"type": "text", "text": "Cancel the ten minute timer."}))
        cancelled = await next_event(ws, "timer_cancelled")
        assert cancelled == {
            "type": "timer_cancelled",
            "id": long_timer["id"],
            "name": "",
            "seconds": 600.0,
        }
        # Another tab on the same conversation learns of the running timer after "ready".
        other, _ = await running.client(conversation_id=cid)
        again = await next_event(other, "timer_started")
        assert again["id"] == started["id"]
        clock.now += 30
        for client in (ws, other):
            finished = await next_event(client, "timer_finished")
            assert finished == {
                "type": "timer_finished",
                "id": started["id"],
                "name": "pasta",
                "seconds": 30.0,
            }
            said = await next_event(client, "reply_done")
            assert said["text"] == "Your pasta timer is done."
        await other.send(json.dumps({"type": "text", "text": "Stop."}))
        for client in (ws, other):
            dismissed = await next_event(client, "timer_dismissed")
            assert dismissed["id"] == started["id"]
        await ws.send(json.dumps({"type": "text", "text": "Set a timer for 5 minutes."}))
        kept = await next_event(ws, "timer_started")
        await other.close()
        await ws.close()
    finally:
        await asyncio.wait_for(server.close(), 10)

    # A restart on the same store: the timer is still running, and still ends.
    server = VoiceServer(
        engines(), settings, store, timers=TimerService(store, clock=clock, poll_s=0.05)
    )
    await server.start()
    try:
        ws, _ = await Running(server).client(conversation_id=cid)
        resumed = await next_event(ws, "timer_started")
        assert resumed["id"] == kept["id"] and resumed["remaining_s"] == 300.0
        clock.now += 300
        finished = await next_event(ws, "timer_finished")
        assert finished["id"] == kept["id"]
        await ws.close()
    finally:
        await asyncio.wait_for(server.close(), 10)
        store.close()
