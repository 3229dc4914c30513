"""Crash safety: ``kill -9`` of a real server in the middle of a reply loses at most that
turn; the store passes SQLite's integrity check and the next start resumes the conversation."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from voicebot.speech_samples import SpeechMaker
from voicebot.transports.client import VoiceClient

from .test_replicas import Replica, events_into, stream_forever, until

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def voice() -> SpeechMaker:
    from .conftest import REPO

    return SpeechMaker.load(REPO / "models")


async def _session(url: str, conversation_id: str | None = None) -> tuple[Any, ...]:
    client = VoiceClient(url, conversation_id=conversation_id)
    ready = await client.connect()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    lines: asyncio.Queue[bytes] = asyncio.Queue()
    tasks = [
        asyncio.create_task(events_into(client, queue)),
        asyncio.create_task(stream_forever(client, lines)),
    ]
    return client, ready, queue, lines, tasks


async def _end(client: VoiceClient, tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    with contextlib.suppress(Exception):
        await client.close()


async def test_kill_9_mid_reply_loses_at_most_that_turn_and_the_store_is_whole(
    tmp_path: Path, voice: SpeechMaker
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    first = Replica(tmp_path, "first", data_dir=data)
    second: Replica | None = None
    try:
        await first.ready()
        client, ready, queue, lines, tasks = await _session(first.ws_url)
        conversation = ready["conversation_id"]
        try:
            await lines.put(voice.piper("My name is Alice."))
            confirmed = await until(queue, "reply_done", 120)
            # Played to the end (speaking over it would keep only what was heard).
            while (await until(queue, "state", 60))[-1]["state"] != "listening":
                pass
            await lines.put(voice.piper("What is the capital of France?"))
            await until(queue, "reply_text", 120)
            first.process.kill()  # SIGKILL in the middle of the reply
            assert await asyncio.to_thread(first.process.wait, 30) == -9
        finally:
            await _end(client, tasks)

        database = data / "voicebot.db"
        with contextlib.closing(sqlite3.connect(database)) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            stored = [
                text
                for (text,) in db.execute(
                    "SELECT text FROM turns WHERE conversation_id = ? ORDER BY id", (conversation,)
                )
            ]
        reply = next(e for e in confirmed if e["type"] == "reply_done")["text"]
        assert stored[:2] == ["My name is Alice.", reply], stored  # the confirmed turn

        second = Replica(tmp_path, "second", data_dir=data)
        await second.ready()
        client, resumed, queue, lines, tasks = await _session(second.ws_url, conversation)
        try:
            assert resumed["conversation_id"] == conversation
            history = [t["text"] for t in resumed["history"]]
            assert history[:2] == ["My name is Alice.", reply]
            await lines.put(voice.piper("What is my name?"))
            answer = await until(queue, "reply_done", 120)
            assert "alice" in answer[-1]["text"].lower(), answer
        finally:
            await _end(client, tasks)
    finally:
        first.stop()
        if second is not None:
            second.stop()
