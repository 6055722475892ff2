"""A forger's connection for the scenarios: someone who can write the database, guard or not.

The append-only guard (docs/integrity.md) stops accidents, not someone with the file or the
tables' owner: they take it out of the way. :func:`forger_connection` does what they would, in
one transaction that also puts the guard back, so the trail looks untouched apart from what the
forger changed: SQLite drops the ``audit_guard_*`` triggers and creates them again from their
stored text; PostgreSQL disables the tables' own triggers and enables them again (the owner
may; both are transactional there).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from trail_backend import WAIT_S, Database, ServerConnection

# The stored fields the chain hashes, between id and prev_hash (docs/integrity.md).
FIELDS = (
    "event_id, timestamp, actor, action, operation, outcome, resource_type, resource_id, "
    "correlation_id, details, critical"
)

_GUARDED = (
    "audit_entries",
    "audit_anchors",
    "audit_cleanup_runs",
    "audit_checkpoints",
    "audit_chain_versions",
)


@contextlib.contextmanager
def forger_connection(database: Database) -> Iterator[Any]:
    """A connection whose statements (``?`` placeholders, ``details`` the hashed text) run in
    one committed transaction with the guard out of the way; rolled back if the block raises."""
    if isinstance(database, str):
        server = ServerConnection(database)
        try:
            with server:
                for table in _GUARDED:
                    server.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
                yield server
                for table in _GUARDED:
                    server.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
        finally:
            server.close()
        return
    conn = sqlite3.connect(database, isolation_level=None, timeout=WAIT_S)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            triggers = conn.execute(
                "SELECT name, sql FROM sqlite_master "
                "WHERE type = 'trigger' AND name LIKE 'audit_guard_%'"
            ).fetchall()
            for name, _ in triggers:
                conn.execute(f'DROP TRIGGER "{name}"')
            yield conn
            for _, sql in triggers:
                conn.execute(sql)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()


def relink(
    conn: Any, first_id: int, prev_hash: str, digest: Callable[[Sequence[Any]], str]
) -> None:
    """Give every entry from ``first_id`` on a new link, chained from ``prev_hash``, as a careful
    forger recomputes the chain: ``digest(id, fields..., prev_hash)`` is the hash it writes (the
    documented unkeyed hash, or an HMAC under a key of the forger's own)."""
    rows = conn.execute(
        f"SELECT id, {FIELDS} FROM audit_entries WHERE id >= ? ORDER BY id", (first_id,)
    ).fetchall()
    for row in rows:
        new_hash = digest((*row, prev_hash))
        conn.execute(
            "UPDATE audit_entries SET prev_hash = ?, hash = ? WHERE id = ?",
            (prev_hash, new_hash, row[0]),
        )
        prev_hash = new_hash
