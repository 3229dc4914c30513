"""Persistence of conversations, turns, remembered facts, feedback and timers.

Two backends behind one :class:`Store` API: a SQLite file (the default: one machine, nothing to
run) and PostgreSQL (``[store] url = "postgresql://..."``: replicas on several machines share
it; docs/scaling.md). The SQL is written once; a small dialect layer maps its placeholders and
column types, and only SQLite scrubs its files after a deletion.

The schema is versioned: :data:`MIGRATIONS` are numbered and applied in order, the missing ones
all in one transaction, when a store is opened; the ``schema_version`` table records each one.
A SQLite file made before versioning (tables created if missing, columns added later) is
brought up to date by migration 1 and keeps everything it had.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from .dialogue import Turn
from .errors import StoreError

__all__ = [
    "MIGRATIONS",
    "ConversationInfo",
    "Migration",
    "RatedTurn",
    "Store",
    "TimerRecord",
    "is_postgres_url",
    "redact_url",
]

_DAY_S = 86400.0
_PG_SCHEMES = ("postgresql://", "postgres://")
# Serialises the migrations of replicas opening one PostgreSQL database at the same moment
# (pg_advisory_xact_lock's key: any constant of our own).
_PG_MIGRATION_LOCK = 0x766F6963  # "voic"


def is_postgres_url(location: str | Path) -> bool:
    """True when ``location`` names a PostgreSQL database rather than a SQLite file."""
    return isinstance(location, str) and location.startswith(_PG_SCHEMES)


def redact_url(url: str) -> str:
    """``url`` with its password (in the user part or a ``password=`` parameter) as ``***``:
    what may be printed or logged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<an unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(key == "password" for key, _ in pairs):
            query = urlencode([(k, "***" if k == "password" else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _secrets_of(url: str) -> list[str]:
    """The password of ``url`` as written and decoded, to scrub from error messages."""
    try:
        parts = urlsplit(url)
        found = [parts.password or ""]
        found += [v for k, v in parse_qsl(parts.query) if k == "password"]
    except ValueError:
        return []
    return [s for secret in found if secret for s in {secret, unquote(secret)}]


# ----------------------------------------------------------------------------- dialects


class _Backend:
    """One connection to one database, in autocommit mode: a statement alone is its own
    transaction, :meth:`transaction` groups several. Not thread-safe: :class:`Store` locks."""

    name = ""
    errors: tuple[type[Exception], ...] = ()
    types: dict[str, str] = {}
    """Column types of the schema's SQL (``{real}``, ``{serial}``) in this dialect."""

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    @contextmanager
    def transaction(self, *, migrating: bool = False) -> Iterator[None]:
        raise NotImplementedError
        yield  # pragma: no cover

    def columns(self, table: str) -> set[str]:
        raise NotImplementedError

    def ensure_connected(self) -> None:
        """Reconnect when the connection was lost (PostgreSQL)."""

    def lost(self, error: Exception) -> bool:
        """True when ``error`` means the connection dropped (worth one reconnection)."""
        return False

    def scrub(self, *, vacuum: bool) -> None:
        """Make deleted rows unreadable in the database's files, where the engine allows."""

    def close(self) -> None:
        raise NotImplementedError


class _SQLite(_Backend):
    name = "sqlite"
    errors = (sqlite3.Error,)
    types = {"real": "REAL", "serial": "INTEGER PRIMARY KEY AUTOINCREMENT"}

    def __init__(self, path: str) -> None:
        self.path = path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level None: autocommit, and BEGIN where this class says so (the sqlite3
        # module's implicit transactions would commit before each DDL statement).
        self.db = sqlite3.connect(path, check_same_thread=False, timeout=10.0, isolation_level=None)
        try:
            # Turning a new file to WAL takes an exclusive lock without waiting on the busy
            # timeout: stores opening the same new file at once (replicas, threads) get
            # "database is locked" at once, so it is retried for as long as that timeout.
            deadline = time.monotonic() + 10.0
            while True:
                try:
                    self.db.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as error:
                    if "locked" not in str(error) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("PRAGMA synchronous=NORMAL")
            # Deleted rows are overwritten with zeros, not left readable in free pages.
            self.db.execute("PRAGMA secure_delete=ON")
        except BaseException:
            self.db.close()
            raise

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self.db.execute(sql, params).fetchall()

    @contextmanager
    def transaction(self, *, migrating: bool = False) -> Iterator[None]:
        # IMMEDIATE: the write lock first (waiting for it up to the busy timeout), so two
        # connections never deadlock upgrading a read lock.
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def columns(self, table: str) -> set[str]:
        return {str(row[1]) for row in self.db.execute(f"PRAGMA table_info({table})")}

    def scrub(self, *, vacuum: bool) -> None:
        """Move the log's pages into the file and empty it (deleted words lived there too)."""
        if self.path == ":memory:":
            return
        if vacuum:
            self.db.execute("VACUUM")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        self.db.close()


class _Postgres(_Backend):
    name = "postgresql"
    types = {"real": "DOUBLE PRECISION", "serial": "BIGSERIAL PRIMARY KEY"}

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError as error:  # a dependency: only a broken install lacks it
            raise StoreError(
                "a PostgreSQL store needs psycopg: pip install 'psycopg[binary]'"
            ) from error
        self._psycopg = psycopg
        self.errors = (psycopg.Error,)
        self.url = url
        self.conn: Any = None
        self.ensure_connected()

    def ensure_connected(self) -> None:
        if self.conn is not None and not self.conn.closed:
            return
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.conn = self._psycopg.connect(
            self.url, autocommit=True, connect_timeout=10, application_name="voicebot"
        )

    def lost(self, error: Exception) -> bool:
        return isinstance(error, self._psycopg.OperationalError) and (
            self.conn is None or self.conn.closed
        )

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        # psycopg's placeholders are %s, and a literal % is written %%.
        cursor = self.conn.execute(sql.replace("%", "%%").replace("?", "%s"), params)
        return cursor.fetchall() if cursor.description is not None else []

    @contextmanager
    def transaction(self, *, migrating: bool = False) -> Iterator[None]:
        with self.conn.transaction():
            if migrating:  # one replica migrates, the others wait and find it done
                self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_MIGRATION_LOCK,))
            yield

    def columns(self, table: str) -> set[str]:
        rows = self.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ?",
            (table,),
        )
        return {str(row[0]) for row in rows}

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


# ----------------------------------------------------------------------------- migrations


@dataclass(frozen=True)
class Migration:
    """One numbered change of the schema."""

    version: int
    """Its number: applied in order, each once."""
    description: str
    """What it changes (kept in ``schema_version``)."""
    steps: tuple[str | Callable[[_Backend], None], ...]
    """SQL statements (``{real}`` and ``{serial}`` are the dialect's column types) or
    functions given the connection."""


# Columns that versions before schema_version added to their tables when missing: a SQLite
# store made by one of them may lack some; migration 1 adds them.
_LEGACY_COLUMNS = (
    ("timers", "paused_s", "{real}"),
    ("turns", "feedback", "TEXT"),
    ("turns", "correction", "TEXT"),
    ("conversations", "for_training", "INTEGER NOT NULL DEFAULT 1"),
)


def _add_legacy_columns(backend: _Backend) -> None:
    for table, column, kind in _LEGACY_COLUMNS:
        if column not in backend.columns(table):
            backend.execute(
                f"ALTER TABLE {table} ADD COLUMN {column} {kind.format(**backend.types)}"
            )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "conversations, turns, timers and facts (the schema before versioning)",
        (
            # IF NOT EXISTS: a store made before schema_version has some of these already.
            """CREATE TABLE IF NOT EXISTS conversations (
                id TEXT PRIMARY KEY,
                profile TEXT NOT NULL,
                created_at {real} NOT NULL,
                updated_at {real} NOT NULL,
                -- 0: the profile had training data switched off (never exported).
                for_training INTEGER NOT NULL DEFAULT 1
            )""",
            """CREATE TABLE IF NOT EXISTS turns (
                id {serial},
                conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
                role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
                text TEXT NOT NULL,
                created_at {real} NOT NULL,
                interrupted INTEGER NOT NULL DEFAULT 0,
                metrics TEXT NOT NULL DEFAULT '{{}}',
                -- The user's rating of an assistant turn ('good' or 'bad'), what it should
                -- have said.
                feedback TEXT,
                correction TEXT
            )""",
            "CREATE INDEX IF NOT EXISTS turns_by_conversation ON turns(conversation_id, id)",
            """CREATE TABLE IF NOT EXISTS timers (
                id TEXT PRIMARY KEY,
                conversation_id TEXT NOT NULL,
                name TEXT NOT NULL DEFAULT '',
                seconds {real} NOT NULL,
                started_at {real} NOT NULL,
                ends_at {real} NOT NULL,
                state TEXT NOT NULL DEFAULT 'running'
                    CHECK (state IN ('running', 'finished', 'cancelled')),
                paused_s {real}
            )""",
            "CREATE INDEX IF NOT EXISTS timers_by_state ON timers(state, ends_at)",
            """CREATE TABLE IF NOT EXISTS facts (
                conversation_id TEXT PRIMARY KEY
                    REFERENCES conversations(id) ON DELETE CASCADE,
                facts TEXT NOT NULL,
                updated_at {real} NOT NULL
            )""",
            _add_legacy_columns,
        ),
    ),
    Migration(
        2,
        "conversations indexed by their last activity (history list, retention)",
        ("CREATE INDEX IF NOT EXISTS conversations_by_activity ON conversations(updated_at)",),
    ),
)
"""The schema, in order. Append a new one to change it; never edit one that has shipped."""

