"""SQLite storage, the write side: the chain's tail and the guarded, chained batch insert.

With :mod:`audit_engine.storage.sqlite.schema` (the file and its schema),
:mod:`audit_engine.storage.chain` and :mod:`audit_engine.storage.store` (the read API,
:class:`AuditStore`), this is where SQL lives. Values always travel as parameters.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from typing import Any

from audit_engine.errors import AuditStoreError
from audit_engine.rows import Row
from audit_engine.storage.chain import GENESIS_HASH
from audit_engine.storage.linker import UNKEYED, Linker, ensure_version
from audit_engine.storage.sqlite.migrations import META
from audit_engine.storage.sqlite.schema import (
    ANCHORS,
    STORED_COLUMNS,
    TABLE,
    migrate,
    rollback_quietly,
)

__all__ = [
    "append_batch",
    "chain_tail",
    "chunk_ladder",
    "chunk_lengths",
    "commit_batch",
    "has_event",
    "insert_entries",
    "max_chunk",
    "write_batch",
    "write_in_caller_transaction",
    "write_many_in_caller_transaction",
]

_COLUMNS = STORED_COLUMNS
_TAIL_MOVED = "the audit chain's tail moved inside a write transaction"


# -- writes -----------------------------------------------------------------------------------

# The chain's tail, written once: the newest row, else the newest purge anchor (the table is
# empty after a full purge), else genesis. chain_tail() reads it and every guarded insert
# compares its hash; UNION ALL ... LIMIT 1 stops at the first part that has a row.
_TAIL_SQL = (
    f"SELECT id, hash FROM (SELECT id, hash FROM {TABLE} ORDER BY id DESC LIMIT 1) "
    "UNION ALL SELECT * FROM (SELECT last_deleted_id, last_deleted_hash "
    f"FROM {ANCHORS} ORDER BY last_deleted_id DESC LIMIT 1) "
    f"UNION ALL SELECT 0, '{GENESIS_HASH}' LIMIT 1"
)


def chain_tail(conn: sqlite3.Connection) -> tuple[int, str]:
    """The (id, hash) new rows chain from: the last row, else the last purge anchor, else genesis.

    Read inside the writing transaction, through the primary key: O(1), never a scan.
    """
    tail_id, tail_hash = conn.execute(_TAIL_SQL).fetchone()
    return int(tail_id), str(tail_hash)


# -- the chained insert -------------------------------------------------------------------------
#
# Rows go in as one multi-row INSERT per chunk rather than executemany(): SQLite then inserts
# the whole chunk in one step, during which the GIL is free for the application's threads, where
# executemany() gives the GIL up and waits to get it back for every row. Each statement is
# guarded: it inserts nothing unless the chain's tail (_TAIL_SQL, as chain_tail() reads it) is
# the one the rows were linked to.
# That lets the writer append a batch with one statement in its own transaction, chaining from
# the tail it remembers, and notice when someone else (another process, a purge, a synchronous
# write) moved the tail meanwhile. Chunk lengths come from a short ladder (see chunk_lengths),
# because preparing a statement for 500 rows costs about as much as inserting them: each
# connection prepares a few statements once and reuses them.

_ROW_WIDTH = len(_COLUMNS) + 3  # id, the stored fields, prev_hash, hash
_ROW_PARAMS = f"({', '.join('?' * _ROW_WIDTH)})"
# Every chunk of up to this many rows fits in one statement on any SQLite (999 variables).
_SAFE_CHUNK = (999 - 1) // _ROW_WIDTH


@functools.lru_cache(maxsize=64)
def _append_sql(rows: int) -> str:
    return (
        f"INSERT INTO {TABLE} (id, {', '.join(_COLUMNS)}, prev_hash, hash) "
        f"SELECT * FROM (VALUES {', '.join([_ROW_PARAMS] * rows)}) "
        f"WHERE (SELECT hash FROM ({_TAIL_SQL})) = ?"
    )


def max_chunk(conn: sqlite3.Connection) -> int:
    """The most rows one INSERT can carry on ``conn`` (SQLite's limit on bound variables).

    At least 1: a connection limited below one row's variables fails in SQLite, with its error.
    """
    return max(1, (conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) - 1) // _ROW_WIDTH)


@functools.lru_cache(maxsize=8)
def chunk_ladder(largest: int) -> frozenset[int]:
    """The lengths :func:`chunk_lengths` cuts into: ``largest``, then powers of two below it."""
    return frozenset({largest} | {1 << k for k in range(largest.bit_length()) if 1 << k < largest})


def chunk_lengths(count: int, largest: int) -> list[int]:
    """``count`` cut into lengths from the ladder ``largest``, then powers of two below it."""
    if largest < 1 or count < 0:
        raise ValueError(f"cannot cut {count} rows into chunks of at most {largest}")
    lengths = []
    step = largest
    while count:
        while step > count:
            step = 1 << (step.bit_length() - 1) if step & (step - 1) else step >> 1
        lengths.append(step)
        count -= step
    return lengths


def _append_chunk(conn: sqlite3.Connection, params: list[Any], rows: int, tail_hash: str) -> bool:
    # `tail_hash`: the hash of the chain's tail the chunk was linked to.
    params.append(tail_hash)
    return conn.execute(_append_sql(rows), params).rowcount == rows


def append_batch(
    conn: sqlite3.Connection,
    rows: Sequence[Row],
    tail: tuple[int, str],
    linker: Linker = UNKEYED,
) -> tuple[int, str] | None:
    """Commit ``rows`` after ``tail`` — the chain's tail (:func:`chain_tail`) as last known.

    One statement in its own transaction, so ``len(rows)`` must be a length :func:`max_chunk`
    allows. Returns the new tail, or None if the chain's tail is not ``tail`` any more: then
    nothing was written, and :func:`write_batch` (which reads the tail) should be used. The
    chain versions table is not looked at: the caller knows it says ``linker`` after ``tail``.
    """
    if not rows:
        return tail
    params: list[Any] = []
    new_tail = linker.link_into(params, rows, *tail)
    return new_tail if _append_chunk(conn, params, len(rows), tail[1]) else None


def insert_entries(
    conn: sqlite3.Connection,
    rows: Sequence[Row],
    largest: int = _SAFE_CHUNK,
    linker: Linker = UNKEYED,
) -> tuple[int, str]:
    """Append ``rows`` to the chain on ``conn``, in order, linked by ``linker``.

    In the current transaction. Returns the new tail (last id, last hash).

    The caller holds the write lock (``BEGIN IMMEDIATE``, or its own transaction), so the tail
    cannot move between reading it and inserting after it. The chain versions table records
    the linker's version and key from the tail on, if it does not already (never back to
    unkeyed: :class:`AuditStoreError`).
    """
    tail = chain_tail(conn)
    if rows:
        ensure_version(conn, tail[0], linker)
    offset = 0
    for length in chunk_lengths(len(rows), min(largest, max_chunk(conn))):
        params: list[Any] = []
        chained_from = tail[1]
        tail = linker.link_into(params, rows[offset : offset + length], *tail)
        if not _append_chunk(conn, params, length, chained_from):
            raise AuditStoreError(_TAIL_MOVED)
        offset += length
    return tail


def write_batch(
    conn: sqlite3.Connection,
    rows: Sequence[Row],
    largest: int = _SAFE_CHUNK,
    linker: Linker = UNKEYED,
) -> tuple[int, str]:
    """Commit ``rows`` in one transaction; on any error nothing of the batch is kept.

    Returns the new tail (last id, last hash).
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        tail = insert_entries(conn, rows, largest, linker)
        conn.execute("COMMIT")
    except BaseException:
        rollback_quietly(conn)
        raise
    return tail


