"""SQLite persistence of conversations and their turns."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .dialogue import Turn
from .errors import StoreError

__all__ = ["ConversationInfo", "RatedTurn", "Store", "TimerRecord"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    profile TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS turns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    text TEXT NOT NULL,
    created_at REAL NOT NULL,
    interrupted INTEGER NOT NULL DEFAULT 0,
    metrics TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS turns_by_conversation ON turns(conversation_id, id);
CREATE TABLE IF NOT EXISTS timers (
    id TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    seconds REAL NOT NULL,
    started_at REAL NOT NULL,
    ends_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'running'
        CHECK (state IN ('running', 'finished', 'cancelled')),
    paused_s REAL
);
CREATE INDEX IF NOT EXISTS timers_by_state ON timers(state, ends_at);
CREATE TABLE IF NOT EXISTS facts (
    conversation_id TEXT PRIMARY KEY REFERENCES conversations(id) ON DELETE CASCADE,
    facts TEXT NOT NULL,
    updated_at REAL NOT NULL
);
"""
# Every table is created IF NOT EXISTS: a store made by an older version gains the new tables
# (timers, facts) when opened, and keeps everything it had; a column added to a table later is
# added to an older one by _ADDED_COLUMNS.
_ADDED_COLUMNS = (
    ("timers", "paused_s", "REAL"),
    # The user's rating of an assistant turn ('good' or 'bad') and what it should have said.
    ("turns", "feedback", "TEXT"),
    ("turns", "correction", "TEXT"),
    # 0: the profile had training data switched off; `voicebot data export` leaves it out.
    ("conversations", "for_training", "INTEGER NOT NULL DEFAULT 1"),
)
_DAY_S = 86400.0


@dataclass(frozen=True)
class TimerRecord:
    """A stored timer (see :class:`voicebot.skills.TimerService`)."""

    id: str
    """Its id."""
    conversation_id: str
    """The conversation it was set in (its sessions hear it end)."""
    name: str
    """What the user called it ("pasta"); empty when unnamed."""
    seconds: float
    """Its length."""
    started_at: float
    """Unix time it was set."""
    ends_at: float
    """Unix time it ends."""
    state: str = "running"
    """``running``, ``finished`` or ``cancelled``."""
    paused_s: float | None = None
    """A running timer that is paused: the time it has left (``ends_at`` then means nothing)."""


@dataclass(frozen=True)
class RatedTurn:
    """A stored turn with the user's feedback on it."""

    row: int
    """Its row id."""
    role: str
    """``user`` or ``assistant``."""
    text: str
    """Its words."""
    interrupted: bool
    """An assistant turn cut short (only what was heard is kept)."""
    feedback: str
    """``good``, ``bad`` or "" (not rated)."""
    correction: str
    """What it should have said ("" for none)."""
    by_skill: bool
    """Answered by a skill (the time, a timer), not by the chat model."""


@dataclass(frozen=True)
class ConversationInfo:
    """A conversation's summary."""

    id: str
    """Its id."""
    profile: str
    """The profile it was held with."""
    created_at: float
    """Unix time it started."""
    updated_at: float
    """Unix time of its last turn."""
    turn_count: int
    """Number of turns."""
    preview: str
    """The user's first words."""