_SCHEMA_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at {real} NOT NULL
)"""


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
    """Conversations and turns in a SQLite file (WAL mode) or a PostgreSQL database, safe
    across threads: one connection per store, used under a lock."""

    def __init__(self, location: str | Path, *, keep_days: float = 0.0) -> None:
        """Open (or create) the store, migrating its schema to this version's.

        Args:
            location: A SQLite file (``:memory:`` for a throwaway one), or a PostgreSQL URL
                (``postgresql://user:password@host:5432/voicebot``).
            keep_days: Delete conversations inactive for longer than this, now and then
                daily while open (0 keeps them forever).

        Raises:
            StoreError: the file cannot be opened, the server cannot be reached, or the
                schema is newer than this version knows.
        """
        text = str(location)
        self._secrets = _secrets_of(text) if is_postgres_url(text) else []
        self.location = redact_url(text) if is_postgres_url(text) else text
        """The file, or the URL without its password: what may be shown."""
        self.path = self.location
        """The same as :attr:`location` (the name from when it was always a file)."""
        self._lock = threading.Lock()
        self._closed = False
        self._backend: _Backend
        try:
            self._backend = _Postgres(text) if is_postgres_url(text) else _SQLite(text)
        except StoreError:
            raise
        except Exception as error:  # sqlite3, OSError or psycopg: all say why
            raise StoreError(
                f"cannot open the conversation store {self.location}: {self._said(error)}"
            ) from None
        try:
            self._migrate()
        except BaseException:
            self._backend.close()
            raise
        self.keep_days = keep_days
        """Retention in days (0: forever)."""
        self._purged_at = 0.0
        self.purge_expired()

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._backend.name

    @property
    def schema_version(self) -> int:
        """The number of the last migration applied."""
        return int(self._run("SELECT COALESCE(MAX(version), 0) FROM schema_version")[0][0])

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._backend.close()

    def _said(self, error: BaseException) -> str:
        """What went wrong, with no password in it."""
        message = " ".join(str(error).split()) or type(error).__name__
        for secret in self._secrets:
            message = message.replace(secret, "***")
        return message

    def _attempt(self, work: Callable[[], Any], *, opening: bool = False) -> Any:
        """Run ``work`` under the lock; a dropped server connection is reopened once."""
        with self._lock:
            if self._closed:
                raise StoreError(f"the conversation store {self.location} is closed")
            for attempt in (1, 2):
                try:
                    self._backend.ensure_connected()
                    return work()
                except StoreError:
                    raise
                except self._backend.errors as error:
                    if not self._backend.lost(error):
                        doing = (
                            "cannot open the conversation store"
                            if opening
                            else "conversation store error in"
                        )
                        raise StoreError(f"{doing} {self.location}: {self._said(error)}") from None
                    if attempt == 2:
                        raise StoreError(
                            f"lost the connection to the conversation store {self.location} "
                            f"and could not reconnect: {self._said(error)}"
                        ) from None
                    # Reconnect, once: a restarted server, an idle connection cut by a proxy.
                    # A statement sent just as the connection broke is sent again.
        raise AssertionError("unreachable")  # pragma: no cover

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """One statement, its own transaction."""
        return self._attempt(lambda: self._backend.execute(sql, params))  # type: ignore[no-any-return]

    def _run_all(
        self, statements: list[tuple[str, tuple[Any, ...]]]
    ) -> list[list[tuple[Any, ...]]]:
        """Several statements in one transaction; the rows of each."""

        def work() -> list[list[tuple[Any, ...]]]:
            with self._backend.transaction():
                return [self._backend.execute(sql, params) for sql, params in statements]

        return self._attempt(work)  # type: ignore[no-any-return]

    def _migrate(self) -> None:
        """Apply the missing migrations, in order, in one transaction."""
        backend = self._backend

        def work() -> None:
            with backend.transaction(migrating=True):
                backend.execute(_SCHEMA_VERSION_TABLE.format(**backend.types))
                current = int(
                    backend.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")[0][0]
                )
                known = MIGRATIONS[-1].version if MIGRATIONS else 0
                if current > known:
                    raise StoreError(
                        f"the conversation store {self.location} has schema version {current}, "
                        f"made by a newer voicebot (this one knows up to {known}): upgrade "
                        "voicebot to open it"
                    )
                for migration in MIGRATIONS:
                    if migration.version <= current:
                        continue
                    for step in migration.steps:
                        if isinstance(step, str):
                            backend.execute(step.format(**backend.types))
                        else:
                            step(backend)
                    backend.execute(
                        "INSERT INTO schema_version (version, description, applied_at) "
                        "VALUES (?, ?, ?)",
                        (migration.version, migration.description, time.time()),
                    )

        self._attempt(work, opening=True)

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
        inserted, _ = self._run_all(
            [
                (
                    "INSERT INTO turns "
                    "(conversation_id, role, text, created_at, interrupted, metrics) "
                    "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                    (
                        conversation_id,
                        turn.role,
                        turn.text,
                        turn.created_at,
                        int(turn.interrupted),
                        json.dumps(turn.metrics_ms),
                    ),
                ),
                (
                    "UPDATE conversations SET updated_at = ? WHERE id = ?",
                    (turn.created_at, conversation_id),
                ),
            ]
        )
        if self.keep_days > 0 and time.time() - self._purged_at > _DAY_S:
            self.purge_expired()
        return int(inserted[0][0])

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

    def end_timer(self, timer_id: str, state: str, *, due_by: float | None = None) -> bool:
        """Move a running timer to ``finished`` or ``cancelled``.

        Args:
            timer_id: The timer.
            state: ``finished`` or ``cancelled``.
            due_by: Only if the stored timer is due by this Unix time and not paused: a
                process whose copy is stale (paused or lengthened by another replica) does
                not end it.

        Returns:
            False when it was not running (already ended, by this process or another one
            sharing the store) or, with ``due_by``, not due: whoever moves it first announces it.
        """
        sql = "UPDATE timers SET state = ? WHERE id = ? AND state = 'running'"
        params: tuple[Any, ...] = (state, timer_id)
        if due_by is not None:
            sql += " AND paused_s IS NULL AND ends_at <= ?"
            params += (due_by,)
        rows = self._run(sql + " RETURNING id", params)
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
            f"FROM conversations c {where} ORDER BY c.updated_at DESC"
            + (" LIMIT ?" if limit >= 0 else ""),
            (*params, limit) if limit >= 0 else params,
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
        False when there was none. In a SQLite file the freed pages are zeroed and the
        write-ahead log emptied, so the words are gone from the files too (PostgreSQL leaves
        the dead rows' bytes in its files until it reuses the space: docs/learning.md)."""
        deleted, _ = self._run_all(
            [
                ("DELETE FROM conversations WHERE id = ? RETURNING id", (conversation_id,)),
                # turns and facts go with it (ON DELETE CASCADE); timers are keyed, not linked.
                ("DELETE FROM timers WHERE conversation_id = ?", (conversation_id,)),
            ]
        )
        self._scrub()
        return bool(deleted)

    def delete_all(self) -> int:
        """Delete every conversation (and its turns, facts and timers); returns how many."""
        deleted, *_ = self._run_all(
            [
                ("DELETE FROM conversations RETURNING id", ()),
                ("DELETE FROM turns", ()),
                ("DELETE FROM facts", ()),
                ("DELETE FROM timers", ()),
            ]
        )
        self._scrub(vacuum=True)
        return len(deleted)

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
        """Make the deleted words unreadable in the database's files (SQLite only)."""
        self._attempt(lambda: self._backend.scrub(vacuum=vacuum))
