"""Replicas behind a load balancer: /healthz, the SIGTERM drain, clients that reconnect and
resume their conversation on another replica.

The first tests run in-process servers on fake engines; the last run two real
``voicebot serve`` processes sharing one real PostgreSQL store (tests/pg.py), send one of them
SIGTERM while it is answering, and check the confirmed turns in PostgreSQL's rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from voicebot.audio import silence
from voicebot.config import Settings
from voicebot.engines import Engines
from voicebot.engines.fake import FakeChat, FakeStt, FakeTts, FakeVad
from voicebot.speech_samples import SpeechMaker
from voicebot.store import Store
from voicebot.transports.client import VoiceClient
from voicebot.transports.websocket import VoiceServer

from .conftest import REPO
from .pg import PASSWORD, PostgresServer, query
from .test_server import next_event

RATE = 16000


def fake_engines(token_delay_s: float = 0.0) -> Engines:
    return Engines(
        stt=FakeStt(lambda pcm: "hello there"),
        llm=FakeChat(
            lambda messages: f"You said {messages[-1]['content']} and that is all.",
            token_delay_s=token_delay_s,
        ),
        tts=FakeTts(sample_rate_hz=16000),
        vad_factory=FakeVad,
    )


async def start_server(settings: Settings, store: Store, token_delay_s: float = 0.0) -> VoiceServer:
    settings = replace(settings, server=replace(settings.server, port=0))
    server = VoiceServer(fake_engines(token_delay_s), settings, store)
    await server.start()
    return server


def get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


async def test_healthz_is_ready_and_200_once_listening(settings: Settings) -> None:
    store = Store(settings.database_path())
    server = VoiceServer(
        fake_engines(), replace(settings, server=replace(settings.server, port=0)), store
    )
    assert server.health == "loading"
    await server.start()
    try:
        status, body = await asyncio.to_thread(get, server.port, "/healthz")
        assert (status, body["state"], body["status"]) == (200, "ready", "ok")
    finally:
        await server.close()
        store.close()


async def test_a_drain_refuses_new_sessions_lets_the_reply_finish_then_closes_with_1001(
    settings: Settings,
) -> None:
    store = Store(settings.database_path())
    server = await start_server(settings, store, token_delay_s=0.05)
    url = f"ws://127.0.0.1:{server.port}/ws"
    drain: asyncio.Task[None] | None = None
    try:
        ws = await connect(url, open_timeout=5)
        await ws.send(json.dumps({"type": "start", "sample_rate": RATE}))
        await next_event(ws, "ready")
        await ws.send(json.dumps({"type": "text", "text": "tell me something"}))
        await next_event(ws, "reply_text")  # the reply is under way
        drain = asyncio.create_task(server.drain(timeout_s=60))
        await asyncio.sleep(0)  # the drain starts: it says so before its first await
        assert server.health == "draining"
        status, body = await asyncio.to_thread(get, server.port, "/healthz")
        assert (status, body["state"]) == (503, "draining")
        with pytest.raises(InvalidStatus) as refused:
            await connect(url, open_timeout=5)
        assert refused.value.response.status_code == 503
        done = await next_event(ws, "reply_done", timeout_s=30)
        assert done["text"] == "You said tell me something and that is all."
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(30):
                while True:
                    await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        await asyncio.wait_for(drain, 30)
    finally:
        if drain is not None and not drain.done():
            drain.cancel()
        await server.close()
        store.close()


async def test_a_drain_is_bounded_a_long_reply_is_cut_and_kept_as_heard(
    settings: Settings,
) -> None:
    store = Store(settings.database_path())
    server = await start_server(settings, store, token_delay_s=2.0)
    try:
        ws = await connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=5)
        await ws.send(json.dumps({"type": "start", "sample_rate": RATE}))
        ready = await next_event(ws, "ready")
        await ws.send(json.dumps({"type": "text", "text": "tell me something"}))
        await next_event(ws, "transcript")  # the reply task is launched
        await asyncio.wait_for(server.drain(timeout_s=0.1), 30)
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(30):
                while True:
                    await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        turns = store.turns(ready["conversation_id"])
        assert [t.text for t in turns if t.role == "user"] == ["tell me something"]
    finally:
        await server.close()
        store.close()


async def events_into(client: VoiceClient, queue: asyncio.Queue[Any]) -> None:
    async for item in client.events():
        if isinstance(item, dict):
            await queue.put(item)
    await queue.put({"type": "ended"})


async def until(
    queue: asyncio.Queue[Any], kind: str, timeout_s: float = 60
) -> list[dict[str, Any]]:
    """The events up to and including the next of ``kind``."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout_s):
        while True:
            event = await queue.get()
            seen.append(event)
            if event["type"] == kind:
                return seen
            assert event["type"] != "ended", f"the client ended before {kind}: {seen}"


