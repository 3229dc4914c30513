"""The conversation store, on SQLite and on a real PostgreSQL (tests/pg.py): the tests of the
``store`` fixture run on both; the file-specific ones on SQLite; the server-specific ones on
PostgreSQL."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from voicebot import store as store_module
from voicebot.dialogue import Turn
from voicebot.errors import StoreError
from voicebot.store import (
    MIGRATIONS,
    ConversationInfo,
    Migration,
    Store,
    TimerRecord,
    is_postgres_url,
    redact_url,
)

from .pg import PASSWORD, PostgresServer, query


@pytest.fixture
def store(store_location: str) -> Iterator[Store]:
    opened = Store(store_location)
    yield opened
    opened.close()


def test_create_conversation_returns_a_new_id(store: Store) -> None:
    first = store.create_conversation("default")
    second = store.create_conversation("default")
    assert first != second
    assert len(first) == 12
    assert store.exists(first)
    assert not store.exists("nope")


def test_create_conversation_with_a_given_id(store: Store) -> None:
    assert store.create_conversation("pirate", "abc") == "abc"
    info = store.conversation("abc")
    assert info.id == "abc"
    assert info.profile == "pirate"
    assert info.turn_count == 0
    assert info.preview == ""
    assert info.created_at == info.updated_at


def test_duplicate_conversation_id_is_a_store_error(store: Store) -> None:
    store.create_conversation("default", "abc")
    with pytest.raises(StoreError):
        store.create_conversation("default", "abc")


def test_turns_come_back_in_order_with_all_fields(store: Store) -> None:
    cid = store.create_conversation("default")
    store.add_turn(cid, Turn("user", "Hello there", 100.0, False, {"stt": 120.5}))
    store.add_turn(cid, Turn("assistant", "Hi, how can", 101.0, True, {"llm": 300.0, "tts": 80.0}))
    store.add_turn(cid, Turn("user", "Never mind", 102.0))
    assert store.turns(cid) == [
        Turn("user", "Hello there", 100.0, False, {"stt": 120.5}),
        Turn("assistant", "Hi, how can", 101.0, True, {"llm": 300.0, "tts": 80.0}),
        Turn("user", "Never mind", 102.0, False, {}),
    ]


def test_interrupted_flag_is_a_bool(store: Store) -> None:
    cid = store.create_conversation("default")
    store.add_turn(cid, Turn("assistant", "Cut", 1.0, interrupted=True))
    (turn,) = store.turns(cid)
    assert turn.interrupted is True


def test_add_turn_returns_row_ids_and_update_metrics_replaces_them(store: Store) -> None:
    cid = store.create_conversation("default")
    first = store.add_turn(cid, Turn("user", "a", 1.0, metrics_ms={"stt": 1.0}))
    second = store.add_turn(cid, Turn("assistant", "b", 2.0))
    assert second == first + 1
    store.update_metrics(second, {"llm": 42.0, "first_audio": 99.5})
    assert [t.metrics_ms for t in store.turns(cid)] == [
        {"stt": 1.0},
        {"llm": 42.0, "first_audio": 99.5},
    ]


def test_turns_of_conversations_do_not_mix(store: Store) -> None:
    a = store.create_conversation("default")
    b = store.create_conversation("default")
    store.add_turn(a, Turn("user", "in a", 1.0))
    store.add_turn(b, Turn("user", "in b", 2.0))
    store.add_turn(a, Turn("assistant", "also a", 3.0))
    assert [t.text for t in store.turns(a)] == ["in a", "also a"]
    assert [t.text for t in store.turns(b)] == ["in b"]


def test_turns_of_an_unknown_conversation_is_a_store_error(store: Store) -> None:
    with pytest.raises(StoreError, match="'nope'"):
        store.turns("nope")


def test_conversation_unknown_id_is_a_store_error(store: Store) -> None:
    with pytest.raises(StoreError, match="'nope'"):
        store.conversation("nope")


def test_export_unknown_id_is_a_store_error(store: Store) -> None:
    with pytest.raises(StoreError, match="'nope'"):
        store.export("nope")


def test_add_turn_to_an_unknown_conversation_is_a_store_error(store: Store) -> None:
    with pytest.raises(StoreError):
        store.add_turn("nope", Turn("user", "hi", 1.0))


def test_add_turn_with_a_bad_role_is_a_store_error(store: Store) -> None:
    cid = store.create_conversation("default")
    with pytest.raises(StoreError):
        store.add_turn(cid, Turn("system", "hi", 1.0))


def test_add_turn_moves_updated_at_to_the_turn_time(store: Store) -> None:
    cid = store.create_conversation("default")
    created = store.conversation(cid).created_at
    store.add_turn(cid, Turn("user", "hi", created + 50.0))
    info = store.conversation(cid)
    assert info.created_at == created
    assert info.updated_at == created + 50.0


def test_conversations_are_listed_most_recently_active_first(store: Store) -> None:
    old = store.create_conversation("default", "old")
    new = store.create_conversation("default", "new")
    mid = store.create_conversation("pirate", "mid")
    store.add_turn(old, Turn("user", "first words", 1000.0))
    store.add_turn(new, Turn("user", "newest", 3000.0))
    store.add_turn(mid, Turn("user", "middle", 2000.0))
    store.add_turn(old, Turn("assistant", "late reply", 4000.0))
    assert [c.id for c in store.conversations()] == ["old", "new", "mid"]
    assert [c.id for c in store.conversations(limit=2)] == ["old", "new"]


def test_conversation_info_counts_turns_and_previews_the_first_user_words(store: Store) -> None:
    cid = store.create_conversation("pirate", "c1")
    store.add_turn(cid, Turn("assistant", "Ahoy!", 10.0))
    store.add_turn(cid, Turn("user", "What is the weather?", 11.0))
    store.add_turn(cid, Turn("assistant", "Sunny.", 12.0))
    store.add_turn(cid, Turn("user", "Thanks", 13.0))
    (info,) = store.conversations()
    assert isinstance(info, ConversationInfo)
    assert info.id == "c1"
    assert info.profile == "pirate"
    assert info.turn_count == 4
    assert info.preview == "What is the weather?"
    assert info.updated_at == 13.0


def test_latest_with_and_without_profile(store: Store) -> None:
    assert store.latest() is None
    assert store.latest("pirate") is None
    a = store.create_conversation("pirate", "a")
    b = store.create_conversation("default", "b")
    store.add_turn(a, Turn("user", "x", 1000.0))
    store.add_turn(b, Turn("user", "y", 2000.0))
    assert store.latest() == "b"
    assert store.latest("pirate") == "a"
    assert store.latest("default") == "b"
    assert store.latest("butler") is None


def test_export_is_json_ready(store: Store) -> None:
    cid = store.create_conversation("default", "e1")
    store.add_turn(cid, Turn("user", "Hi", 10.0, metrics_ms={"stt": 5.0}))
    store.add_turn(cid, Turn("assistant", "Hel", 11.0, interrupted=True))
    data = store.export(cid)
    created = store.conversation(cid).created_at
    assert data == {
        "id": "e1",
        "profile": "default",
        "created_at": created,
        "updated_at": 11.0,
        "turns": [
            {
                "role": "user",
                "text": "Hi",
                "created_at": 10.0,
                "interrupted": False,
                "metrics_ms": {"stt": 5.0},
            },
            {
                "role": "assistant",
                "text": "Hel",
                "created_at": 11.0,
                "interrupted": True,
                "metrics_ms": {},
            },
        ],
    }
    assert json.loads(json.dumps(data)) == data


def test_unicode_text_round_trips(store: Store) -> None:
    cid = store.create_conversation("default")
    store.add_turn(cid, Turn("user", "Grüße — 你好 'quoted' \"x\"", 1.0))
    assert store.turns(cid)[0].text == "Grüße — 你好 'quoted' \"x\""


def test_file_database_uses_wal_journal_mode(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    Store(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_store_creates_missing_parent_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "voicebot.db"
    Store(path).close()
    assert path.is_file()


def test_data_survives_close_and_reopen(store_location: str) -> None:
    path = store_location
    first = Store(path)
    cid = first.create_conversation("pirate", "keep")
    first.add_turn(cid, Turn("user", "remember me", 5.0, metrics_ms={"stt": 1.5}))
    first.close()
    second = Store(path)
    try:
        assert second.turns("keep") == [Turn("user", "remember me", 5.0, False, {"stt": 1.5})]
        assert second.latest("pirate") == "keep"
    finally:
        second.close()


def test_memory_store_writes_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = Store(":memory:")
    cid = store.create_conversation("default")
    store.add_turn(cid, Turn("user", "hi", 1.0))
    assert [t.text for t in store.turns(cid)] == ["hi"]
    store.close()
    assert list(tmp_path.iterdir()) == []


def test_using_a_closed_store_is_a_store_error(store_location: str) -> None:
    store = Store(store_location)
    store.close()
    with pytest.raises(StoreError):
        store.create_conversation("default")


def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a database, only words " * 200)
    with pytest.raises(StoreError, match="junk.db"):
        Store(path)


def test_a_directory_as_database_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        Store(tmp_path)


def test_a_parent_that_is_a_file_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError):
        Store(tmp_path / "file" / "voicebot.db")


def write_turns(store: Store, cid: str, role: str, count: int, start: threading.Barrier) -> None:
    start.wait(timeout=10)
    for i in range(count):
        store.add_turn(cid, Turn(role, f"{role} {i}", float(i)))


def test_two_threads_writing_to_one_store_both_land(store: Store) -> None:
    a = store.create_conversation("default", "a")
    b = store.create_conversation("default", "b")
    start = threading.Barrier(2)
    threads = [
        threading.Thread(target=write_turns, args=(store, a, "user", 40, start)),
        threading.Thread(target=write_turns, args=(store, b, "assistant", 40, start)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert [t.text for t in store.turns(a)] == [f"user {i}" for i in range(40)]
    assert [t.text for t in store.turns(b)] == [f"assistant {i}" for i in range(40)]


def test_two_connections_writing_to_one_store_both_land(store_location: str) -> None:
    path = store_location
    first, second = Store(path), Store(path)
    try:
        first.create_conversation("default", "a")
        start = threading.Barrier(2)
        threads = [
            threading.Thread(target=write_turns, args=(first, "a", "user", 25, start)),
            threading.Thread(target=write_turns, args=(second, "a", "assistant", 25, start)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in threads)
        texts = [t.text for t in first.turns("a")]
        assert len(texts) == 50
        assert [t for t in texts if t.startswith("user")] == [f"user {i}" for i in range(25)]
        assert [t for t in texts if t.startswith("assistant")] == [
            f"assistant {i}" for i in range(25)
        ]
        assert first.conversation("a").turn_count == 50
    finally:
        first.close()
        second.close()


def test_timers_are_stored_and_ended_once(store: Store) -> None:
    tea = TimerRecord("t1", "c1", "tea", 180.0, 1000.0, 1180.0)
    store.add_timer(tea)
    store.add_timer(TimerRecord("t2", "c1", "", 60.0, 1000.0, 1060.0))
    store.add_timer(TimerRecord("t3", "c2", "eggs", 300.0, 1000.0, 1300.0))
    assert [t.id for t in store.timers()] == ["t2", "t1", "t3"]  # the soonest first
    assert store.timers(conversation_id="c1")[1] == tea
    assert store.end_timer("t2", "finished")
    assert not store.end_timer("t2", "cancelled")  # already ended: nobody ends it twice
    assert store.end_timer("t3", "cancelled")
    assert [t.id for t in store.timers()] == ["t1"]
    assert [t.state for t in store.timers(state="finished")] == ["finished"]
    assert [t.name for t in store.timers(state="cancelled", conversation_id="c2")] == ["eggs"]


def test_a_timers_table_made_before_pausing_gains_its_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE timers (id TEXT PRIMARY KEY, conversation_id TEXT NOT NULL,
            name TEXT NOT NULL DEFAULT '', seconds REAL NOT NULL, started_at REAL NOT NULL,
            ends_at REAL NOT NULL, state TEXT NOT NULL DEFAULT 'running');
        INSERT INTO timers VALUES ('t1', 'c', 'tea', 60.0, 1.0, 61.0, 'running');
        """
    )
    old.commit()
    old.close()
    store = Store(path)
    try:
        assert store.timers() == [TimerRecord("t1", "c", "tea", 60.0, 1.0, 61.0)]
        assert store.pause_timer("t1", 30.0, 61.0)
        assert store.timers()[0].paused_s == 30.0
    finally:
        store.close()


