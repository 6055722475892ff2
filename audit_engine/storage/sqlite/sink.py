"""SQLite behind the storage seam: :class:`SqliteSink`, the writer's :class:`ChainSink`.

The commit itself is :func:`audit_engine.storage.sqlite.append.commit_batch` (one guarded
statement after a known tail, else a ``BEGIN IMMEDIATE`` transaction that reads the tail); this
module adds what the seam asks of a backend: every failure classified into a
:class:`~audit_engine.storage.base.SinkError` the writer understands, so no ``sqlite3`` error
crosses the seam.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING

from audit_engine.errors import AuditStoreError
from audit_engine.rows import Row
from audit_engine.storage.base import SinkBusy, SinkError, SinkRefused, SinkUnavailable, Tail
from audit_engine.storage.linker import UNKEYED, Linker, versions_known_at
from audit_engine.storage.sqlite import append
from audit_engine.storage.sqlite.schema import is_busy

__all__ = ["SqliteSink", "classify"]

# SQLite errors about the file, not a row: splitting the batch cannot help. (A full disk is not
# one of them: a smaller part of the batch may still fit, so that one is split.)
_FILE_LEVEL_ERRORS = frozenset(
    {
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_NOTADB,
    }
)


def classify(exc: Exception) -> SinkError:
    """The seam's error for ``exc``, raised while writing to SQLite.

    Busy/locked -> :class:`SinkBusy`; an error about the file -> :class:`SinkUnavailable`;
    anything else (a constraint, a full disk, an unexpected exception) -> :class:`SinkRefused`.
    The message keeps the original's type and text: it is what dead letters record.
    """
    if is_busy(exc):
        return SinkBusy(str(exc))
    if isinstance(exc, AuditStoreError):  # an unkeyed writer on a keyed trail: every row alike
        return SinkUnavailable(str(exc))
    text = f"{type(exc).__name__}: {exc}"
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code in _FILE_LEVEL_ERRORS:
        return SinkUnavailable(text)
    return SinkRefused(text)


class SqliteSink:
    """The writer's :class:`~audit_engine.storage.base.ChainSink` on one SQLite connection.

    ``largest`` is the most rows the writer puts in one batch: a batch of a chunk length up to
    it is one guarded statement after the remembered tail. ``linker`` hashes the rows (keyed
    or not).
    """

    def __init__(self, conn: sqlite3.Connection, *, largest: int, linker: Linker = UNKEYED) -> None:
        self.conn = conn
        self._largest = largest
        self._linker = linker
        # The tail this sink last committed: the chain versions table said our linker there, so
        # a batch after that same tail needs no look at it (nobody else wrote meanwhile).
        self._versions_at: Tail | None = None

    def read_tail(self) -> Tail:
        try:
            tail = append.chain_tail(self.conn)
            if versions_known_at(self.conn, tail, self._linker):
                self._versions_at = tail  # the first batch can be one guarded statement
        except Exception as exc:
            raise classify(exc) from exc
        return tail

    def commit(self, rows: Sequence[Row], tail: Tail | None) -> Tail:
        try:
            # Looked up on the module at each call: tests wrap append.commit_batch.
            new_tail = append.commit_batch(
                self.conn,
                rows,
                tail,
                self._largest,
                self._linker,
                tail is not None and tail == self._versions_at,
            )
        except Exception as exc:
            raise classify(exc) from exc
        if rows:
            self._versions_at = new_tail
        return new_tail

    def close(self) -> None:
        self.conn.close()


if TYPE_CHECKING:
    # mypy --strict checks here that SQLite's classes fulfil the seam's protocols.
    from audit_engine.storage.base import ChainReader, ChainSink
    from audit_engine.storage.store import AuditStore

    def _a_sink(sink: SqliteSink) -> ChainSink:
        return sink

    def _a_reader(store: AuditStore) -> ChainReader:
        return store
