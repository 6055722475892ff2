"""PostgreSQL behind the storage seam: :class:`PostgresSink`, the writer's ``ChainSink``.

A server that goes away (a restart, a dropped connection, a failover) is :class:`SinkBusy`: the
sink drops the connection and opens a new one inside its next call, and the writer retries the
batch in hand with backoff until ``close()`` gives up. Because a commit whose acknowledgement
was lost may have happened, the first commit after such a failure leaves out the rows already
stored (by ``event_id``). A row the server refuses is :class:`SinkRefused` (the writer isolates
it); a server that refuses every write (no privilege, a read-only standby) :class:`SinkUnavailable`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from audit_engine.errors import AuditStoreError
from audit_engine.rows import Row
from audit_engine.storage.base import SinkBusy, SinkError, SinkRefused, SinkUnavailable, Tail
from audit_engine.storage.dialect import BackendError
from audit_engine.storage.linker import UNKEYED, Linker, newest_version, refuse_unkeyed
from audit_engine.storage.postgres import append
from audit_engine.storage.postgres.connection import UNAVAILABLE_STATES, classify, connect
from audit_engine.storage.postgres.schema import migrate, table_oid

__all__ = ["PostgresSink"]


def _sink_error(exc: BaseException) -> SinkError:
    if isinstance(exc, AuditStoreError):  # a trail of a newer schema, a table gone
        return SinkUnavailable(str(exc))
    error = exc if isinstance(exc, BackendError) else classify(exc)  # type: ignore[arg-type]
    if error.busy:
        return SinkBusy(str(error))
    if error.sqlstate in UNAVAILABLE_STATES:
        return SinkUnavailable(str(error))
    return SinkRefused(str(error))


class PostgresSink:
    """The writer's :class:`~audit_engine.storage.base.ChainSink` on a PostgreSQL URL.

    Connects lazily (and again after a connection failure); creates or migrates the schema on
    each new connection. ``lock_timeout_s`` bounds one wait for the chain's lock (another writer,
    a purge, an application's open transaction holding it): the commit then fails as busy and
    the writer retries, so ``close(timeout)`` is never stuck behind someone else's lock.
    ``linker`` hashes the rows (keyed or not).
    """

    def __init__(
        self, url: str, *, lock_timeout_s: float | None = None, linker: Linker = UNKEYED
    ) -> None:
        self.url = url
        self._lock_timeout_s = lock_timeout_s
        self._linker = linker
        # The tail this sink last committed: the versions table said our linker there.
        self._versions_at: Tail | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._lock_key = 0
        # The last attempt failed in a way that may have committed it: check before writing.
        self._uncertain = False

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = None
            conn = connect(self.url, lock_timeout_s=self._lock_timeout_s)
            try:
                migrate(conn)
                self._lock_key = table_oid(conn)
                refuse_unkeyed(newest_version(conn, "%s"), self._linker)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _failed(self, exc: BaseException) -> SinkError:
        error = _sink_error(exc)
        if isinstance(error, SinkBusy):
            self._uncertain = True
            if self._conn is not None:
                self._conn.close()  # a new one next time: this one may be broken
                self._conn = None
        return error

    def read_tail(self) -> Tail:
        try:
            return append.chain_tail(self._connection())
        except (psycopg.Error, BackendError, AuditStoreError) as exc:
            raise self._failed(exc) from exc

    def commit(self, rows: Sequence[Row], tail: Tail | None) -> Tail:
        # The tail is always read under the chain's lock: another host may have moved it.
        try:
            new_tail = append.write_batch(
                self._connection(),
                rows,
                self._lock_key,
                skip_stored=self._uncertain,
                linker=self._linker,
                versions_at=self._versions_at,
            )
        except (psycopg.Error, BackendError, AuditStoreError) as exc:
            raise self._failed(exc) from exc
        self._uncertain = False
        if rows:
            self._versions_at = new_tail
        return new_tail

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