async def test_the_client_resumes_its_conversation_on_another_replica(settings: Settings) -> None:
    shared = settings.database_path()
    store_a, store_b = Store(shared), Store(shared)
    a = await start_server(settings, store_a)
    b = await start_server(settings, store_b)
    client = VoiceClient(
        f"ws://127.0.0.1:{a.port}/ws",
        fallback_urls=[f"ws://127.0.0.1:{b.port}/ws"],
        reconnect_for_s=30,
    )
    queue: asyncio.Queue[Any] = asyncio.Queue()
    reader: asyncio.Task[None] | None = None
    try:
        ready = await client.connect()
        reader = asyncio.create_task(events_into(client, queue))
        await client.send_text("my name is Alice")
        await until(queue, "reply_done")
        await a.drain(timeout_s=30)
        seen = await until(queue, "ready")
        reconnecting = [e for e in seen if e["type"] == "reconnecting"]
        assert reconnecting == [
            {"type": "reconnecting", "code": 1001, "reason": "server shutting down"}
        ]
        resumed = seen[-1]
        assert resumed["conversation_id"] == ready["conversation_id"]
        assert [t["text"] for t in resumed["history"]] == [
            "my name is Alice",
            "You said my name is Alice and that is all.",
        ]
        assert client.url == f"ws://127.0.0.1:{b.port}/ws" and client.reconnects == 1
        await client.send_text("tell me a joke")
        done = await until(queue, "reply_done")
        assert done[-1]["text"] == "You said tell me a joke and that is all."
    finally:
        await client.close()
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        await a.close()
        await b.close()
        store_a.close()
        store_b.close()


async def test_a_dropped_connection_is_resumed_when_the_server_is_back(settings: Settings) -> None:
    store = Store(settings.database_path())
    server = await start_server(settings, store)
    port = server.port
    client = VoiceClient(f"ws://127.0.0.1:{port}/ws", reconnect_for_s=30)
    queue: asyncio.Queue[Any] = asyncio.Queue()
    reader: asyncio.Task[None] | None = None
    try:
        ready = await client.connect()
        reader = asyncio.create_task(events_into(client, queue))
        await client.send_text("first words")
        await until(queue, "reply_done")
        # The connection drops without a close frame (1006): a crash, a network cut.
        client.connection.transport.abort()
        seen = await until(queue, "reconnecting")
        assert seen[-1]["code"] == 1006
        resumed = (await until(queue, "ready"))[-1]
        assert resumed["conversation_id"] == ready["conversation_id"]
        assert resumed["history"][0]["text"] == "first words"
        await client.send_text("second words")
        done = await until(queue, "reply_done")
        assert "second words" in done[-1]["text"]
    finally:
        await client.close()
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        await server.close()
        store.close()


# ---------------------------------------------------------------------- real replicas