def commit_batch(
    conn: sqlite3.Connection,
    rows: Sequence[Row],
    tail: tuple[int, str] | None,
    largest: int,
    linker: Linker = UNKEYED,
    versions_known: bool = False,
) -> tuple[int, str]:
    """The writer's commit: ``rows`` in one transaction after ``tail``; returns the new tail.

    ``tail`` is the chain's tail as last known (None: not known). When it is known, the chain
    versions table is known to say ``linker`` after it (``versions_known``: this writer wrote
    the tail) and the batch is one chunk length (:func:`chunk_ladder`), the batch is one
    guarded statement (:func:`append_batch`); otherwise, or if the tail moved,
    :func:`write_batch`, which reads the tail and the versions table.
    """
    largest = min(largest, max_chunk(conn))
    if tail is not None and versions_known and len(rows) in chunk_ladder(largest):
        new_tail = append_batch(conn, rows, tail, linker)
        if new_tail is not None:
            return new_tail
    return write_batch(conn, rows, largest, linker)


def write_in_caller_transaction(
    conn: sqlite3.Connection, row: Row, linker: Linker = UNKEYED
) -> None:
    """Insert ``row`` through a connection the application owns, without committing: see
    :func:`write_many_in_caller_transaction`."""
    write_many_in_caller_transaction(conn, (row,), linker)


