""":class:`PgTrail`: a PostgreSQL connection that speaks the shared storage SQL.

What retention, anchors, replay, the summary and ``AuditStore`` need from a connection (the
protocol :class:`~audit_engine.storage.dialect.TrailConnection`), on psycopg: ``?`` parameters,
explicit transactions (a write one takes the chain's advisory lock), streamed reads through a
server-side cursor, the chained insert, and every error as a
:class:`~audit_engine.storage.dialect.BackendError`.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg

from audit_engine.errors import AuditStoreError
from audit_engine.rows import Row
from audit_engine.storage.dialect import BackendError
from audit_engine.storage.linker import UNKEYED, Linker
from audit_engine.storage.postgres import append
from audit_engine.storage.postgres.connection import (
    PG,
    classify,
    connect,
    lock_chain,
    mask_url,
    pg_sql,
)
from audit_engine.storage.postgres.schema import (
    SCHEMA_VERSION,
    keep_guard,
    migrate,
    refuse_foreign_tables,
    schema_version,
    table_oid,
    trail_bytes,
)

__all__ = ["PgTrail", "open_trail"]

_STREAM_ROWS = 5000  # rows per fetch of a server-side cursor
_stream_names = itertools.count(1)


class PgTrail:
    """A :class:`~audit_engine.storage.dialect.TrailConnection` on one psycopg connection."""

    dialect = PG
    schema_version = SCHEMA_VERSION

    def __init__(self, conn: psycopg.Connection[Any], url: str, lock_key: int) -> None:
        self.conn = conn
        self.url = url
        self.lock_key = lock_key

    @property
    def in_transaction(self) -> bool:
        return self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        try:
            return self.conn.execute(pg_sql(sql), tuple(params))
        except psycopg.Error as exc:
            raise classify(exc) from None

    def stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        """The rows of ``sql`` through a server-side cursor, a few thousand at a time.

        Inside the open transaction, or a read transaction of its own while iterated.
        """
        own = not self.in_transaction
        if own:
            self.begin_read()
        try:
            name = f"audit_engine_stream_{next(_stream_names)}"
            with self.conn.cursor(name=name) as cursor:
                cursor.itersize = _STREAM_ROWS
                cursor.execute(pg_sql(sql), tuple(params))
                yield from cursor
        except psycopg.Error as exc:
            raise classify(exc) from None
        finally:
            if own:
                self.rollback_quietly()  # read only: nothing to keep

    def tail(self) -> tuple[int, str]:
        try:
            return append.chain_tail(self.conn)
        except psycopg.Error as exc:
            raise classify(exc) from None

    def size_bytes(self) -> int:
        try:
            return trail_bytes(self.conn)
        except psycopg.Error as exc:
            raise classify(exc) from None

    def begin_write(self) -> None:
        self.execute("BEGIN")
        try:
            lock_chain(self.conn, self.lock_key)
        except psycopg.Error as exc:
            self.rollback_quietly()
            raise classify(exc) from None

    def begin_read(self) -> None:
        self.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def commit(self) -> None:
        self.execute("COMMIT")

    def rollback_quietly(self) -> None:
        if not self.conn.closed and self.in_transaction:
            # An error here means the connection is gone, and its transaction with it.
            with contextlib.suppress(psycopg.Error):
                self.conn.execute("ROLLBACK")

    def write_rows(self, rows: Sequence[Row], linker: Linker = UNKEYED) -> tuple[int, str]:
        """Append ``rows`` to the chain in one transaction of their own, linked by ``linker``."""
        try:
            return append.write_batch(self.conn, rows, self.lock_key, linker=linker)
        except psycopg.Error as exc:
            raise classify(exc) from None

    def close(self) -> None:
        self.conn.close()


def open_trail(url: str, *, create: bool = False, lock_timeout_s: float | None = None) -> PgTrail:
    """A trail connection to ``url``; ``create`` creates or migrates the engine's tables.

    Without ``create``, a database without the engine's tables raises
    :class:`~audit_engine.errors.AuditStoreError` (nothing is created by a read).
    """
    try:
        conn = connect(url, lock_timeout_s=lock_timeout_s)
    except BackendError as exc:
        raise AuditStoreError(f"cannot connect to {mask_url(url)}: {exc}") from None
    try:
        if not create and schema_version(conn) == 0:
            refuse_foreign_tables(conn)  # a table of another application, named like ours
            raise AuditStoreError(
                f"no audit trail at {mask_url(url)} (the database has no audit_engine tables; "
                "`audit-engine --db URL init` creates them)"
            )
        migrate(conn)  # creates, upgrades an older trail, refuses a newer one
        keep_guard(conn, mask_url(url))  # a tool may have dropped or disabled its triggers
        return PgTrail(conn, url, table_oid(conn))
    except psycopg.Error as exc:
        conn.close()
        raise AuditStoreError(f"cannot open {mask_url(url)}: {classify(exc)}") from None
    except BaseException:
        conn.close()
        raise