class Replica:
    """A real ``voicebot serve`` process."""

    def __init__(
        self, tmp: Path, name: str, store_url: str = "", *, data_dir: Path | None = None
    ) -> None:
        """Start it on ``store_url`` (PostgreSQL) or, without one, on the SQLite store of
        ``data_dir`` (default: a data directory of its own)."""
        config = tmp / f"{name}.toml"
        config.write_text("")
        self.log = tmp / f"{name}.log"
        self._log_file = self.log.open("wb")
        if data_dir is None:
            data_dir = tmp / f"{name}-data"  # its own: only the store is shared
            data_dir.mkdir()
        env = {
            **os.environ,
            "VOICEBOT_DATA_DIR": str(data_dir),
            "VOICEBOT_MODELS": str(REPO / "models"),
            "VOICEBOT_CONFIG": str(config),
        }
        if store_url:
            # The URL, password included, in the environment: never on the command line.
            env["VOICEBOT_STORE_URL"] = store_url
        self.process = subprocess.Popen(  # noqa: S603 - our own command
            [sys.executable, "-m", "voicebot", "serve", "--port", "0"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
        )
        self.port = 0

    async def ready(self, timeout_s: float = 400) -> None:
        async with asyncio.timeout(timeout_s):
            while True:
                text = self.log.read_text(errors="replace")
                found = re.search(r"ready in .* Open http://127\.0\.0\.1:(\d+)/", text)
                if found:
                    self.port = int(found.group(1))
                    return
                assert self.process.poll() is None, f"the replica died:\n{text}"
                await asyncio.sleep(0.2)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)
        self._log_file.close()


@pytest.fixture
def store_url(postgres: PostgresServer) -> str:
    """A new database on the test PostgreSQL server: the replicas' shared store."""
    return postgres.new_database()


@pytest.fixture
def replicas(tmp_path: Path, store_url: str) -> Iterator[tuple[Replica, Replica]]:
    # Both at once: the first to open the new database migrates it, the other waits for it.
    pair = (Replica(tmp_path, "a", store_url), Replica(tmp_path, "b", store_url))
    yield pair
    for replica in pair:
        replica.stop()
    for replica in pair:
        log = replica.log.read_text(errors="replace")
        assert PASSWORD not in log, f"replica {replica.log.name} logged the store's password"


def stored_turns(store_url: str, conversation_id: str) -> list[tuple[str, str]]:
    """The conversation's rows in PostgreSQL, read apart from the replicas."""
    rows = query(
        store_url,
        f"SELECT role, text FROM turns WHERE conversation_id = '{conversation_id}' ORDER BY id",
    )
    return [(str(role), str(text)) for role, text in rows]


async def until_stored(
    store_url: str, conversation_id: str, expected: list[tuple[str, str]], timeout_s: float = 30
) -> list[tuple[str, str]]:
    """The stored rows once they hold ``expected`` in order (a reply is written when its
    sound ends, after its reply_done), or as they are at the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = await asyncio.to_thread(stored_turns, store_url, conversation_id)
        if in_order(expected, rows) or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.2)


def in_order(expected: list[tuple[str, str]], rows: list[tuple[str, str]]) -> bool:
    """Every expected turn is in ``rows``, in order; a reply the user barged into is stored
    as far as it was heard (a start of its words)."""
    remaining = iter(rows)

    def found(role: str, text: str) -> bool:
        for row_role, row_text in remaining:
            heard = role == "assistant" and bool(row_text) and text.startswith(row_text)
            if row_role == role and (row_text == text or heard):
                return True
        return False

    return all(found(role, text) for role, text in expected)


def confirmed_turns(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The turns a client was told were done: each answered question and its reply."""
    heard: dict[int, str] = {}
    confirmed: list[tuple[str, str]] = []
    for event in events:
        if event["type"] == "transcript" and event.get("final") and event["text"]:
            heard[event["turn_id"]] = event["text"]
        elif event["type"] == "reply_done" and event["text"]:
            if event["turn_id"] in heard:
                confirmed.append(("user", heard.pop(event["turn_id"])))
            confirmed.append(("assistant", event["text"]))
    return confirmed