def test_a_store_made_before_timers_gains_the_table_and_keeps_its_turns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE conversations (id TEXT PRIMARY KEY, profile TEXT NOT NULL,
            created_at REAL NOT NULL, updated_at REAL NOT NULL);
        CREATE TABLE turns (id INTEGER PRIMARY KEY AUTOINCREMENT,
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            role TEXT NOT NULL CHECK (role IN ('user', 'assistant')), text TEXT NOT NULL,
            created_at REAL NOT NULL, interrupted INTEGER NOT NULL DEFAULT 0,
            metrics TEXT NOT NULL DEFAULT '{}');
        INSERT INTO conversations VALUES ('old1', 'default', 1.0, 2.0);
        INSERT INTO turns (conversation_id, role, text, created_at)
            VALUES ('old1', 'user', 'hi', 1.0);
        """
    )
    old.commit()
    old.close()
    store = Store(path)
    try:
        assert [t.text for t in store.turns("old1")] == ["hi"]
        assert store.timers() == []
        store.add_timer(TimerRecord("t1", "old1", "", 5.0, 1.0, 6.0))
        assert store.pause_timer("t1", 3.0, 6.0)
        assert store.timers()[0].paused_s == 3.0
        assert [t.id for t in store.timers(conversation_id="old1")] == ["t1"]
    finally:
        store.close()


# --------------------------------------------------------------- versioned schema migrations

# What the last store without schema_version (before 0.1's migrations) made of a new file:
# its schema, then its added columns, each ALTERed in when missing.
UNVERSIONED_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY, profile TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS turns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')), text TEXT NOT NULL,
    created_at REAL NOT NULL, interrupted INTEGER NOT NULL DEFAULT 0,
    metrics TEXT NOT NULL DEFAULT '{}');
CREATE INDEX IF NOT EXISTS turns_by_conversation ON turns(conversation_id, id);
CREATE TABLE IF NOT EXISTS timers (
    id TEXT PRIMARY KEY, conversation_id TEXT NOT NULL, name TEXT NOT NULL DEFAULT '',
    seconds REAL NOT NULL, started_at REAL NOT NULL, ends_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'finished', 'cancelled')),
    paused_s REAL);
CREATE INDEX IF NOT EXISTS timers_by_state ON timers(state, ends_at);
CREATE TABLE IF NOT EXISTS facts (
    conversation_id TEXT PRIMARY KEY REFERENCES conversations(id) ON DELETE CASCADE,
    facts TEXT NOT NULL, updated_at REAL NOT NULL);
ALTER TABLE turns ADD COLUMN feedback TEXT;
ALTER TABLE turns ADD COLUMN correction TEXT;
ALTER TABLE conversations ADD COLUMN for_training INTEGER NOT NULL DEFAULT 1;
"""


