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

from audit_engine.rows import Row
from audit_engine.storage.base import SinkBusy, SinkError, SinkRefused, SinkUnavailable, Tail
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
    text = f"{type(exc).__name__}: {exc}"
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code in _FILE_LEVEL_ERRORS:
        return SinkUnavailable(text)
    return SinkRefused(text)


class SqliteSink:
    """The writer's :class:`~audit_engine.storage.base.ChainSink` on one SQLite connection.

    ``largest`` is the most rows the writer puts in one batch: a batch of a chunk length up to
    it is one guarded statement after the remembered tail.
    """

    def __init__(self, conn: sqlite3.Connection, *, largest: int) -> None:
        self.conn = conn
        self._largest = largest

    def read_tail(self) -> Tail:
        try:
            return append.chain_tail(self.conn)
        except Exception as exc:
            raise classify(exc) from exc

    def commit(self, rows: Sequence[Row], tail: Tail | None) -> Tail:
        try:
            # Looked up on the module at each call: tests wrap append.commit_batch.
            return append.commit_batch(self.conn, rows, tail, self._largest)
        except Exception as exc:
            raise classify(exc) from exc

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
