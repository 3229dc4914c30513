"""Feedback on replies, deletion, retention and the training-data export (docs/learning.md).

Fake engines for the session and the protocol; the real model in the text-mode test.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from voicebot.config import Settings
from voicebot.data_export import training_examples
from voicebot.dialogue import Turn
from voicebot.engines import Engines
from voicebot.engines.fake import FakeChat, FakeStt, FakeTts, FakeVad
from voicebot.errors import ConfigError, ProtocolError
from voicebot.events import ReplyDone
from voicebot.feedback import parse_feedback_command
from voicebot.learning_cli import parse_since
from voicebot.protocol import FeedbackMessage, feedback_frame, parse_text_frame
from voicebot.session import Session
from voicebot.store import Store, is_postgres_url

from .conftest import Recorder, make_settings
from .pg import query
from .test_cli import voicebot


def _engines(*replies: str) -> Engines:
    return Engines(
        stt=FakeStt(["unused"]),
        llm=FakeChat(list(replies)),
        tts=FakeTts(),
        vad_factory=FakeVad,
    )


def _exchange(store: Store, cid: str, question: str, reply: str, at: float | None = None) -> int:
    when = time.time() if at is None else at
    store.add_turn(cid, Turn("user", question, when))
    return store.add_turn(cid, Turn("assistant", reply, when))


# --- the protocol and the typed commands ---


def test_feedback_message_parses_and_refuses_bad_fields() -> None:
    frame = '{"type":"feedback","turn_id":3,"rating":"bad","correction":" Berlin. "}'
    assert parse_text_frame(frame) == FeedbackMessage("bad", "Berlin.", 3)
    assert parse_text_frame('{"type":"feedback","rating":"good"}') == FeedbackMessage("good")
    for bad in (
        '{"type":"feedback","rating":"meh"}',
        '{"type":"feedback","rating":"good","correction":"no"}',
        '{"type":"feedback","rating":"bad","turn_id":"3"}',
        '{"type":"feedback","rating":"bad","turn_id":true}',
        '{"type":"feedback","rating":"bad","correction":5}',
    ):
        with pytest.raises(ProtocolError) as caught:
            parse_text_frame(bad)
        assert caught.value.code == "bad_message"
    assert json.loads(feedback_frame("good", 2, stored=True)) == {
        "type": "feedback",
        "turn_id": 2,
        "rating": "good",
        "stored": True,
    }


def test_typed_feedback_commands() -> None:
    assert parse_feedback_command("/good") == ("good", "")
    assert parse_feedback_command("/bad") == ("bad", "")
    assert parse_feedback_command("/bad  It is Berlin. ") == ("bad", "It is Berlin.")
    assert parse_feedback_command("/goodness") is None
    assert parse_feedback_command("good answer") is None


def test_since_takes_dates_and_ages() -> None:
    now = 1_800_000_000.0
    assert parse_since("7d", now=now) == now - 7 * 86400
    assert parse_since("12h", now=now) == now - 12 * 3600
    assert parse_since("2026-11-30") > 0
    with pytest.raises(ConfigError):
        parse_since("last tuesday")


# --- the session stores feedback with the reply ---


async def test_feedback_is_stored_with_the_rated_reply(
    settings: Settings, store_location: str
) -> None:
    store = Store(store_location)
    recorder = Recorder()
    session = Session(
        _engines("Paris is the capital.", "Munich is the capital."),
        settings,
        sink=recorder,
        store=store,
    )
    cid = await asyncio.wait_for(session.start(), 10)
    for question in ("What is the capital of France?", "What is the capital of Germany?"):
        await session.send_text(question)
        await asyncio.wait_for(session.wait_idle(), 10)
    first, second = (e.turn_id for e in recorder.of(ReplyDone))
    assert await session.give_feedback("good", turn_id=first)
    assert await session.give_feedback("bad", "Berlin is the capital.", turn_id=second)
    assert not await session.give_feedback("good", turn_id=99)  # no such reply
    rated = [(t.text, t.feedback, t.correction) for t in store.rated_turns(cid)]
    assert rated == [
        ("What is the capital of France?", "", ""),
        ("Paris is the capital.", "good", ""),
        ("What is the capital of Germany?", "", ""),
        ("Munich is the capital.", "bad", "Berlin is the capital."),
    ]
    await session.close()
    store.close()


async def test_spoken_feedback_rates_the_last_reply_and_is_not_kept(
    tmp_path: Path, store_location: str
) -> None:
    settings = make_settings(tmp_path)
    store = Store(store_location)
    recorder = Recorder()
    session = Session(_engines("Monday.", "Noted."), settings, sink=recorder, store=store)
    cid = await asyncio.wait_for(session.start(), 10)
    await session.send_text("When is the bin collected?")
    await asyncio.wait_for(session.wait_idle(), 10)
    # Words as Whisper writes them; the skill hears them whatever the punctuation.
    await session.send_text("No, that's wrong. It should be Thursday morning.")
    await asyncio.wait_for(session.wait_idle(), 10)
    said = recorder.texts(ReplyDone)
    assert said[-1] == "Thanks, I've noted the right answer."
    rated = [(t.role, t.text, t.feedback, t.correction) for t in store.rated_turns(cid)]
    assert rated == [
        ("user", "When is the bin collected?", "", ""),
        ("assistant", "Monday.", "bad", "Thursday morning."),
    ]
    await session.send_text("That's right.")
    await asyncio.wait_for(session.wait_idle(), 10)
    assert store.rated_turns(cid)[1].feedback == "good"
    await session.close()
    store.close()


# --- deletion, retention and the export ---


def test_deleted_conversations_leave_nothing_behind(tmp_path: Path, store_location: str) -> None:
    path = store_location
    store = Store(path)
    kept = store.create_conversation("default")
    gone = store.create_conversation("default")
    _exchange(store, kept, "What day is it?", "It is Monday.")
    row = _exchange(store, gone, "My secret is zebra-tulip-99.", "Noted: zebra-tulip-99.")
    store.set_feedback(row, "bad", "I will keep zebra-tulip-99 secret.")
    store.save_facts(gone, {"secret": "zebra-tulip-99"})
    assert store.delete_conversation(gone)
    assert not store.delete_conversation(gone)
    assert not store.exists(gone) and store.exists(kept)
    for table in ("turns", "facts", "timers"):
        assert query(path, f"SELECT * FROM {table} WHERE conversation_id = '{gone}'") == []
    settings = make_settings(tmp_path)
    assert "zebra" not in json.dumps(list(training_examples(store, settings)))
    store.close()
    if is_postgres_url(path):
        return  # its files keep dead rows until the space is reused (docs/learning.md)
    for file in tmp_path.glob("voicebot.db*"):
        assert b"zebra-tulip-99" not in file.read_bytes(), file.name


def test_delete_all_and_retention(store_location: str) -> None:
    path = store_location
    store = Store(path)
    old = store.create_conversation("default")
    _exchange(store, old, "An old question?", "An old answer.", at=time.time() - 40 * 86400)
    new = store.create_conversation("default")
    _exchange(store, new, "A new question?", "A new answer.")
    store.close()
    store = Store(path, keep_days=30)  # applied when opened
    assert not store.exists(old) and store.exists(new)
    assert query(path, "SELECT COUNT(*) FROM turns") == [(2,)]
    assert store.delete_all() == 1
    assert query(path, "SELECT COUNT(*) FROM turns") == [(0,)]
    assert store.conversations() == []
    store.close()


def test_export_replaces_corrections_and_honours_filters(
    tmp_path: Path, store_location: str
) -> None:
    settings = make_settings(
        tmp_path,
        '[profiles.private]\ntraining_data = false\n[profiles.kids]\nsystem_prompt = "Be kind."\n',
    )
    store = Store(store_location)
    cid = store.create_conversation("default")
    good = _exchange(store, cid, "Capital of France?", "Paris.")
    bad = _exchange(store, cid, "Capital of Germany?", "Munich.")
    wrong = _exchange(store, cid, "Capital of Spain?", "Lisbon.")
    _exchange(store, cid, "Capital of Italy?", "Rome.")
    store.set_feedback(good, "good")
    store.set_feedback(bad, "bad", "Berlin.")
    store.set_feedback(wrong, "bad")
    private = store.create_conversation("private", for_training=False)
    _exchange(store, private, "My bank PIN?", "It is 1234.")
    kids = store.create_conversation("kids")
    _exchange(store, kids, "Why is the sky blue?", "Sunlight scatters.")

    everything = list(training_examples(store, settings))
    assert everything[0]["messages"] == [
        {"role": "system", "content": settings.get_profile().prompt()},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Capital of Germany?"},
        {"role": "assistant", "content": "Berlin."},
        {"role": "user", "content": "Capital of Italy?"},
        {"role": "assistant", "content": "Rome."},
    ]
    assert everything[1]["messages"][0] == {"role": "system", "content": "Be kind."}
    assert len(everything) == 2  # the private profile's conversation never appears
    rated = list(training_examples(store, settings, feedback="good"))
    assert [m["content"] for m in rated[0]["messages"][1:]] == [
        "Capital of France?",
        "Paris.",
        "Capital of Germany?",
        "Berlin.",
    ]
    assert len(rated) == 1
    only_kids = list(training_examples(store, settings, profile="kids"))
    assert len(only_kids) == 1 and only_kids[0]["messages"][1]["content"] == "Why is the sky blue?"
    assert list(training_examples(store, settings, since=time.time() + 60)) == []
    store.close()


# --- text mode, the export and deletion from the command line, on the real model ---


@pytest.mark.models
def test_text_mode_feedback_reaches_the_export_until_deleted(tmp_path: Path) -> None:
    typed = (
        "What is the capital of France?\n/good\n"
        "What is the capital of Germany?\n/bad The capital of Germany is Berlin.\n"
    )
    chat = voicebot("text", data=tmp_path, stdin=typed)
    assert chat.returncode == 0, chat.stderr
    assert chat.stderr.count("[noted, thank you]") == 2
    cid = chat.stderr.split("conversation ")[1].split()[0]
    out = tmp_path / "train.jsonl"
    export = voicebot("data", "export", "-o", str(out), "--feedback", "good", data=tmp_path)
    assert export.returncode == 0, export.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 1
    messages = lines[0]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[3:] == [
        {"role": "user", "content": "What is the capital of Germany?"},
        {"role": "assistant", "content": "The capital of Germany is Berlin."},
    ]
    deleted = voicebot("history", "delete", cid, data=tmp_path)
    assert deleted.returncode == 0, deleted.stderr
    assert cid not in voicebot("history", "list", data=tmp_path).stdout
    again = voicebot("data", "export", data=tmp_path)
    assert again.returncode == 0 and again.stdout == ""
    missing = voicebot("history", "delete", cid, data=tmp_path)
    assert missing.returncode == 2 and "no conversation" in missing.stderr