def test_a_store_made_before_versioning_opens_migrated_with_all_its_data(tmp_path: Path) -> None:
    path = tmp_path / "unversioned.db"
    old = sqlite3.connect(path)
    old.executescript(
        UNVERSIONED_SCHEMA
        + """
        INSERT INTO conversations VALUES ('c1', 'pirate', 10.0, 12.0, 1);
        INSERT INTO conversations VALUES ('c2', 'private', 20.0, 21.0, 0);
        INSERT INTO turns (conversation_id, role, text, created_at, interrupted, metrics)
            VALUES ('c1', 'user', 'My name is Ada.', 10.5, 0, '{"stt": 100.0}');
        INSERT INTO turns (conversation_id, role, text, created_at, interrupted, metrics,
                           feedback, correction)
            VALUES ('c1', 'assistant', 'Ahoy Ava!', 11.0, 1, '{}', 'bad', 'Ahoy Ada!');
        INSERT INTO turns (conversation_id, role, text, created_at)
            VALUES ('c2', 'user', 'secret', 20.5);
        INSERT INTO facts VALUES ('c1', '{"name": "Ada"}', 12.0);
        INSERT INTO timers VALUES ('t1', 'c1', 'tea', 60.0, 1.0, 61.0, 'running', 30.0);
        INSERT INTO timers VALUES ('t2', 'c1', '', 5.0, 1.0, 6.0, 'finished', NULL);
        """
    )
    old.commit()
    old.close()
    store = Store(path)
    try:
        assert store.schema_version == MIGRATIONS[-1].version
        assert [t.text for t in store.turns("c1")] == ["My name is Ada.", "Ahoy Ava!"]
        assert store.turns("c1")[0].metrics_ms == {"stt": 100.0}
        assert store.turns("c1")[1].interrupted is True
        rated = store.rated_turns("c1")[1]
        assert (rated.feedback, rated.correction) == ("bad", "Ahoy Ada!")
        assert store.facts("c1") == {"name": "Ada"}
        assert store.timers() == [TimerRecord("t1", "c1", "tea", 60.0, 1.0, 61.0, "running", 30.0)]
        assert [t.id for t in store.timers(state="finished")] == ["t2"]
        assert [c.id for c in store.training_conversations()] == ["c1"]
        assert [(c.id, c.turn_count) for c in store.conversations()] == [("c2", 1), ("c1", 2)]
        row = store.add_turn("c1", Turn("user", "still here", 13.0))
        assert row == 4  # the row ids go on from the old ones
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        versions = db.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
        indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert versions == [(m.version,) for m in MIGRATIONS]
    assert "conversations_by_activity" in indexes


