"""What differs between the backends' SQL and transactions, in one place.

The shared storage code — retention, anchors, replay, the summary and :class:`AuditStore` — is
written once, in the SQL both SQLite and PostgreSQL speak, with ``?`` parameters. It runs on a
*trail connection*: either a plain :class:`sqlite3.Connection`, or an object that fulfils
:class:`TrailConnection` (PostgreSQL's :class:`~audit_engine.storage.postgres.PgTrail`, which
turns ``?`` into psycopg's ``%s``). The few things the SQL cannot say the same way go through the
functions below, which are the only places that tell the two apart:

- transactions: :func:`begin_write` (SQLite's ``BEGIN IMMEDIATE``; PostgreSQL's ``BEGIN`` plus
  the chain's advisory lock), :func:`begin_read` (one snapshot), :func:`commit`,
  :func:`rollback_quietly`;
- the stored row as the chain hashes it (:class:`Dialect`: PostgreSQL keeps the hashed text of
  ``details`` beside its ``jsonb`` column), a day of a timestamp;
- streaming a large read (PostgreSQL needs a server-side cursor for flat memory);
- the chained insert used outside the writer (replay, copy): :func:`write_rows`;
- the purge's marker, which lets its transaction past the append-only guard:
  :func:`mark_purge`, :func:`unmark_purge`;
- errors: :data:`DATABASE_ERRORS` and :func:`is_busy`.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

from audit_engine.columns import STORED_COLUMNS
from audit_engine.errors import AuditEngineError
from audit_engine.rows import Row
from audit_engine.storage.base import Tail
from audit_engine.storage.linker import Linker
from audit_engine.storage.sqlite import append
from audit_engine.storage.sqlite.schema import is_busy as _sqlite_busy
from audit_engine.storage.sqlite.schema import rollback_quietly as _sqlite_rollback

__all__ = [
    "DATABASE_ERRORS",
    "SQLITE",
    "AnyConnection",
    "BackendError",
    "Dialect",
    "TrailConnection",
    "begin_read",
    "begin_write",
    "commit",
    "dialect_of",
    "is_busy",
    "mark_purge",
    "rollback_quietly",
    "stream",
    "unmark_purge",
    "write_rows",
]


class BackendError(AuditEngineError):
    """A database error of a backend other than SQLite, raised by its trail connection.

    ``busy`` says whether trying again later may succeed (a lock, a dropped connection, a
    server shutting down); the message is the driver's, without credentials.
    """

    def __init__(self, message: str, *, busy: bool = False, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.busy = busy
        self.sqlstate = sqlstate


#: What the shared code catches as "the database said no" (never a misuse such as a closed store).
DATABASE_ERRORS: tuple[type[Exception], ...] = (sqlite3.DatabaseError, BackendError)


@dataclass(frozen=True)
class Dialect:
    """The SQL that differs between backends."""

    name: str
    #: The stored fields (:data:`~audit_engine.columns.STORED_COLUMNS`) as the chain hashes them.
    fields: str
    #: An expression of an entry's UTC day, as ``YYYY-MM-DD`` text.
    day: str

    @property
    def stored_row(self) -> str:
        """The select list of a stored row: id, the fields, prev_hash, hash."""
        return f"id, {self.fields}, prev_hash, hash"


SQLITE = Dialect(name="sqlite", fields=", ".join(STORED_COLUMNS), day="substr(timestamp, 1, 10)")


class TrailConnection(Protocol):
    """A connection of another backend, speaking the shared SQL (``?`` parameters)."""

    dialect: Dialect
    #: The schema version of the trail's tables.
    schema_version: int

    @property
    def in_transaction(self) -> bool: ...

    def tail(self) -> Tail:
        """The chain's tail (the newest row, else the newest anchor, else genesis)."""
        ...

    def size_bytes(self) -> int:
        """What the trail takes on disk."""
        ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any: ...

    def stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]: ...

    def begin_write(self) -> None: ...

    def begin_read(self) -> None: ...

    def commit(self) -> None: ...

    def rollback_quietly(self) -> None: ...

    def write_rows(self, rows: Sequence[Row], linker: Linker = ...) -> Tail: ...

    def close(self) -> None: ...


