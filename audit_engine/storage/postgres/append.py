"""PostgreSQL storage, the write side: the chain's tail and the chained batch insert (``COPY``).

Every write takes the chain's advisory lock first, then reads the tail, links the rows to it and
copies them in, all in one transaction: writers in any number of processes and hosts extend one
linear chain. After a failure whose outcome is unknown (the connection dropped around the commit)
the writer asks for ``skip_stored``: rows whose ``event_id`` is already stored are then left out,
so a commit whose acknowledgement was lost is not stored twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from audit_engine.rows import Row
from audit_engine.storage.anchors import ANCHORS
from audit_engine.storage.chain import GENESIS_HASH
from audit_engine.storage.dialect import BackendError
from audit_engine.storage.linker import (
    UNKEYED,
    Linker,
    ensure_version,
    newest_version,
    refuse_unkeyed,
)
from audit_engine.storage.postgres.connection import CHAIN_LOCK_CLASS, classify, lock_chain
from audit_engine.storage.postgres.schema import TABLE, migrate, table_oid

__all__ = [
    "INSERT_SQL",
    "chain_tail",
    "copy_linked",
    "migrate_caller_connection",
    "write_batch",
    "write_in_caller_transaction",
    "write_many_in_caller_transaction",
]

# The newest row, else the newest purge anchor, else genesis (as on SQLite), through the
# primary keys: O(1).
_TAIL_SQL = (
    f"SELECT id, hash FROM (SELECT id, hash, 1 AS rank FROM (SELECT id, hash FROM {TABLE} "
    "ORDER BY id DESC LIMIT 1) e "
    "UNION ALL SELECT * FROM (SELECT last_deleted_id, last_deleted_hash, 2 "
    f"FROM {ANCHORS} ORDER BY last_deleted_id DESC LIMIT 1) a "
    f"UNION ALL SELECT 0, '{GENESIS_HASH}', 3) t ORDER BY rank LIMIT 1"
)
# The columns a row is written with, in link_into's order (details_text: the hashed text; the
# server derives the jsonb column from it).
WRITTEN_COLUMNS = (
    "id, event_id, timestamp, actor, action, operation, outcome, resource_type, resource_id, "
    "correlation_id, details_text, critical, prev_hash, hash"
)
_WIDTH = 14
_COPY_SQL = f"COPY {TABLE} ({WRITTEN_COLUMNS}) FROM STDIN"
#: One linked row (``critical`` as a boolean): the injected connection's insert.
INSERT_SQL = f"INSERT INTO {TABLE} ({WRITTEN_COLUMNS}) VALUES ({', '.join(['%s'] * _WIDTH)})"
# A stored entry's fields as the chain hashed them (the connection loads timestamptz as the
# stored text and boolean as 0/1: see connection.connect), to compare with a row by value.
_STORED_SQL = (
    "SELECT event_id, timestamp, actor, action, operation, outcome, resource_type, resource_id, "
    f"correlation_id, details_text, critical FROM {TABLE} WHERE event_id = ANY(%s)"
)


def chain_tail(conn: psycopg.Connection[Any]) -> tuple[int, str]:
    """The (id, hash) new rows chain from: the last row, else the last anchor, else genesis."""
    row = conn.execute(_TAIL_SQL).fetchone()
    assert row is not None  # the genesis part always answers
    return int(row[0]), str(row[1])


def write_batch(
    conn: psycopg.Connection[Any],
    rows: Sequence[Row],
    lock_key: int,
    *,
    skip_stored: bool = False,
    linker: Linker = UNKEYED,
    versions_at: tuple[int, str] | None = None,
) -> tuple[int, str]:
    """Commit ``rows`` after the chain's tail in one transaction; returns the new tail.

    ``conn`` is in autocommit mode (the transaction is this function's). On any
    error nothing of the batch is kept. With ``skip_stored``, rows stored already — the same
    ``event_id`` holding the same entry — are left out (an attempt whose acknowledgement was
    lost committed them). A row whose ``event_id`` holds a *different* entry stays in: the
    server refuses it, and the writer sets it aside, never drops it.

    Rows are linked by ``linker``; the chain versions table is made to say so from the tail on
    (:func:`~audit_engine.storage.linker.ensure_version`) unless the tail read is
    ``versions_at``, one this writer committed itself (nobody wrote since).
    """
    with conn.transaction():
        lock_chain(conn, lock_key)
        tail = chain_tail(conn)
        if tail != versions_at:
            ensure_version(conn, tail[0], linker, "%s")
        if skip_stored and rows:
            found = conn.execute(_STORED_SQL, ([row.event_id for row in rows],)).fetchall()
            stored = {Row(*values) for values in found}
            rows = [row for row in rows if row not in stored]
        if rows:
            params: list[Any] = []
            tail = linker.link_into(params, rows, *tail)
            copy_linked(conn, params)
    return tail


def copy_linked(conn: psycopg.Connection[Any], params: Sequence[Any]) -> None:
    """``COPY`` linked rows (``link_into``'s flat values, 14 per row) into the entries table.

    In the caller's transaction. Text COPY, measured side by side with binary COPY, executemany
    and a multi-row INSERT on this schema (docs/performance.md): as fast as binary COPY and
    2-5x the others. The server parses the timestamp text and 0/1 as a boolean and derives the
    jsonb column, so the rows go out as link_into made them: no per-row conversion in Python,
    which shares the GIL with the callers of record().
    """
    with conn.cursor() as cursor, cursor.copy(_COPY_SQL) as copy:
        write_row = copy.write_row
        for start in range(0, len(params), _WIDTH):
            write_row(params[start : start + _WIDTH])


def write_in_caller_transaction(
    conn: psycopg.Connection[Any],
    row: Row,
    linker: Linker = UNKEYED,
    lock_timeout_s: float | None = None,
) -> None:
    """Insert ``row`` through a psycopg connection the application owns, without committing:
    see :func:`write_many_in_caller_transaction`."""
    write_many_in_caller_transaction(conn, (row,), linker, lock_timeout_s)


def write_many_in_caller_transaction(
    conn: psycopg.Connection[Any],
    rows: Sequence[Row],
    linker: Linker = UNKEYED,
    lock_timeout_s: float | None = None,
) -> None:
    """Insert ``rows`` through a psycopg connection the application owns, without committing,
    all or none: the schema checked once, then in one savepoint one wait for the chain's
    advisory lock, one read of the tail and one ``COPY`` of every row (one row: an INSERT).

    Inside the caller's transaction, in that savepoint, so a failure leaves the transaction
    usable and none of the rows in it; if none is open, a non-autocommit connection starts one
    (the engine's first read), which the caller commits or rolls back with its own change; an
    autocommit connection commits the rows at once. The chain's advisory lock is held until the
    caller's transaction ends; one wait for it lasts at most ``lock_timeout_s`` (None: the
    connection's own ``lock_timeout``), then :class:`BackendError` says so. The schema is
    created on first use, in the same transaction.
    """
    if not rows:
        return
    with _as_the_engine_reads(conn):
        if conn.autocommit:
            with conn.transaction():
                migrate(conn)
                _insert_all(conn, rows, linker, lock_timeout_s)
            return
        # Its first read begins the caller's transaction if none is open: transaction() below
        # is then a savepoint, never a transaction of its own that would commit the rows.
        migrate(conn)
        with conn.transaction():
            _insert_all(conn, rows, linker, lock_timeout_s)


def migrate_caller_connection(conn: psycopg.Connection[Any], linker: Linker = UNKEYED) -> None:
    """Create or upgrade the schema through a connection the application owns; refuse an
    unkeyed ``linker`` on a keyed trail (:class:`~audit_engine.errors.AuditStoreError`)."""
    with _as_the_engine_reads(conn):
        migrate(conn)
        refuse_unkeyed(newest_version(conn, "%s"), linker)


@contextlib.contextmanager
def _as_the_engine_reads(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """The application's connection, its rows as tuples for the engine's own statements (it may
    use dict_row), its errors as the engine's — also a text its client encoding cannot carry."""
    factory = conn.row_factory
    conn.row_factory = tuple_row  # restored below
    try:
        yield
    except psycopg.Error as exc:
        raise classify(exc) from exc
    except UnicodeError as exc:
        raise BackendError(
            f"{type(exc).__name__}: the connection's client_encoding "
            f"({conn.info.encoding}) cannot carry this entry; use UTF8"
        ) from exc
    finally:
        conn.row_factory = factory


def _insert_all(
    conn: psycopg.Connection[Any], rows: Sequence[Row], linker: Linker, lock_timeout_s: float | None
) -> None:
    _lock_chain_within(conn, table_oid(conn), lock_timeout_s)
    tail = chain_tail(conn)
    ensure_version(conn, tail[0], linker, "%s")
    params: list[Any] = []
    linker.link_into(params, rows, *tail)
    if len(rows) > 1:
        copy_linked(conn, params)
        return
    # One row (record()): an INSERT is one round trip, a COPY three.
    params[11] = bool(params[11])  # critical: a boolean column (COPY's text takes 0/1)
    conn.execute(INSERT_SQL, params)


def _lock_chain_within(
    conn: psycopg.Connection[Any], lock_key: int, lock_timeout_s: float | None
) -> None:
    """The chain's advisory lock on the caller's connection, waiting at most ``lock_timeout_s``.

    Free: taken at once, one statement. Held by another transaction: the wait is bounded by a
    ``lock_timeout`` set for it alone (``set_config(..., true)``: this transaction only, and
    put back after), so the application's own statements keep their setting. Called inside a
    savepoint: a timeout rolls the savepoint back, the setting with it.
    """
    taken = conn.execute(_TRY_LOCK_SQL, (CHAIN_LOCK_CLASS, lock_key)).fetchone()
    if taken is not None and taken[0]:
        return
    if lock_timeout_s is None:
        lock_chain(conn, lock_key)
        return
    milliseconds = max(1, round(lock_timeout_s * 1000))  # 0 would mean no limit at all
    setting = conn.execute("SELECT current_setting('lock_timeout')").fetchone()
    conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{milliseconds}ms",))
    try:
        lock_chain(conn, lock_key)
    except psycopg.errors.LockNotAvailable as exc:
        raise BackendError(
            f"the audit chain's advisory lock stayed held by another transaction for "
            f"busy_timeout ({lock_timeout_s:g} s): the entry was not written and your "
            "transaction is still usable (retry, or raise busy_timeout)",
            busy=True,
            sqlstate=exc.sqlstate,
        ) from exc
    assert setting is not None
    conn.execute("SELECT set_config('lock_timeout', %s, true)", (setting[0],))


_TRY_LOCK_SQL = "SELECT pg_try_advisory_xact_lock(%s, %s)"
