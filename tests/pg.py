"""A real PostgreSQL server for the tests: initdb into a temporary directory, started once per
test run on a free loopback port (and a unix socket in that directory), stopped at the end.

`scripts/install-system-deps.sh --test` installs Debian's ``postgresql``; without it the tests
that need it fail, they never skip. initdb refuses to run as root: under root (CI) the server
runs as ``nobody``.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PASSWORD = "s3cret-pg-pw"
"""The superuser's password (TCP connections must give it: password auth is tested too)."""


def _binaries() -> Path:
    """Debian's versioned bin directory (the newest), else wherever initdb is on the PATH."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    pytest.fail("PostgreSQL is missing: run scripts/install-system-deps.sh --test")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """A throwaway PostgreSQL cluster."""

    def __init__(self) -> None:
        self.bin = _binaries()
        self.root = Path(tempfile.mkdtemp(prefix="voicebot-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.log = self.root / "server.log"
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:  # initdb and postgres refuse root
            nobody = pwd.getpwnam("nobody")
            os.chown(self.root, nobody.pw_uid, nobody.pw_gid)
            self._as = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
        self.root.chmod(0o700)
        password_file = self.root / "password"
        password_file.write_text(PASSWORD + "\n")
        if self._as:
            os.chown(password_file, self._as["user"], self._as["group"])
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            f"--pwfile={password_file}",
            "--encoding=UTF8",
            "--no-sync",
        )
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c max_connections=200"
        )
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-o", options)
        self._names = itertools.count(1)

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run(  # noqa: S603 - our own arguments
            [str(self.bin / tool), *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.root,
            env={**os.environ, "HOME": str(self.root), "LC_ALL": "C.UTF-8"},
            **self._as,
        )
        if result.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            pytest.fail(f"{tool} failed: {result.stdout}{result.stderr}{log}")

    def url(self, database: str = "postgres") -> str:
        """A URL of a database on this server, over TCP with the password."""
        return f"postgresql://postgres:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def admin(self) -> Any:
        """A superuser connection (autocommit) through the unix socket."""
        import psycopg

        return psycopg.connect(
            host=str(self.root), port=self.port, user="postgres", dbname="postgres", autocommit=True
        )

    def new_database(self) -> str:
        """A new empty database; its URL."""
        name = f"test_{next(self._names)}"
        with self.admin() as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The test run's PostgreSQL server (started on first use)."""
    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test's store lives, once per backend: a new SQLite file, and a new database
    on the test PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "voicebot.db")
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()


def query(location: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on the store at ``location`` (a SQLite file or a PostgreSQL URL), read
    on a connection of its own, outside the store."""
    if location.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(location, autocommit=True) as conn:
            cursor = conn.execute(sql)
            return cursor.fetchall() if cursor.description is not None else []
    import sqlite3

    with sqlite3.connect(location) as db:
        return db.execute(sql).fetchall()