AnyConnection: TypeAlias = sqlite3.Connection | TrailConnection


def dialect_of(conn: AnyConnection) -> Dialect:
    return SQLITE if isinstance(conn, sqlite3.Connection) else conn.dialect


def begin_write(conn: AnyConnection) -> None:
    """Start a transaction that may extend the chain: no other writer can move its tail."""
    if isinstance(conn, sqlite3.Connection):
        conn.execute("BEGIN IMMEDIATE")
    else:
        conn.begin_write()


def begin_read(conn: AnyConnection) -> None:
    """Start a read-only transaction: every statement in it sees one snapshot."""
    if isinstance(conn, sqlite3.Connection):
        conn.execute("BEGIN")
    else:
        conn.begin_read()


def commit(conn: AnyConnection) -> None:
    if isinstance(conn, sqlite3.Connection):
        conn.execute("COMMIT")
    else:
        conn.commit()


def rollback_quietly(conn: AnyConnection) -> None:
    """Roll back the open transaction, if any; an error the rollback meets is ignored."""
    if isinstance(conn, sqlite3.Connection):
        _sqlite_rollback(conn)
    else:
        conn.rollback_quietly()


@contextlib.contextmanager
def snapshot(conn: AnyConnection) -> Iterator[None]:
    """One read transaction around the block (none if one is open already)."""
    if conn.in_transaction:
        yield
        return
    begin_read(conn)
    try:
        yield
    finally:
        commit(conn)


def stream(conn: AnyConnection, sql: str, params: Sequence[Any] = ()) -> Iterator[Any]:
    """The rows of ``sql``, fetched as they are iterated (memory does not grow with the rows)."""
    if isinstance(conn, sqlite3.Connection):
        return iter(conn.execute(sql, params))
    return conn.stream(sql, params)


def write_rows(conn: AnyConnection, rows: Sequence[Row]) -> Tail:
    """Append ``rows`` to the chain in one transaction of their own; returns the new tail."""
    if isinstance(conn, sqlite3.Connection):
        return append.write_batch(conn, rows)
    return conn.write_rows(rows)


# The append-only guard (schema version 5 on SQLite, 3 on PostgreSQL) lets a transaction delete
# entries and move its anchor only while the purge's marker is set: a row of this table on
# SQLite, a transaction-local setting on PostgreSQL.
PURGE_MARKER_TABLE = "audit_engine_purge"
PURGE_SETTING = "audit_engine.purge"


def mark_purge(conn: AnyConnection) -> None:
    """Set the purge's marker, in the open write transaction (:func:`begin_write`).

    On SQLite a row inserted here and deleted by :func:`unmark_purge` before the commit: other
    connections never see it (they see committed rows only, and no other writer runs meanwhile).
    On PostgreSQL ``SET LOCAL``, which the transaction's end resets by itself.
    """
    if isinstance(conn, sqlite3.Connection):
        conn.execute(f"INSERT INTO {PURGE_MARKER_TABLE} (purging) VALUES (1)")
    else:
        conn.execute("SELECT set_config(?, 'on', true)", (PURGE_SETTING,))


def unmark_purge(conn: AnyConnection) -> None:
    """Clear the purge's marker before the transaction commits (a rollback clears it too)."""
    if isinstance(conn, sqlite3.Connection):
        conn.execute(f"DELETE FROM {PURGE_MARKER_TABLE}")


def is_busy(exc: BaseException) -> bool:
    """Whether ``exc`` says the database is busy (trying again later may succeed)."""
    if isinstance(exc, BackendError):
        return exc.busy
    return _sqlite_busy(exc)
