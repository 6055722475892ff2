"""Tampering in tests: the append-only guard taken out of the way, as someone with the file would.

The guard (schema version 5 on SQLite, 3 on PostgreSQL: triggers named ``audit_guard_*``) stops
accidents from other tools, not someone who can write the database: they drop the triggers or
disable them, change the rows, and put the guard back. Tests that simulate such a forger do the
same through :func:`unguarded`, so what they show — verify catches the change — holds against
the attacker the docs describe, not only against a tool that met the guard.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from typing import Any

GUARDED = (
    "audit_entries",
    "audit_anchors",
    "audit_cleanup_runs",
    "audit_checkpoints",
    "audit_chain_versions",
    "audit_engine_meta",  # its trail_id row
)


def _pg_tables(conn: Any) -> list[str]:
    """The guarded tables along the connection's search_path (none before the trail exists)."""
    found = conn.execute(
        "SELECT name FROM unnest(%s::text[]) AS name WHERE to_regclass(name) IS NOT NULL",
        (list(GUARDED),),
    ).fetchall()
    return [name for (name,) in found]


@contextlib.contextmanager
def unguarded(conn: Any) -> Iterator[None]:
    """The guard lifted on ``conn`` (``sqlite3`` or ``psycopg``) for the block, in one transaction.

    On SQLite the ``audit_guard_*`` triggers are dropped and created again from their stored
    text; a transaction is begun first if none is open, and committed at the end if it was
    begun here (else the caller commits). On PostgreSQL the tables' triggers are disabled and
    enabled again in the caller's transaction (the tables' owner may; psycopg commits it).
    """
    if not isinstance(conn, sqlite3.Connection):
        for table in _pg_tables(conn):
            conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        yield
        for table in _pg_tables(conn):  # the block may have dropped one
            conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
        return
    began = not conn.in_transaction
    if began:
        conn.execute("BEGIN IMMEDIATE")
    triggers = conn.execute(
        "SELECT name, tbl_name, sql FROM sqlite_master "
        "WHERE type = 'trigger' AND name LIKE 'audit_guard_%'"
    ).fetchall()
    for name, _, _ in triggers:
        conn.execute(f'DROP TRIGGER "{name}"')
    try:
        yield
    except BaseException:
        if began:
            conn.execute("ROLLBACK")
        raise
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    for _, table, sql in triggers:
        if table in tables:  # the block may have dropped one
            conn.execute(sql)
    if began:
        conn.execute("COMMIT")


def tamper(database: Any, *statements: str | tuple[str, Any]) -> None:
    """Run ``statements`` on the SQLite file ``database`` with the guard lifted, committed."""
    with contextlib.closing(sqlite3.connect(database)) as conn, unguarded(conn):
        for statement in statements:
            sql, params = (statement, ()) if isinstance(statement, str) else statement
            conn.execute(sql, params)