def test_a_new_store_records_every_migration(store_location: str) -> None:
    Store(store_location).close()
    rows = query(store_location, "SELECT version, description FROM schema_version ORDER BY 1")
    assert rows == [(m.version, m.description) for m in MIGRATIONS]
    store = Store(store_location)  # opened again: nothing to apply
    try:
        assert store.schema_version == MIGRATIONS[-1].version
    finally:
        store.close()
    assert len(query(store_location, "SELECT * FROM schema_version")) == len(MIGRATIONS)


def test_a_store_of_an_older_version_gets_only_the_missing_migrations(
    store_location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS[:1])
    first = Store(store_location)
    cid = first.create_conversation("default", "kept")
    first.add_turn(cid, Turn("user", "from version 1", 1.0))
    assert first.schema_version == 1
    first.close()
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS)
    second = Store(store_location)
    try:
        assert second.schema_version == 2
        assert [t.text for t in second.turns("kept")] == ["from version 1"]
    finally:
        second.close()
    assert query(store_location, "SELECT version FROM schema_version ORDER BY 1") == [(1,), (2,)]


def test_a_failing_migration_applies_nothing(
    store_location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    Store(store_location).close()
    broken = Migration(
        3,
        "a table, then a mistake",
        (
            "CREATE TABLE half_done (id INTEGER)",
            "INSERT INTO conversations (id) VALUES ('no profile')",
        ),
    )
    monkeypatch.setattr(store_module, "MIGRATIONS", (*MIGRATIONS, broken))
    with pytest.raises(StoreError, match="cannot open the conversation store"):
        Store(store_location)
    assert query(store_location, "SELECT MAX(version) FROM schema_version") == [(2,)]
    with pytest.raises(Exception):  # noqa: B017 - sqlite3 or psycopg: the table is not there
        query(store_location, "SELECT * FROM half_done")


def test_a_store_of_a_newer_version_is_refused(
    store_location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    later = Migration(3, "from the future", ("CREATE TABLE future (id INTEGER)",))
    monkeypatch.setattr(store_module, "MIGRATIONS", (*MIGRATIONS, later))
    Store(store_location).close()
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS)
    with pytest.raises(StoreError, match="schema version 3, made by a newer voicebot"):
        Store(store_location)


def test_stores_opening_a_new_database_at_once_migrate_it_once(store_location: str) -> None:
    opened: list[Store] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def open_one() -> None:
        start.wait(timeout=10)
        try:
            opened.append(Store(store_location))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for store in opened:
        store.close()
    assert errors == []
    assert len(opened) == 4
    assert len(query(store_location, "SELECT * FROM schema_version")) == len(MIGRATIONS)


# ----------------------------------------------------------------------- PostgreSQL itself


def test_an_unreachable_server_is_a_store_error_without_the_password() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there
    with pytest.raises(StoreError) as caught:
        Store(f"postgresql://voicebot:hunter2-pw@127.0.0.1:{port}/voicebot")
    message = str(caught.value)
    assert "cannot open the conversation store" in message
    assert f"postgresql://voicebot:***@127.0.0.1:{port}/voicebot" in message
    assert "hunter2" not in message


def test_a_wrong_password_or_database_is_a_store_error(postgres: PostgresServer) -> None:
    with pytest.raises(StoreError, match="password authentication failed") as caught:
        Store(postgres.url().replace(PASSWORD, "wrong-pw-123"))
    assert "wrong-pw-123" not in str(caught.value)
    with pytest.raises(StoreError, match="no_such_db") as caught:
        Store(postgres.url("no_such_db"))
    assert PASSWORD not in str(caught.value)


def test_a_dropped_connection_is_reopened_once(postgres: PostgresServer) -> None:
    url = postgres.new_database()
    database = url.rsplit("/", 1)[1]
    store = Store(url)
    try:
        cid = store.create_conversation("default")
        store.add_turn(cid, Turn("user", "before", 1.0))

        def cut() -> None:
            with postgres.admin() as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND application_name = 'voicebot'",
                    (database,),
                )

        cut()  # a restarted server, a proxy closing an idle connection
        store.add_turn(cid, Turn("user", "after", 2.0))
        assert [t.text for t in store.turns(cid)] == ["before", "after"]

        cut()
        with postgres.admin() as admin:  # and the server refuses it new connections
            admin.execute(f"ALTER DATABASE {database} WITH ALLOW_CONNECTIONS false")
        with pytest.raises(StoreError, match="lost the connection") as caught:
            store.turns(cid)
        assert PASSWORD not in str(caught.value)
        with postgres.admin() as admin:
            admin.execute(f"ALTER DATABASE {database} WITH ALLOW_CONNECTIONS true")
        assert [t.text for t in store.turns(cid)] == ["before", "after"]  # back
    finally:
        store.close()


