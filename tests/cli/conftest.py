"""Fixtures of the command tests: ``cli`` runs a command against the test's database and checks
its exit code (and that no traceback escaped); ``trail`` fills and reads that database through the
library, the way an application would have written it.

Both run every test on both backends: ``database`` is a SQLite file (``db_path``) or a fresh
PostgreSQL database (``pg_url``). A test about SQLite's files (modes, -wal, locks, foreign files)
runs on SQLite only: it says so with ``@pytest.mark.sqlite_only``, or by asking for ``db_path``
(or a fixture built on it, such as ``conn`` or ``dl_path``) itself.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from pgcluster import PgCluster
from tamper import unguarded

from audit_engine import AuditEntry, AuditService, AuditSettings, AuditStore
from audit_engine.cli import main
from audit_engine.cli.output import deadletter_file
from audit_engine.settings import is_database_url
from audit_engine.storage.chain import ChainHead

BACKENDS = ("sqlite", "postgres")
_schemas = itertools.count(1)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only: a command test about SQLite's files, run on SQLite only"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test on the ``database`` fixture runs once per backend, unless it is SQLite's own.

    Chosen at collection, so a SQLite-only test has no PostgreSQL variant at all (rather than a
    skipped one: PostgreSQL tests never skip).
    """
    if "database" not in metafunc.fixturenames:
        return
    sqlite_only = (
        "db_path" in metafunc.fixturenames
        or metafunc.definition.get_closest_marker("sqlite_only") is not None
    )
    metafunc.parametrize("database", BACKENDS[:1] if sqlite_only else BACKENDS, indirect=True)


@pytest.fixture
def database(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path | str:
    """The test's audit database: a SQLite file path or a PostgreSQL URL (see the module doc).

    A URL's dead-letter file defaults to the user's data directory: point that at the test's
    own directory, so no test writes into the home of whoever runs it.
    """
    if request.param == "sqlite":
        path: Path = request.getfixturevalue("db_path")
        return path
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    url: str = request.getfixturevalue("pg_schema_url")
    return url


@pytest.fixture(scope="session")
def pg_cli_database(pg_cluster: PgCluster) -> str:
    """One database for all command tests; each test gets a schema of its own in it."""
    return pg_cluster.create_database()


@pytest.fixture
def pg_schema_url(pg_cli_database: str) -> Iterator[str]:
    """A URL whose connections work in a fresh, empty schema (the engine's tables go to the
    connection's current schema), dropped after the test.

    A schema costs milliseconds where a fresh database costs most of a second: this keeps the
    PostgreSQL half of some 200 command tests fast.
    """
    schema = f"cli_{next(_schemas)}"
    with psycopg.connect(pg_cli_database, autocommit=True) as pg:
        pg.execute(f"CREATE SCHEMA {schema}")
    yield f"{pg_cli_database}?options=-csearch_path%3D{schema}"
    with psycopg.connect(pg_cli_database, autocommit=True) as pg:
        pg.execute(f"DROP SCHEMA {schema} CASCADE")


@dataclass
class Cli:
    """``cli.run("query", "--actor", "alice")`` is ``audit-engine --db <test db> query ...``."""

    runner: CliRunner
    database: Path | str

    def run(
        self,
        *args: str,
        code: int | None = 0,
        input: str | bytes | None = None,
        env: Mapping[str, str | None] | None = None,
        db: bool = True,
    ) -> Result:
        """Run the command; assert its exit ``code`` (unless None) and that no traceback escaped."""
        argv = ["--db", str(self.database), *args] if db else list(args)
        result = self.runner.invoke(main, argv, input=input, env=env, prog_name="audit-engine")
        assert code is None or result.exit_code == code, (
            f"exit code {result.exit_code}, expected {code}\n--- output:\n{result.output}"
        )
        # CliRunner keeps an escaped exception in result.exception; click's own exits are
        # SystemExit. Anything else would have been a traceback for the user.
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            f"uncaught {result.exception!r}\n--- output:\n{result.output}"
        )
        assert "Traceback" not in result.output
        return result


