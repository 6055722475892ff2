"""Writes made in the caller's thread: sync mode and ``on_full="sync"``.

One sink (:mod:`audit_engine.storage.backends`), opened on first use (or up front in sync mode, so
a bad database fails in the service's constructor); a lock keeps two callers' transactions apart.

A busy sink is tried again with backoff until ``busy_timeout`` has passed since the write began.
SQLite's own busy wait already spends that time inside the first attempt, so there it changes
nothing; a PostgreSQL server that dropped the connection (a restart) costs one reconnect instead
of a failed ``record()``, and one that stays away fails after ``busy_timeout``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from audit_engine import forks
from audit_engine.errors import AuditServiceClosed, AuditWriteError
from audit_engine.pipeline.committer import BACKOFF_MAX_S, BACKOFF_START_S
from audit_engine.rows import Row
from audit_engine.settings import AuditSettings, describe_database
from audit_engine.storage import backends
from audit_engine.storage.base import ChainSink, SinkBusy, SinkError
from audit_engine.storage.linker import UNKEYED, Linker


class SyncConnection:
    """A sink for writes made in callers' threads (sync mode, ``on_full='sync'``).

    Opened on first use; a lock keeps two callers' transactions apart.
    """

    def __init__(self, settings: AuditSettings, linker: Linker = UNKEYED) -> None:
        self._settings = settings
        self._linker = linker  # keyed or not: how the rows are hashed
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
        sink = backends.open_sink(self._settings, self._settings.busy_timeout, self._linker)
        try:
            sink.read_tail()  # a server that cannot be reached, or a bad file, fails here
        except BaseException:
            sink.close()  # the next attempt opens a new one
            raise
        return sink

    def write(self, entry: Row) -> None:
        self.write_many((entry,))

    def write_many(self, entries: Sequence[Row]) -> None:
        """Commit ``entries`` in one transaction, next to each other in the chain, or none."""
        with self.lock:
            if self._closed:
                raise AuditServiceClosed("the audit service is closed")
            deadline = time.monotonic() + self._settings.busy_timeout
            delay = BACKOFF_START_S
            while True:
                try:
                    if self._sink is None:
                        self._sink = self._open()
                    self._sink.commit(entries, None)
                    break
                except SinkBusy as exc:
                    if time.monotonic() + delay >= deadline:
                        raise self._failed(entries, exc) from exc
                    # Backoff between attempts; the sink reconnects in the next one.
                    time.sleep(delay)
                    delay = min(delay * 2, BACKOFF_MAX_S)
                except SinkError as exc:
                    raise self._failed(entries, exc) from exc
            self.written += len(entries)

    def _failed(self, entries: Sequence[Row], exc: SinkError) -> AuditWriteError:
        database = self._settings.database
        # A server's error names its host and port, not the database: say which trail it was.
        where = f" ({describe_database(database)})" if isinstance(database, str) else ""
        what = (
            f"audit entry {entries[0].event_id}"
            if len(entries) == 1
            else f"{len(entries)} audit entries ({entries[0].event_id} to {entries[-1].event_id})"
        )
        return AuditWriteError(f"could not write {what}: {exc}{where}")

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