@pytest.fixture(scope="module")
def voice() -> SpeechMaker:
    return SpeechMaker.load(REPO / "models")


async def stream_forever(client: VoiceClient, lines: asyncio.Queue[bytes]) -> None:
    """A microphone: silence in real time, with the queued utterances in it."""
    chunk = 2 * RATE // 50  # 20 ms
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    pending = b""
    while True:
        if not pending and not lines.empty():
            pending = lines.get_nowait() + silence(1.5, RATE)
        piece, pending = (pending[:chunk], pending[chunk:]) if pending else (bytes(chunk), b"")
        await client.send_audio(piece)
        next_at += 0.02
        await asyncio.sleep(max(0.0, next_at - loop.time()))
        next_at = max(next_at, loop.time() - 0.1)  # after a wait for a reconnection: go on


@pytest.mark.models
async def test_sigterm_mid_reply_the_turn_finishes_and_the_client_resumes_on_the_other_replica(
    replicas: tuple[Replica, Replica], voice: SpeechMaker, store_url: str
) -> None:
    a, b = replicas
    await asyncio.gather(a.ready(), b.ready())
    status, body = await asyncio.to_thread(get, a.port, "/healthz")
    assert (status, body["state"]) == (200, "ready")
    client = VoiceClient(a.ws_url, fallback_urls=[b.ws_url], reconnect_for_s=60)
    queue: asyncio.Queue[Any] = asyncio.Queue()
    lines: asyncio.Queue[bytes] = asyncio.Queue()
    tasks: list[asyncio.Task[None]] = []
    try:
        ready = await client.connect()
        tasks.append(asyncio.create_task(events_into(client, queue)))
        tasks.append(asyncio.create_task(stream_forever(client, lines)))
        await lines.put(voice.piper("My name is Alice."))
        first = await until(queue, "reply_done", 120)
        assert any(e["type"] == "transcript" and "alice" in e["text"].lower() for e in first)
        seen_all = list(first)

        await lines.put(voice.piper("What is the capital of France?"))
        before = await until(queue, "reply_text", 120)
        turn = before[-1]["turn_id"]
        a.process.send_signal(signal.SIGTERM)  # mid-reply
        during = await until(queue, "reconnecting", 120)
        seen_all += before + during
        assert during[-1]["code"] == 1001
        done = [e for e in during if e["type"] == "reply_done" and e["turn_id"] == turn]
        assert done, f"the reply in flight was not finished before 1001: {during}"
        assert "paris" in done[0]["text"].lower()
        assert await asyncio.to_thread(a.process.wait, 60) == 0

        resumed = (await until(queue, "ready", 120))[-1]
        assert resumed["conversation_id"] == ready["conversation_id"]
        assert client.url == b.ws_url
        history = [t["text"].lower() for t in resumed["history"]]
        assert any("alice" in text for text in history)
        assert any("france" in text for text in history)
        assert any("paris" in text for text in history), history  # the confirmed reply

        await lines.put(voice.piper("What is my name?"))
        answer = await until(queue, "reply_done", 120)
        assert "alice" in answer[-1]["text"].lower(), answer

        # In PostgreSQL: every turn the client was told was done, on either replica, once.
        confirmed = confirmed_turns(seen_all + answer)
        assert len(confirmed) == 6, confirmed
        rows = await until_stored(store_url, ready["conversation_id"], confirmed)
        assert in_order(confirmed, rows), (confirmed, rows)
        assert len(rows) == len(set(rows)), rows
        assert ("assistant", done[0]["text"]) in rows  # the reply SIGTERM came during: whole
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await client.close()