@dataclass
class Trail:
    """The test's audit database, written and read through the library."""

    database: Path | str

    @property
    def is_postgres(self) -> bool:
        return is_database_url(self.database)

    def init(self) -> None:
        """An empty audit database."""
        AuditStore(self.database, create=True).close()

    def record(self, *entries: Mapping[str, Any]) -> list[str]:
        """Record ``entries`` (fields of AuditEntry, timestamps allowed) and wait until written."""
        settings = AuditSettings(database=self.database, level="all", cleanup_enabled=False)
        with AuditService(settings) as audit:
            ids = [audit.record(**dict(entry)) for entry in entries]
        assert all(ids), ids
        assert audit.stats().written == len(entries)
        return [str(event_id) for event_id in ids]

    @property
    def dead_letter_file(self) -> Path:
        """Where the engine keeps what it could not commit to this trail."""
        return deadletter_file(self.database)

    def exists(self) -> bool:
        """Whether the trail was created: the SQLite file, or the engine's tables on the server."""
        if isinstance(self.database, Path):
            return self.database.exists()
        with psycopg.connect(self.database) as pg:
            found = pg.execute("SELECT to_regclass('audit_engine_meta')").fetchone()
        return found is not None and found[0] is not None

    def refuse_inserts(self) -> None:
        """Make the trail refuse every new row with 'no more rows' (a trigger), as a locked-down
        or broken database would."""
        self.init()
        if isinstance(self.database, Path):
            self.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON audit_entries "
                "BEGIN SELECT RAISE(ABORT, 'no more rows'); END"
            )
            return
        self.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'no more rows'; END $$"
        )
        self.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON audit_entries "
            "FOR EACH ROW EXECUTE FUNCTION refuse()"
        )

    def entries(self) -> list[AuditEntry]:
        with AuditStore(self.database) as audit_store:
            return list(audit_store.query())

    def actions(self) -> list[str]:
        return [entry.action for entry in self.entries()]

    def head(self) -> ChainHead:
        with AuditStore(self.database) as audit_store:
            head = audit_store.head()
        assert head is not None
        return head

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Change the trail behind the engine's back, as someone with write access could.

        ``sql`` is written for SQLite; on PostgreSQL ``?`` becomes ``%s`` and a write of
        ``details`` goes to ``details_text``, the hashed text its jsonb column is generated from.
        The append-only guard is lifted for it, as such a person can (tests/tamper.py).
        """
        if isinstance(self.database, Path):
            with contextlib.closing(sqlite3.connect(self.database)) as conn, unguarded(conn):
                conn.execute(sql, params)
            return
        pg_sql = re.sub(r"\bSET details =", "SET details_text =", sql).replace("?", "%s")
        with psycopg.connect(self.database) as pg, unguarded(pg):  # commits on a clean exit
            pg.execute(pg_sql, tuple(params))


@pytest.fixture
def cli(database: Path | str) -> Cli:
    return Cli(CliRunner(), database)


@pytest.fixture
def trail(database: Path | str) -> Trail:
    return Trail(database)


@pytest.fixture
def notes(trail: Trail) -> Trail:
    """Four entries of a notes tool, three days, two hours and one minute old (two of them)."""
    now = datetime.now(UTC)
    trail.record(
        {
            "action": "note.create",
            "actor": "alice",
            "operation": "create",
            "resource_type": "note",
            "resource_id": "n1",
            "correlation_id": "req-1",
            "timestamp": now - timedelta(days=3),
            "details": {"title": "plan", "tags": ["q3"]},
        },
        {
            "action": "note.open",
            "actor": "bob",
            "operation": "read",
            "resource_type": "note",
            "resource_id": "n1",
            "correlation_id": "req-2",
            "timestamp": now - timedelta(hours=2),
        },
        {
            "action": "note.delete",
            "actor": "alice",
            "operation": "delete",
            "outcome": "failure",
            "resource_type": "note",
            "resource_id": "n2",
            "correlation_id": "req-3",
            "timestamp": now - timedelta(minutes=1),
            "critical": True,
        },
        {
            "action": "user.login",
            "actor": "carol",
            "resource_type": "session",
            "resource_id": "s9",
            "correlation_id": "req-3",
            "timestamp": now - timedelta(minutes=1),
        },
    )
    return trail