def write_many_in_caller_transaction(
    conn: sqlite3.Connection, rows: Sequence[Row], linker: Linker = UNKEYED
) -> None:
    """Insert ``rows`` through a connection the application owns, without committing, all or
    none: one wait for the write lock, one read of the tail, one guarded INSERT per chunk.

    The chain's tail is read only once SQLite's write lock is held, so no other connection can
    move it before the rows go in. In the caller's open transaction, a statement that writes
    nothing takes the lock first (waiting the connection's own busy timeout), inside a savepoint
    when there are several rows, so a failure rolls back this call's rows and nothing else of
    the caller's transaction. With none open, the call begins one with ``BEGIN IMMEDIATE`` —
    not the deferred ``BEGIN`` the sqlite3 module would issue at the insert, after the tail was
    read outside any transaction. That transaction is the caller's to commit, unless the
    connection autocommits (``isolation_level=None``, or ``autocommit=True`` on Python 3.12+):
    then the rows commit at once. On an error, a transaction the call began is rolled back.

    The schema is created or upgraded on first use (inside the caller's transaction, so a
    rollback undoes it too); the common path pays nothing for that check.
    """
    if not rows:
        return
    if conn.in_transaction:
        if len(rows) == 1:  # one guarded INSERT: a statement SQLite undoes whole on an error
            _insert_locked(conn, rows, linker, take_lock=True)
            return
        conn.execute(f"SAVEPOINT {_SAVEPOINT}")
        try:
            _insert_locked(conn, rows, linker, take_lock=True)
        except BaseException:
            _roll_back_savepoint(conn)
            raise
        conn.execute(f"RELEASE {_SAVEPOINT}")
        return
    commit_now = _autocommits(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        _insert_locked(conn, rows, linker, take_lock=False)
        if commit_now:
            conn.execute("COMMIT")
    except BaseException:
        rollback_quietly(conn)
        raise


# The savepoint of a many-row write in the caller's transaction.
_SAVEPOINT = "audit_engine_entries"


def _roll_back_savepoint(conn: sqlite3.Connection) -> None:
    """Undo what the call wrote since its savepoint; quietly, because an error that ended the
    whole transaction (SQLite rolls back on some, such as a full disk) took the savepoint too."""
    try:
        conn.execute(f"ROLLBACK TO {_SAVEPOINT}")
        conn.execute(f"RELEASE {_SAVEPOINT}")
    except sqlite3.Error:
        pass


# A statement that changes nothing but takes SQLite's write lock (any write does, first).
_TAKE_WRITE_LOCK_SQL = f"UPDATE {META} SET value = value WHERE 0"
# Why the guarded insert can still miss the tail on a caller's connection, and what to do.
_TAIL_MOVED_IN_CALLER = (
    "the audit chain's tail moved while these entries were written through the caller's "
    "connection: something else wrote to the trail through that same connection in between "
    "(a connection shared by threads: record through it from one thread at a time)"
)


def _autocommits(conn: sqlite3.Connection) -> bool:
    """Whether ``conn`` commits each statement itself: ``isolation_level=None``, or Python
    3.12's ``autocommit=True`` (``autocommit=False`` always has a transaction open)."""
    autocommit = getattr(conn, "autocommit", _LEGACY_TRANSACTION_CONTROL)
    if autocommit != _LEGACY_TRANSACTION_CONTROL:
        return bool(autocommit)
    return conn.isolation_level is None


# sqlite3.LEGACY_TRANSACTION_CONTROL (Python 3.12+): the isolation_level rules apply.
_LEGACY_TRANSACTION_CONTROL = getattr(sqlite3, "LEGACY_TRANSACTION_CONTROL", -1)


def _insert_locked(
    conn: sqlite3.Connection, rows: Sequence[Row], linker: Linker, *, take_lock: bool
) -> None:
    """Insert ``rows`` in the open transaction, taking the write lock first if ``take_lock``;
    the schema is created or upgraded when it is missing."""
    try:
        try:
            if take_lock:
                conn.execute(_TAKE_WRITE_LOCK_SQL)
            insert_entries(conn, rows, _SAFE_CHUNK, linker)
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc) and "has no column" not in str(exc):
                raise
            migrate(conn)
            if take_lock:
                conn.execute(_TAKE_WRITE_LOCK_SQL)
            insert_entries(conn, rows, _SAFE_CHUNK, linker)
    except AuditStoreError as exc:
        if str(exc) != _TAIL_MOVED:
            raise
        raise AuditStoreError(_TAIL_MOVED_IN_CALLER) from None


def has_event(conn: sqlite3.Connection, event_id: str) -> bool:
    """Whether an entry with ``event_id`` is stored (through the UNIQUE index)."""
    found = conn.execute(f"SELECT 1 FROM {TABLE} WHERE event_id = ?", (event_id,)).fetchone()
    return found is not None
