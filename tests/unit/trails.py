"""Raw SQL on a test's trail, on either backend: what an attacker with write access (or another
tool) does behind the engine's back. ``database`` is a SQLite path or a ``postgresql://`` URL, as
the ``trail_db`` fixture gives it; statements use ``?`` parameters on both.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from tamper import unguarded

from audit_engine import AuditEntry
from audit_engine.rows import entry_row
from audit_engine.storage import backends, dialect
from audit_engine.storage.postgres.connection import PG, connect, pg_sql

Statement = str | tuple[str, Sequence[Any]]


def is_pg(database: Path | str) -> bool:
    return isinstance(database, str)


def details_column(database: Path | str) -> str:
    """The column that holds the hashed text of ``details``."""
    return "details_text" if is_pg(database) else "details"


def stored_row(database: Path | str) -> str:
    """The select list of a stored row as the chain hashes it (id, fields, prev_hash, hash)."""
    return (PG if is_pg(database) else dialect.SQLITE).stored_row


def query(database: Path | str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """The rows of ``sql``; on PostgreSQL through the engine's connection, so timestamps come
    back as the engine's text and booleans as 0/1, as on SQLite."""
    if is_pg(database):
        with connect(str(database)) as conn:
            return conn.execute(pg_sql(sql), tuple(params)).fetchall()
    with contextlib.closing(sqlite3.connect(database)) as sqlite_conn:
        return sqlite_conn.execute(sql, params).fetchall()


def execute(database: Path | str, *statements: Statement) -> None:
    """Run ``statements`` in one committed transaction, with the append-only guard out of the
    way (as someone who can write the database would take it: see tests/tamper.py)."""
    pairs = [(s, ()) if isinstance(s, str) else s for s in statements]
    if is_pg(database):
        with psycopg.connect(str(database)) as conn, unguarded(conn):  # commits on a clean exit
            for sql, params in pairs:
                conn.execute(pg_sql(sql), tuple(params))
        return
    with contextlib.closing(sqlite3.connect(database)) as sqlite_conn, unguarded(sqlite_conn):
        for sql, params in pairs:
            sqlite_conn.execute(sql, params)


def create(database: Path | str) -> None:
    """Create the engine's (empty) trail."""
    backends.open_trail(database, create=True).close()


def write(database: Path | str, entries: Sequence[AuditEntry]) -> tuple[int, str]:
    """Append ``entries`` to the chain in one transaction (created if need be); the new tail."""
    conn = backends.open_trail(database, create=True)
    try:
        return dialect.write_rows(conn, [entry_row(entry) for entry in entries])
    finally:
        conn.close()


__all__ = ["create", "details_column", "execute", "is_pg", "query", "stored_row", "write"]


def chain_key_file(directory: Path, *keys: str, name: str = "chain.key") -> Path:
    """A chain key file holding ``keys`` (hex, the first writes), readable by its owner only."""
    path = directory / name
    path.write_text("".join(f"{key}\n" for key in keys))
    path.chmod(0o600)
    return path