class Store:
    """Conversations and turns in one SQLite file (WAL mode, safe across threads)."""

    def __init__(self, path: str | Path, *, keep_days: float = 0.0) -> None:
        """Open (or create) the store at ``path``; ``:memory:`` for a throwaway one.

        Args:
            path: The database file.
            keep_days: Delete conversations inactive for longer than this, now and then
                daily while open (0 keeps them forever).

        Raises:
            StoreError: the file cannot be opened.
        """
        self.path = str(path)
        """The database file."""
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA synchronous=NORMAL")
            # Deleted rows are overwritten with zeros, not left readable in free pages.
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.executescript(_SCHEMA)
            for table, column, kind in _ADDED_COLUMNS:
                have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        except (sqlite3.Error, OSError) as error:
            raise StoreError(f"cannot open the conversation store {self.path}: {error}") from error
        self._lock = threading.Lock()
        self.keep_days = keep_days
        """Retention in days (0: forever)."""
        self._purged_at = 0.0
        self.purge_expired()

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._lock, self._db:
                return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as error:
            raise StoreError(f"conversation store error: {error}") from error

    def create_conversation(
        self, profile: str, conversation_id: str | None = None, *, for_training: bool = True
    ) -> str:
        """Start a conversation; returns its id (``for_training`` False: never exported for
        training)."""
        cid = conversation_id or uuid.uuid4().hex[:12]
        now = time.time()
        self._run(
            "INSERT INTO conversations (id, profile, created_at, updated_at, for_training) "
            "VALUES (?, ?, ?, ?, ?)",
            (cid, profile, now, now, int(for_training)),
        )
        return cid

    def exists(self, conversation_id: str) -> bool:
        """True when the conversation is stored."""
        return bool(self._run("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)))

    def conversation(self, conversation_id: str) -> ConversationInfo:
        """The summary of one conversation.

        Raises:
            StoreError: unknown id.
        """
        rows = self._list("WHERE c.id = ?", (conversation_id,), limit=1)
        if not rows:
            raise StoreError(f"no conversation {conversation_id!r}: see `voicebot history list`")
        return rows[0]

    def add_turn(self, conversation_id: str, turn: Turn) -> int:
        """Store a turn; returns its row id."""
        rows = self._run(
            "INSERT INTO turns (conversation_id, role, text, created_at, interrupted, metrics) "
            "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            (
                conversation_id,
                turn.role,
                turn.text,
                turn.created_at,
                int(turn.interrupted),
                json.dumps(turn.metrics_ms),
            ),
        )
        self._run(
            "UPDATE conversations SET updated_at = ? WHERE id = ?",
            (turn.created_at, conversation_id),
        )
        if self.keep_days > 0 and time.time() - self._purged_at > _DAY_S:
            self.purge_expired()
        return int(rows[0][0])

    def update_metrics(self, turn_row: int, metrics_ms: dict[str, float]) -> None:
        """Replace the metrics of a stored turn."""
        self._run("UPDATE turns SET metrics = ? WHERE id = ?", (json.dumps(metrics_ms), turn_row))

    def turns(self, conversation_id: str) -> list[Turn]:
        """All turns of a conversation, oldest first.

        Raises:
            StoreError: unknown id.
        """
        if not self.exists(conversation_id):
            raise StoreError(f"no conversation {conversation_id!r}: see `voicebot history list`")
        rows = self._run(
            "SELECT role, text, created_at, interrupted, metrics FROM turns "
            "WHERE conversation_id = ? ORDER BY id",
            (conversation_id,),
        )
        return [
            Turn(role, text, created_at, bool(interrupted), json.loads(metrics))
            for role, text, created_at, interrupted, metrics in rows
        ]

    def conversations(self, limit: int = 50) -> list[ConversationInfo]:
        """The most recently active conversations."""
        return self._list("", (), limit=limit)

    def latest(self, profile: str | None = None) -> str | None:
        """The id of the most recently active conversation (of a profile), if any."""
        if profile is None:
            rows = self._run("SELECT id FROM conversations ORDER BY updated_at DESC LIMIT 1")
        else:
            rows = self._run(
                "SELECT id FROM conversations WHERE profile = ? ORDER BY updated_at DESC LIMIT 1",
                (profile,),
            )
        return str(rows[0][0]) if rows else None

    def facts(self, conversation_id: str) -> dict[str, str] | None:
        """What the conversation remembers about the user; ``None`` when never saved (a
        conversation from before the facts table: learn them again from its turns)."""
        rows = self._run("SELECT facts FROM facts WHERE conversation_id = ?", (conversation_id,))
        if not rows:
            return None
        data = json.loads(rows[0][0])
        return {str(key): str(value) for key, value in data.items()}

    def save_facts(self, conversation_id: str, facts: dict[str, str]) -> None:
        """Replace what the conversation remembers about the user (``{}`` after forgetting)."""
        self._run(
            "INSERT INTO facts (conversation_id, facts, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(conversation_id) DO UPDATE SET facts = excluded.facts, "
            "updated_at = excluded.updated_at",
            (conversation_id, json.dumps(facts, ensure_ascii=False), time.time()),
        )

    def add_timer(self, timer: TimerRecord) -> None:
        """Store a new timer."""
        self._run(
            "INSERT INTO timers (id, conversation_id, name, seconds, started_at, ends_at, state) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                timer.id,
                timer.conversation_id,
                timer.name,
                timer.seconds,
                timer.started_at,
                timer.ends_at,
                timer.state,
            ),
        )

    def end_timer(self, timer_id: str, state: str) -> bool:
        """Move a running timer to ``finished`` or ``cancelled``.

        Returns:
            False when it was not running (already ended, by this process or another one
            sharing the file): whoever moves it first announces it.
        """
        rows = self._run(
            "UPDATE timers SET state = ? WHERE id = ? AND state = 'running' RETURNING id",
            (state, timer_id),
        )
        return bool(rows)

    def pause_timer(self, timer_id: str, paused_s: float | None, ends_at: float) -> bool:
        """Pause a running timer with ``paused_s`` left, or resume it (``None``) to end at
        ``ends_at``; False when it was not running."""
        rows = self._run(
            "UPDATE timers SET paused_s = ?, ends_at = ? WHERE id = ? AND state = 'running' "
            "RETURNING id",
            (paused_s, ends_at, timer_id),
        )
        return bool(rows)

    def change_timer(self, timer_id: str, seconds: float, ends_at: float) -> bool:
        """Lengthen or shorten a running timer; False when it was not running."""
        rows = self._run(
            "UPDATE timers SET seconds = ?, ends_at = ? WHERE id = ? AND state = 'running' "
            "RETURNING id",
            (seconds, ends_at, timer_id),
        )
        return bool(rows)

    def timers(
        self, *, state: str = "running", conversation_id: str | None = None
    ) -> list[TimerRecord]:
        """Timers in a state (of one conversation, or all), the soonest to end first."""
        where, params = "state = ?", [state]
        if conversation_id is not None:
            where += " AND conversation_id = ?"
            params.append(conversation_id)
        rows = self._run(
            "SELECT id, conversation_id, name, seconds, started_at, ends_at, state, paused_s "
            "FROM timers "
            f"WHERE {where} ORDER BY ends_at, started_at",
            tuple(params),
        )
        return [TimerRecord(*row) for row in rows]

    def _list(self, where: str, params: tuple[Any, ...], *, limit: int) -> list[ConversationInfo]:
        rows = self._run(
            "SELECT c.id, c.profile, c.created_at, c.updated_at, "
            "(SELECT COUNT(*) FROM turns t WHERE t.conversation_id = c.id), "
            "COALESCE((SELECT text FROM turns t WHERE t.conversation_id = c.id AND t.role = 'user' "
            "ORDER BY t.id LIMIT 1), '') "
            f"FROM conversations c {where} ORDER BY c.updated_at DESC LIMIT ?",
            (*params, limit),
        )
        return [ConversationInfo(*row) for row in rows]

    def export(self, conversation_id: str) -> dict[str, Any]:
        """A conversation and its turns as JSON-ready data."""
        info = self.conversation(conversation_id)
        return {
            "id": info.id,
            "profile": info.profile,
            "created_at": info.created_at,
            "updated_at": info.updated_at,
            "turns": [
                {
                    "role": t.role,
                    "text": t.text,
                    "created_at": t.created_at,
                    "interrupted": t.interrupted,
                    "metrics_ms": t.metrics_ms,
                }
                for t in self.turns(conversation_id)
            ],
        }

    # --- feedback, deletion and retention (docs/learning.md) ---

    def set_feedback(self, turn_row: int, rating: str, correction: str = "") -> bool:
        """Rate a stored assistant turn ``good`` or ``bad``, with what it should have said.

        Returns:
            False when no such assistant turn is stored (deleted meanwhile).
        """
        if rating not in ("good", "bad"):
            raise StoreError(f"feedback is 'good' or 'bad', not {rating!r}")
        rows = self._run(
            "UPDATE turns SET feedback = ?, correction = ? "
            "WHERE id = ? AND role = 'assistant' RETURNING id",
            (rating, correction.strip() or None, turn_row),
        )
        return bool(rows)

    def last_reply_row(self, conversation_id: str) -> int | None:
        """The row id of the conversation's last stored assistant turn, if any."""
        rows = self._run(
            "SELECT id FROM turns WHERE conversation_id = ? AND role = 'assistant' "
            "ORDER BY id DESC LIMIT 1",
            (conversation_id,),
        )
        return int(rows[0][0]) if rows else None

    def rated_turns(self, conversation_id: str) -> list[RatedTurn]:
        """The conversation's turns with their feedback, oldest first."""
        rows = self._run(
            "SELECT id, role, text, interrupted, COALESCE(feedback, ''), "
            "COALESCE(correction, ''), metrics FROM turns WHERE conversation_id = ? ORDER BY id",
            (conversation_id,),
        )
        return [
            RatedTurn(
                row=int(r[0]),
                role=str(r[1]),
                text=str(r[2]),
                interrupted=bool(r[3]),
                feedback=str(r[4]),
                correction=str(r[5]),
                by_skill="skill" in json.loads(r[6] or "{}"),
            )
            for r in rows
        ]

    def training_conversations(
        self, *, since: float = 0.0, profile: str | None = None
    ) -> list[ConversationInfo]:
        """Conversations that may be used for training (their profile did not switch it
        off), active since ``since`` (Unix time), of one profile or all, oldest first."""
        where = "WHERE c.for_training = 1 AND c.updated_at >= ?"
        params: tuple[Any, ...] = (since,)
        if profile is not None:
            where += " AND c.profile = ?"
            params = (*params, profile)
        rows = self._list(where, params, limit=-1)
        return sorted(rows, key=lambda info: (info.created_at, info.id))

    def delete_conversation(self, conversation_id: str) -> bool:
        """Delete a conversation with its turns, feedback, remembered facts and timers;
        False when there was none. The freed pages are zeroed and the write-ahead log
        emptied, so the words are gone from the files too."""
        rows = self._run("DELETE FROM conversations WHERE id = ? RETURNING id", (conversation_id,))
        # turns and facts go with it (ON DELETE CASCADE); timers are keyed, not linked.
        self._run("DELETE FROM timers WHERE conversation_id = ?", (conversation_id,))
        self._scrub()
        return bool(rows)

    def delete_all(self) -> int:
        """Delete every conversation (and its turns, facts and timers); returns how many."""
        rows = self._run("DELETE FROM conversations RETURNING id")
        self._run("DELETE FROM turns")
        self._run("DELETE FROM facts")
        self._run("DELETE FROM timers")
        self._scrub(vacuum=True)
        return len(rows)

    def purge_expired(self) -> int:
        """Apply the retention (:attr:`keep_days`): delete conversations inactive for longer;
        returns how many."""
        self._purged_at = time.time()
        if self.keep_days <= 0:
            return 0
        cutoff = time.time() - self.keep_days * _DAY_S
        rows = self._run("SELECT id FROM conversations WHERE updated_at < ?", (cutoff,))
        for (cid,) in rows:
            self.delete_conversation(str(cid))
        return len(rows)

    def _scrub(self, *, vacuum: bool = False) -> None:
        """Move the log's pages into the file and empty it (deleted words lived there too)."""
        if self.path == ":memory:":
            return
        try:
            with self._lock:
                if vacuum:
                    self._db.execute("VACUUM")
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as error:
            raise StoreError(f"conversation store error: {error}") from error
