"""Writes made in the caller's thread: sync mode and ``on_full="sync"``.

One sink (:mod:`audit_engine.storage.backends`), opened on first use (or up front in sync mode, so
a bad database fails in the service's constructor); a lock keeps two callers' transactions apart.
"""

from __future__ import annotations

import threading

from audit_engine import forks
from audit_engine.errors import AuditServiceClosed, AuditWriteError
from audit_engine.rows import Row
from audit_engine.settings import AuditSettings
from audit_engine.storage import backends
from audit_engine.storage.base import ChainSink, SinkError


class SyncConnection:
    """A sink for writes made in callers' threads (sync mode, ``on_full='sync'``).

    Opened on first use; a lock keeps two callers' transactions apart.
    """

    def __init__(self, settings: AuditSettings) -> None:
        self._settings = settings
        # Held for a whole synchronous write, including its wait for a busy database (up to the
        # busy timeout); os.fork() waits for it too (the service's fork_gates).
        self.lock = threading.RLock()
        self._sink: ChainSink | None = None
        self._closed = False

        self.written = 0

    def open(self) -> None:
        """Open the sink now (sync mode), so a bad database fails in the constructor."""
        with self.lock:
            if self._sink is None:
                self._sink = self._open()

    def _open(self) -> ChainSink:
        sink = backends.open_sink(self._settings, self._settings.busy_timeout)
        sink.read_tail()  # a server that cannot be reached, or a bad file, fails here
        return sink

    def write(self, entry: Row) -> None:
        with self.lock:
            if self._closed:
                raise AuditServiceClosed("the audit service is closed")
            try:
                if self._sink is None:
                    self._sink = self._open()
                self._sink.commit((entry,), None)
            except SinkError as exc:
                raise AuditWriteError(
                    f"could not write audit entry {entry.event_id}: {exc}"
                ) from exc
            self.written += 1

    def close(self) -> None:
        with self.lock:
            self._closed = True
            sink, self._sink = self._sink, None
        if sink is not None:
            sink.close()

    def reset_after_fork(self) -> None:
        self.lock = threading.RLock()
        self.written = 0
        if self._sink is not None:
            forks.keep_inherited(self._sink)
            self._sink = None