def test_urls_are_shown_without_their_password() -> None:
    assert redact_url("postgresql://bot:pa%40ss@db:5432/voicebot") == (
        "postgresql://bot:***@db:5432/voicebot"
    )
    assert redact_url("postgresql://db/voicebot?password=x&sslmode=require") == (
        "postgresql://db/voicebot?password=***&sslmode=require"
    )
    assert redact_url("postgresql://bot@db/voicebot") == "postgresql://bot@db/voicebot"
    assert is_postgres_url("postgres://db/x") and not is_postgres_url("/var/lib/voicebot.db")


def test_history_reads_a_postgresql_store_named_by_the_environment(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    url = postgres.new_database()
    store = Store(url)
    cid = store.create_conversation("default", "pg1")
    store.add_turn(cid, Turn("user", "Stored in PostgreSQL", 1.0))
    store.add_turn(cid, Turn("assistant", "Indeed.", 2.0))
    store.close()
    env = {**os.environ, "VOICEBOT_STORE_URL": url, "VOICEBOT_DATA_DIR": str(tmp_path)}
    env["VOICEBOT_CONFIG"] = str(tmp_path / "config.toml")
    (tmp_path / "config.toml").touch()

    def voicebot(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - our own command
            [sys.executable, "-m", "voicebot", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )

    listed = voicebot("history", "list")
    assert listed.returncode == 0, listed.stderr
    assert "pg1" in listed.stdout and "Stored in PostgreSQL" in listed.stdout
    shown = voicebot("history", "show", "pg1")
    assert "assistant: Indeed." in shown.stdout
    assert json.loads(voicebot("history", "export", "pg1").stdout)["turns"][1]["text"] == "Indeed."
    assert not list(tmp_path.glob("*.db"))  # no SQLite file made beside it
    env["VOICEBOT_STORE_URL"] = url.replace(PASSWORD, "not-the-pw")
    refused = voicebot("history", "list")
    assert refused.returncode != 0
    assert "cannot open the conversation store" in refused.stderr
    assert "Traceback" not in refused.stderr and "not-the-pw" not in refused.stderr
