"""What is remembered about the user, end to end on fakes: stored, sent, shown and forgotten.

The protocol frames (``facts``, ``forget_fact``), the store's facts table, and a session that
learns, answers memory commands without the chat model, and keeps forgetting across a resume.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from voicebot.config import Settings, SkillSettings
from voicebot.engines import Engines
from voicebot.engines.fake import FakeChat, FakeStt, FakeTts, FakeVad
from voicebot.errors import ProtocolError
from voicebot.events import FactsChanged, ReplyDone
from voicebot.protocol import FactsMessage, ForgetFactMessage, encode_event, parse_text_frame
from voicebot.session import Session
from voicebot.store import Store
from voicebot.transports.websocket import VoiceServer

from .conftest import Recorder


def engines(llm: FakeChat) -> Engines:
    return Engines(stt=FakeStt(["hello"]), llm=llm, tts=FakeTts(), vad_factory=FakeVad)


def no_skills(settings: Settings) -> Settings:
    return replace(settings, skills=SkillSettings(enabled=False))


# --- protocol -------------------------------------------------------------------------------


def test_facts_frames_parse() -> None:
    assert parse_text_frame('{"type":"facts"}') == FactsMessage()
    assert parse_text_frame('{"type":"forget_fact","key":"home"}') == ForgetFactMessage("home")
    assert parse_text_frame('{"type":"forget_fact","all":true}') == ForgetFactMessage(None)
    for bad in ('{"type":"forget_fact"}', '{"type":"forget_fact","key":3}'):
        with pytest.raises(ProtocolError) as caught:
            parse_text_frame(bad)
        assert caught.value.code == "bad_message"


def test_facts_event_encodes() -> None:
    frame = encode_event(FactsChanged((("home", "Lyon", "you live in Lyon"),)))
    assert isinstance(frame, str)
    assert json.loads(frame) == {
        "type": "facts",
        "facts": [{"key": "home", "value": "Lyon", "text": "you live in Lyon"}],
    }
    assert json.loads(str(encode_event(FactsChanged(())))) == {"type": "facts", "facts": []}


# --- store ----------------------------------------------------------------------------------


def test_store_keeps_facts_per_conversation(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    cid = store.create_conversation("default")
    assert store.facts(cid) is None  # never saved: learned again from the turns
    store.save_facts(cid, {"name": "Zoë", "home": "Lyon"})
    store.save_facts(cid, {"name": "Zoë"})
    store.close()
    reopened = Store(tmp_path / "s.db")
    assert reopened.facts(cid) == {"name": "Zoë"}
    reopened.save_facts(cid, {})
    assert reopened.facts(cid) == {}


# --- session --------------------------------------------------------------------------------


async def test_a_session_stores_and_sends_facts_and_forgetting_survives_a_resume(
    settings: Settings, tmp_path: Path
) -> None:
    store = Store(tmp_path / "store.db")
    llm = FakeChat(["Nice."])
    recorder = Recorder()
    session = Session(
        engines(llm), no_skills(settings), sink=recorder, store=store, realtime_playback=False
    )
    cid = await session.start()
    await asyncio.wait_for(session.send_text("I'm Ada and I live in Lyon."), 5)
    await asyncio.wait_for(session.wait_idle(), 5)
    assert store.facts(cid) == {"name": "Ada", "home": "Lyon"}
    (event,) = recorder.of(FactsChanged)
    assert event.facts == (
        ("name", "Ada", "your name is Ada"),
        ("home", "Lyon", "you live in Lyon"),
    )
    await asyncio.wait_for(session.forget_fact("home"), 5)
    assert recorder.of(FactsChanged)[-1].facts == (("name", "Ada", "your name is Ada"),)
    await session.close()

    resumed = Session(
        engines(llm),
        no_skills(settings),
        sink=Recorder(),
        store=store,
        conversation_id=cid,
        realtime_playback=False,
    )
    await resumed.start()
    # The turn "I live in Lyon" is still stored; the deletion holds all the same.
    assert resumed.dialogue.facts == {"name": "Ada"}
    assert resumed.facts_event().facts == (("name", "Ada", "your name is Ada"),)
    await resumed.close()


async def test_memory_commands_are_answered_without_the_model(settings: Settings) -> None:
    llm = FakeChat(["Nice."])
    recorder = Recorder()
    session = Session(engines(llm), no_skills(settings), sink=recorder, realtime_playback=False)
    await session.start()
    for text in ("My name is Yuki.", "What do you know about me?", "Forget my name."):
        await asyncio.wait_for(session.send_text(text), 5)
        await asyncio.wait_for(session.wait_idle(), 5)
    assert [e.text for e in recorder.of(ReplyDone)] == [
        "Nice.",
        "You told me that your name is Yuki.",
        "Okay, I've forgotten your name.",
    ]
    assert len(llm.prompts) == 1
    assert session.dialogue.facts == {}
    assert recorder.of(FactsChanged)[-1].facts == ()
    assert [t.text for t in session.dialogue.turns][-1] == "Okay, I've forgotten your name."
    await session.close()


async def test_memory_commands_pass_the_skill_router(settings: Settings) -> None:
    llm = FakeChat(["Nice."])
    recorder = Recorder()
    session = Session(engines(llm), settings, sink=recorder, realtime_playback=False)
    await session.start()
    for text in ("I live in Oslo.", "Forget where I live.", "What do you know about me?"):
        await asyncio.wait_for(session.send_text(text), 5)
        await asyncio.wait_for(session.wait_idle(), 5)
    assert [e.text for e in recorder.of(ReplyDone)][1:] == [
        "Okay, I've forgotten where you live.",
        "I don't know anything about you yet.",
    ]
    await session.close()


# --- over the websocket ------------------------------------------------------------------------


async def test_the_server_sends_facts_and_forgets_one_on_request(
    settings: Settings, tmp_path: Path
) -> None:
    settings = replace(no_skills(settings), server=replace(settings.server, port=0))
    store = Store(settings.database_path())
    server = VoiceServer(engines(FakeChat(["Nice."])), settings, store, web_dir=tmp_path)
    await server.start()
    try:
        url = f"ws://127.0.0.1:{server.port}/ws"
        async with connect(url, open_timeout=5) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
            ready = await next_frame(ws, "ready")
            await ws.send(json.dumps({"type": "facts"}))
            assert (await next_frame(ws, "facts"))["facts"] == []
            await ws.send(json.dumps({"type": "text", "text": "I'm Ada. I live in Lyon."}))
            facts = await next_frame(ws, "facts")
            assert [f["key"] for f in facts["facts"]] == ["name", "home"]
            assert facts["facts"][1]["text"] == "you live in Lyon"
            await next_frame(ws, "reply_done")
            await ws.send(json.dumps({"type": "forget_fact", "key": "home"}))
            assert [f["key"] for f in (await next_frame(ws, "facts"))["facts"]] == ["name"]
        async with connect(url, open_timeout=5) as ws:  # resumed: the facts come after ready
            cid = ready["conversation_id"]
            await ws.send(
                json.dumps({"type": "start", "sample_rate": 16000, "conversation_id": cid})
            )
            await next_frame(ws, "ready")
            assert (await next_frame(ws, "facts"))["facts"] == [
                {"key": "name", "value": "Ada", "text": "your name is Ada"}
            ]
            await ws.send(json.dumps({"type": "forget_fact", "all": True}))
            assert (await next_frame(ws, "facts"))["facts"] == []
        assert store.facts(cid) == {}
    finally:
        await asyncio.wait_for(server.close(), 10)
        store.close()


async def next_frame(ws: ClientConnection, kind: str) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            frame = await ws.recv()
            if isinstance(frame, str) and json.loads(frame)["type"] == kind:
                event: dict[str, Any] = json.loads(frame)
                return event