HAPROXY_CONFIG = """
global
    maxconn 256
defaults
    mode http
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    retries 3
    option redispatch
frontend voice
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance leastconn
    option httpchk
    # A Host header: without a token voicebot answers only loopback names (DNS rebinding).
    http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host localhost
    http-check expect status 200
    default-server inter 500ms fall 1 rise 1
    server a 127.0.0.1:{a} check
    server b 127.0.0.1:{b} check
"""


def start_haproxy(config: Path) -> subprocess.Popen[bytes]:
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    assert Path(haproxy).exists(), "haproxy is missing: run scripts/install-system-deps.sh --test"
    return subprocess.Popen(  # noqa: S603 - our own arguments
        [haproxy, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def sessions_of(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith("voicebot_active_sessions "):
                return float(line.split()[1])
    raise AssertionError("no voicebot_active_sessions")


@pytest.mark.models
async def test_four_sessions_through_haproxy_one_replica_drained_all_resume_with_their_history(
    replicas: tuple[Replica, Replica], tmp_path: Path, store_url: str
) -> None:
    a, b = replicas
    await asyncio.gather(a.ready(), b.ready())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    config = tmp_path / "haproxy.cfg"
    config.write_text(HAPROXY_CONFIG.format(port=port, a=a.port, b=b.port))
    balancer = start_haproxy(config)
    names = ["Alice", "Bruno", "Carla", "Diego"]
    clients = [VoiceClient(f"ws://127.0.0.1:{port}/ws", reconnect_for_s=60) for _ in names]
    queues: list[asyncio.Queue[Any]] = [asyncio.Queue() for _ in names]
    readers: list[asyncio.Task[None]] = []
    readies: list[dict[str, Any]] = []
    replies: dict[str, list[str]] = {name: [] for name in names}
    try:
        async with asyncio.timeout(30):
            while True:  # haproxy listening
                try:
                    readies.append(await clients[0].connect())
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    await asyncio.sleep(0.2)
        for client in clients[1:]:
            readies.append(await client.connect())
        # leastconn: the four long connections are spread two and two.
        spread = await asyncio.gather(
            asyncio.to_thread(sessions_of, a.port), asyncio.to_thread(sessions_of, b.port)
        )
        assert spread == [2.0, 2.0], spread
        for client, queue in zip(clients, queues, strict=True):
            readers.append(asyncio.create_task(events_into(client, queue)))
        for client, queue, name in zip(clients, queues, names, strict=True):
            await client.send_text(f"My name is {name}.")
            replies[name].append((await until(queue, "reply_done", 120))[-1]["text"])

        a.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(a.process.wait, 60) == 0
        moved = 0
        for client, queue, name in zip(clients, queues, names, strict=True):
            # A client of the drained replica waits for its new connection to send this.
            await client.send_text("What is my name?")
            seen = await until(queue, "reply_done", 120)
            codes = [e["code"] for e in seen if e["type"] == "reconnecting"]
            assert codes in ([], [1001]), seen
            if codes:
                moved += 1
                resumed = next(e for e in seen if e["type"] == "ready")
                assert resumed["history"][0]["text"] == f"My name is {name}."
            assert name.lower() in seen[-1]["text"].lower(), (name, seen)
            replies[name].append(seen[-1]["text"])
        assert moved == 2
        assert await asyncio.to_thread(sessions_of, b.port) == 4.0
        # In PostgreSQL: each conversation holds exactly its confirmed turns, none lost or
        # written twice, whichever replica wrote them. (A reply still playing when the next
        # question comes is cut by it, and stored as far as it was heard.)
        for ready, name in zip(readies, names, strict=True):
            expected = [
                ("user", f"My name is {name}."),
                ("assistant", replies[name][0]),
                ("user", "What is my name?"),
                ("assistant", replies[name][1]),
            ]
            rows = await until_stored(store_url, ready["conversation_id"], expected)
            assert len(rows) == len(expected) and in_order(expected, rows), (name, rows)
    finally:
        for reader in readers:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        for client in clients:
            await client.close()
        balancer.kill()
        balancer.wait(30)
