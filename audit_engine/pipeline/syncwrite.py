"""Writes made in the caller's thread: sync mode and ``on_full="sync"``.

One connection, opened on first use (or up front in sync mode, so a bad database fails in the
service's constructor); a lock keeps two callers' transactions apart.
"""

from __future__ import annotations

import sqlite3
import threading

from audit_engine import forks
from audit_engine.errors import AuditServiceClosed, AuditWriteError
from audit_engine.rows import Row
from audit_engine.settings import AuditSettings
from audit_engine.storage.sqlite import append, schema


class SyncConnection:
    """A connection for writes made in callers' threads (sync mode, ``on_full='sync'``).

    Opened on first use; a lock keeps two callers' transactions apart.
    """

    def __init__(self, settings: AuditSettings) -> None:
        self._settings = settings
        # Held for a whole synchronous write, including its wait for a busy database (up to the
        # busy timeout); os.fork() waits for it too (the service's fork_gates).
        self.lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False

        self.written = 0

    def open(self) -> None:
        """Open the connection now (sync mode), so a bad database fails in the constructor."""
        with self.lock:
            if self._conn is None:
                self._conn = connect(self._settings, self._settings.busy_timeout)

    def write(self, entry: Row) -> None:
        with self.lock:
            if self._closed:
                raise AuditServiceClosed("the audit service is closed")
            if self._conn is None:
                self._conn = connect(self._settings, self._settings.busy_timeout)
            try:
                append.write_batch(self._conn, (entry,))
            except sqlite3.Error as exc:
                raise AuditWriteError(
                    f"could not write audit entry {entry.event_id}: {exc}"
                ) from exc
            self.written += 1

    def close(self) -> None:
        with self.lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def reset_after_fork(self) -> None:
        self.lock = threading.RLock()
        self.written = 0
        if self._conn is not None:
            forks.keep_inherited(self._conn)
            self._conn = None


def connect(settings: AuditSettings, busy_timeout: float) -> sqlite3.Connection:
    """A connection to ``settings.database`` (created and migrated if needed)."""
    return schema.open_connection(
        settings.database, synchronous=settings.synchronous, busy_timeout=busy_timeout
    )
