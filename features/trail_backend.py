"""The scenarios' view of a trail on either backend, as another program would see it.

``behave -D backend=postgres`` runs every scenario against a throwaway PostgreSQL server
(``tests/pgcluster.py``, the one the pytest suite uses); each scenario then gets a fresh database
whose URL stands where the SQLite path stood. The helpers here read and write that trail without
going through the service under test: plain ``sqlite3`` on a file, plain psycopg on a URL.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from audit_engine.rows import Row
from audit_engine.storage import backends, dialect
from audit_engine.storage.postgres.connection import connect as pg_connect
from audit_engine.storage.postgres.connection import lock_chain, pg_sql
from audit_engine.storage.postgres.schema import table_oid

SQLITE = "sqlite"
POSTGRES = "postgres"
BACKENDS = (SQLITE, POSTGRES)
# The tag of a scenario that is about the SQLite file itself (its bytes, locks, modes).
SQLITE_ONLY = "sqlite_only"
# The tag of a feature about the team's PostgreSQL server: it gets a database there on any run.
TEAM_SERVER = "team_server"
TESTS_DIR = Path(__file__).resolve().parent.parent / "tests"
WAIT_S = 10.0

Database = Path | str
# The column a step's SQL calls ``details``: on PostgreSQL the hashed text is ``details_text``
# (``details`` there is the jsonb the server derives from it).
_DETAILS = re.compile(r"\bdetails\b")


def chosen_backend(userdata: Any) -> str:
    """The backend named by ``-D backend=...`` (SQLite when not given); a clear error otherwise."""
    backend = str(userdata.get("backend", SQLITE)).strip().lower()
    if backend not in BACKENDS:
        raise ValueError(
            f"-D backend={backend!r} is not a backend: say one of {', '.join(BACKENDS)}"
        )
    return backend


def start_cluster() -> Any:
    """Start a throwaway PostgreSQL cluster (tests/pgcluster.py) and return it."""
    # tests/ is not a package on sys.path when behave runs; pgcluster imports nothing of pytest.
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    # Imported here: tests/ joins sys.path only on a run that needs the server.
    from pgcluster import PgCluster

    return PgCluster().start()


def query(database: Database, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` (``?`` placeholders) on a fresh connection: only what is committed.

    On a URL the connection loads timestamps and flags in their stored text form (as SQLite
    keeps them), so a step reads the same values on either backend.
    """
    if isinstance(database, str):
        with contextlib.closing(pg_connect(database)) as pg:
            return pg.execute(pg_sql(sql), tuple(params)).fetchall()
    with contextlib.closing(sqlite3.connect(database, timeout=WAIT_S)) as conn:
        return conn.execute(sql, tuple(params)).fetchall()


def trail_exists(database: Database) -> bool:
    """Whether the engine has created anything: the file, or the trail's table on the server."""
    if not isinstance(database, str):
        return database.exists()
    # bool(): the engine loads a boolean as 0 or 1, as SQLite stores it.
    return bool(query(database, "SELECT to_regclass('audit_entries') IS NOT NULL")[0][0])


def _has_entries_table(database: Database) -> bool:
    # A SQLite file may be the application's own database, without the engine's tables yet.
    if not trail_exists(database):
        return False
    if isinstance(database, str):
        return True
    sql = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'audit_entries'"
    return bool(query(database, sql)[0][0])


def read_rows(database: Database, columns: Sequence[str]) -> list[dict[str, Any]]:
    """``columns`` of every stored entry in commit order, ``details`` parsed; [] without a trail."""
    if not _has_entries_table(database):
        return []
    # details_text is the exact hashed text on PostgreSQL; its jsonb column is the server's copy.
    text = "details_text AS details" if isinstance(database, str) else "details"
    selected = ", ".join(text if c == "details" else c for c in columns)
    found = query(database, f"SELECT {selected} FROM audit_entries ORDER BY id")
    rows = [dict(zip(columns, values, strict=True)) for values in found]
    for row in rows:
        if "details" in row:
            row["details"] = json.loads(row["details"])
    return rows


def count_event(database: Database, event_id: str) -> int:
    """How many stored entries carry ``event_id``, as another program sees it right now."""
    # On a server the writer creates the tables on its first connection, not at the service's start.
    if not _has_entries_table(database):
        return 0
    sql = "SELECT count(*) FROM audit_entries WHERE event_id = ?"
    return int(query(database, sql, (event_id,))[0][0])


def append_rows(database: Database, rows: Sequence[Row]) -> None:
    """Append ``rows`` to the chain in one transaction, as a writer would (creating the trail)."""
    conn = backends.open_trail(database, create=True)
    try:
        dialect.write_rows(conn, rows)
    finally:
        conn.close()


def take_write_lock(database: Database) -> Callable[[], None]:
    """Hold the trail's write lock from a connection of its own, as another program would;
    returns what releases it.

    SQLite: an exclusive transaction on the file. PostgreSQL: the chain's advisory lock, which
    every writer takes before it reads the tail (the trail is created first if need be, since
    the lock's key is the table).
    """
    if not isinstance(database, str):
        conn = sqlite3.connect(
            database, isolation_level=None, check_same_thread=False, timeout=WAIT_S
        )
        conn.execute("BEGIN EXCLUSIVE")

        def release_file() -> None:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()

        return release_file
    backends.open_trail(database, create=True).close()
    pg = pg_connect(database)
    pg.execute("BEGIN")
    lock_chain(pg, table_oid(pg))

    def release_server() -> None:
        pg.rollback()
        pg.close()

    return release_server


def writers_waiting(database: str) -> int:
    """How many sessions wait for an advisory lock on the server (a writer behind the chain's)."""
    sql = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    return int(query(database, sql)[0][0])


class ServerConnection:
    """A connection to a trail on the server that takes the steps' SQLite-style SQL, for steps
    that change the trail behind the engine's back: ``?`` placeholders, ``details`` meaning the
    hashed text, and ``with conn:`` one transaction (committed, or rolled back on an error)."""

    def __init__(self, url: str) -> None:
        self.conn = pg_connect(url)
        self._transactions: list[Any] = []

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(pg_sql(_DETAILS.sub("details_text", sql)), tuple(params))

    def __enter__(self) -> ServerConnection:
        transaction = self.conn.transaction()
        transaction.__enter__()
        self._transactions.append(transaction)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._transactions.pop().__exit__(*exc_info)

    def close(self) -> None:
        self.conn.close()


def connect(database: Database, **kwargs: Any) -> sqlite3.Connection | ServerConnection:
    """A connection of another program to the trail: ``sqlite3`` on a file, else the server."""
    if isinstance(database, str):
        return ServerConnection(database)
    return sqlite3.connect(database, check_same_thread=False, timeout=WAIT_S, **kwargs)
