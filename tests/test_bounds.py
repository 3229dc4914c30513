"""The server's per-connection bounds at once, on fake engines (docs/protocol.md, Bounds).

A client that never reads, one that streams audio 20 times faster than real time, and a
well-behaved one: the first two are cut off with their documented codes, the third is
answered meanwhile, and the server's sessions, connections and tasks return to what they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from voicebot.audio import silence
from voicebot.config import Settings
from voicebot.engines import Engines
from voicebot.engines.fake import FakeChat, FakeStt, FakeTts, FakeVad, tone
from voicebot.store import Store
from voicebot.transports.websocket import CLOSE_NOT_READING, CLOSE_TOO_FAST, VoiceServer
from voicebot.workers import Priority

from .test_server import (
    RATE,
    Running,
    closed_by_server,
    leftover_tasks,
    next_event,
    send_speech,
    silence_streamed,
)

LONG_WORD = "story"


class LongTts(FakeTts):
    """The fake voice, speaking minutes of tone for a text with "story" in it: a reply far
    larger than the socket buffers between the server and a client that does not read."""

    def synthesize(
        self,
        text: str,
        cancel: threading.Event | None = None,
        *,
        speaking_rate: float | None = None,
    ) -> Iterator[bytes]:
        if LONG_WORD in text:
            text = text * 400  # "You said tell me a story." 400 times: 200 s, 8.8 MB
        return super().synthesize(text, cancel, speaking_rate=speaking_rate)


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[VoiceServer]:
    # The defaults, 20 s each, make the same tests slower.
    voice_server = await _server(settings, send_timeout_s=1.0, max_paced_s=2.0)
    yield voice_server
    await asyncio.wait_for(voice_server.close(), 30)
    voice_server.store.close()


async def _server(settings: Settings, **server_settings: Any) -> VoiceServer:
    settings = replace(
        settings,
        server=replace(settings.server, port=0, **server_settings),
        session=replace(settings.session, max_reply_s=600.0),
    )
    engines = Engines(
        stt=FakeStt(lambda pcm: "hello there"),
        llm=FakeChat(lambda messages: f"You said {messages[-1]['content']}."),
        tts=LongTts(sample_rate_hz=22050),
        vad_factory=FakeVad,
    )
    voice_server = VoiceServer(engines, settings, Store(settings.database_path()))
    await voice_server.start()
    return voice_server


async def non_reader(server: VoiceServer) -> tuple[ClientConnection, str]:
    """A client with a small receive buffer, started; it reads nothing after ``ready``.

    Returns:
        The client and its conversation id.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.setblocking(False)
    await asyncio.wait_for(
        asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port)), 5
    )
    ws = await connect(
        f"ws://127.0.0.1:{server.port}/ws",
        sock=sock,
        open_timeout=5,
        ping_interval=None,  # a client that does not read answers no pings either
        max_queue=1,  # its library stops reading the socket as soon as one frame waits
    )
    await ws.send(json.dumps({"type": "start", "sample_rate": RATE}))
    ready = await next_event(ws, "ready")
    return ws, str(ready["conversation_id"])


def server_side(server: VoiceServer, conversation_id: str) -> ServerConnection:
    return next(c for c, s in server.sessions.items() if s.conversation_id == conversation_id)


async def until(condition: Any, timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110  (a test polling server state)
            await asyncio.sleep(0.05)


def streaming_20x(ws: ClientConnection) -> contextlib.AbstractAsyncContextManager[None]:
    """Meanwhile, stream silence at 20 times real time (0.2 s of audio every 10 ms)."""
    return silence_streamed(ws, chunk_s=0.2, every_s=0.01)


async def test_a_client_not_reading_and_one_too_fast_are_cut_off_while_a_third_is_answered(
    server: VoiceServer,
) -> None:
    before = asyncio.all_tasks()
    running = Running(server)
    good, _ = await running.client()
    fast, _ = await running.client()
    deaf, deaf_id = await non_reader(server)
    deaf_server_side = server_side(server, deaf_id)

    await deaf.send(json.dumps({"type": "text", "text": "tell me a story"}))
    async with streaming_20x(fast):
        # The well-behaved session speaks and is answered while the others misbehave.
        await send_speech(good, tone(0.8) + silence(1.0, RATE))
        assert (await next_event(good, "transcript"))["text"] == "hello there"
        assert (await next_event(good, "reply_done"))["text"] == "You said hello there."

        too_fast = await closed_by_server(fast, timeout_s=30)
        assert too_fast.rcvd is not None
        assert (too_fast.rcvd.code, too_fast.rcvd.reason) == (CLOSE_TOO_FAST, "too fast")

    # The server gave up on the deaf client: its session is over, its close frame waits
    # behind the audio it never read. Reading now, it gets all that, then the close.
    await until(lambda: deaf_server_side.state is not State.OPEN)
    await until(lambda: deaf_id not in {s.conversation_id for s in server.sessions.values()})
    not_reading = await closed_by_server(deaf, timeout_s=30)
    assert not_reading.rcvd is not None
    assert (not_reading.rcvd.code, not_reading.rcvd.reason) == (CLOSE_NOT_READING, "not reading")
    assert CLOSE_NOT_READING == 1008

    # The good session goes on, alone.
    await good.send(json.dumps({"type": "text", "text": "ping"}))
    assert (await next_event(good, "reply_done"))["text"] == "You said ping."
    await until(lambda: len(server.sessions) == 1 and server.active_connections == 1)
    await good.close()
    await until(lambda: not server.sessions and not server.active_connections)
    await until(lambda: not leftover_tasks(before))


async def test_a_client_that_never_reads_again_is_dropped_and_leaves_nothing(
    server: VoiceServer,
) -> None:
    before = asyncio.all_tasks()
    deaf, deaf_id = await non_reader(server)
    deaf_server_side = server_side(server, deaf_id)
    await deaf.send(json.dumps({"type": "text", "text": "tell me a story"}))
    await until(lambda: deaf_server_side.state is not State.OPEN)
    # Its session ended at once; the connection goes when the closing handshake's time is up.
    await until(lambda: not server.sessions)
    await until(lambda: deaf_server_side.state is State.CLOSED)
    await until(lambda: not server.active_connections and not leftover_tasks(before))
    # The server is as good as new.
    good, _ = await Running(server).client()
    await good.send(json.dumps({"type": "text", "text": "ping"}))
    assert (await next_event(good, "reply_done"))["text"] == "You said ping."
    await good.close()
    deaf.transport.abort()


async def test_frames_piling_up_past_the_cap_cut_a_client_off_before_the_send_timeout(
    settings: Settings,
) -> None:
    # A 1 KiB buffer caps what is held at 4 KiB: less than one 0.1 s audio frame. A send that
    # waits for the client to read is then cancelled by `interrupt`, and its frame stays
    # behind; the `interrupted` frame finds more than the cap unsent.
    server = await _server(settings, send_buffer_bytes=1024, send_timeout_s=600.0)
    try:
        deaf, deaf_id = await non_reader(server)
        deaf_server_side = server_side(server, deaf_id)
        await deaf.send(json.dumps({"type": "text", "text": "tell me a story"}))
        await until(lambda: deaf_server_side.transport.get_write_buffer_size() > 4096)
        await deaf.send(json.dumps({"type": "interrupt"}))
        await until(lambda: not server.sessions)  # long before the 600 s send timeout
        not_reading = await closed_by_server(deaf, timeout_s=30)
        assert not_reading.rcvd is not None
        assert (not_reading.rcvd.code, not_reading.rcvd.reason) == (1008, "not reading")
    finally:
        await asyncio.wait_for(server.close(), 30)
        server.store.close()


async def test_a_full_model_queue_is_an_error_to_that_session_which_goes_on(
    server: VoiceServer,
) -> None:
    good, _ = await Running(server).client()
    worker = server.engines.worker(server.engines.stt, "stt")
    gate = threading.Event()
    # One call running and a full queue of urgent ones: nothing a session asks can shed them.
    running = threading.Event()

    def hold() -> None:
        running.set()
        gate.wait(10.0)

    blockers = [asyncio.create_task(worker.run(hold, priority=Priority.URGENT))]
    try:
        await until(running.is_set)  # out of the queue: the queue's 16 places are free
        blockers += [
            asyncio.create_task(worker.run(gate.wait, 10.0, priority=Priority.URGENT))
            for _ in range(worker.max_queued)
        ]
        await until(lambda: worker.queued == worker.max_queued)
        await send_speech(good, tone(0.8) + silence(1.0, RATE))
        error = await next_event(good, "error")
        assert error["code"] == "overloaded" and error["turn_id"] == 1
    finally:
        gate.set()
        await asyncio.wait_for(asyncio.gather(*blockers), 10)
    await send_speech(good, tone(0.8) + silence(1.0, RATE))
    assert (await next_event(good, "transcript"))["text"] == "hello there"
    assert (await next_event(good, "reply_done"))["text"] == "You said hello there."
    await good.close()


def test_the_bounds_table_lists_every_server_setting() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text("utf-8")
    bounds = doc.split("## Bounds", 1)[1].split("\n## ", 1)[0]
    for key in (
        "max_sessions",
        "max_message_bytes",
        "idle_timeout_s",
        "audio_burst_s",
        "audio_max_speed",
        "text_burst",
        "text_max_per_s",
        "max_paced_s",
        "send_buffer_bytes",
        "send_timeout_s",
        "drain_timeout_s",
        "max_utterance_s",
        "max_reply_s",
        "max_new_tokens",
    ):
        assert f"`{key}`" in bounds, key
