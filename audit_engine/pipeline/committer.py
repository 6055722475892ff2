"""The writer's commit logic, apart from its thread: retry, split, set aside, count.

:class:`Committer` takes one batch at a time and commits it through a
:class:`~audit_engine.storage.base.ChainSink`, acting on the class of error the sink reports:

* :class:`~audit_engine.storage.base.SinkBusy` — wait (with backoff) and retry, never giving up
  until ``abort`` is set (a ``close()`` that timed out);
* :class:`~audit_engine.storage.base.SinkRefused` — split the batch in halves until the failing
  rows are alone; those are set aside, the rest commit, in order;
* :class:`~audit_engine.storage.base.SinkUnavailable` — splitting cannot help: the whole batch
  is set aside at once (one append, one fsync).

Set aside means the dead-letter file, else the log (see :class:`SetAside`). The writer thread
owns one committer; tests drive one directly with a fake sink and an injected ``wait``, no
thread and no real sleep.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from audit_engine.pipeline.setaside import SetAside
from audit_engine.rows import Row
from audit_engine.storage.base import ChainSink, SinkBusy, SinkError, SinkUnavailable, Tail

logger = logging.getLogger("audit_engine.writer")  # the writer's documented logger

BACKOFF_START_S = 0.005
BACKOFF_MAX_S = 0.5

Gate = Callable[[], contextlib.AbstractContextManager[Any]]


class Committer:
    """Commits batches through ``sink``; sets aside in ``aside`` what cannot be committed.

    ``gate()`` is held around each sink call (the writer's fork gate); ``wait(seconds)`` sleeps
    between retries and returns True to give up (default: ``abort.wait``).
    """

    def __init__(
        self,
        aside: SetAside,
        *,
        gate: Gate,
        abort: threading.Event,
        wait: Callable[[float], bool] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.sink: ChainSink | None = None
        self._aside = aside
        self._gate = gate
        self._abort = abort
        self._wait = wait if wait is not None else abort.wait
        self._clock = clock
        # The chain's tail as this committer last saw it (read up front, then its own last
        # commit): the next batch chains from it; the sink detects a tail that moved meanwhile.
        self.tail: Tail | None = None
        self.done = 0  # rows of the current batch committed or set aside so far (a prefix)
        self.written = 0
        self.batches = 0
        self.retries = 0
        self.longest_batch_s = 0.0
        self.last_error: str | None = None
        self._unavailable = False  # the last failure was about the store, not a row

    def read_tail(self) -> None:
        """Read the chain's tail before the first batch, so that it too is one statement.

        Best effort: without it, the first commit reads the tail itself.
        """
        sink = self.sink
        if sink is None:  # pragma: no cover - the writer always starts with a sink
            return
        try:
            with self._gate():
                self.tail = sink.read_tail()
        except Exception as exc:  # best effort: the first commit reads it, and reports
            logger.debug("audit writer could not read the chain's tail up front: %s", exc)

    def commit(self, rows: Sequence[Row]) -> None:
        """Commit ``rows``; isolate and set aside the ones that cannot be committed."""
        error = self._attempt(rows)
        if error is None:
            self.done += len(rows)  # halves are written in order: a prefix is done
            return
        # Splitting finds a row that fails alone; an unavailable store fails every row, so the
        # whole batch goes at once.
        if len(rows) == 1 or self._abort.is_set() or self._unavailable:
            self.set_aside(rows, error)
            self.done += len(rows)
            return
        mid = len(rows) // 2
        self.commit(rows[:mid])
        self.commit(rows[mid:])

    def _attempt(self, rows: Sequence[Row]) -> str | None:
        """One batch transaction, retrying while the sink is busy; None on success."""
        delay = BACKOFF_START_S
        while True:
            sink = self.sink
            if sink is None:
                return "the writer's connection is closed"
            try:
                started = self._clock()
                with self._gate():
                    self.tail = sink.commit(rows, self.tail)
                took = self._clock() - started
            except SinkBusy as exc:
                self.retries += 1
                self.last_error = f"database busy, retrying: {exc}"
                if self._wait(delay):
                    return "aborted by close() while the database was busy"
                delay = min(delay * 2, BACKOFF_MAX_S)
            except SinkError as exc:
                self._unavailable = isinstance(exc, SinkUnavailable)
                self.last_error = str(exc)
                return self.last_error
            except Exception as exc:
                # A sink that broke its contract (an unclassified error is a bug in it): the
                # batch is set aside whole, never lost and never raised into close().
                self._unavailable = True
                self.last_error = f"unexpected sink error: {exc!r}"
                return self.last_error
            else:
                self.written += len(rows)
                self.batches += 1
                if took > self.longest_batch_s:
                    self.longest_batch_s = took
                return None

    def set_aside(self, rows: Sequence[Row], error: str) -> None:
        """Set ``rows`` aside: the dead-letter file, else the log. Never raises."""
        self._aside.put(rows, error, gate=self._gate(), abort=self._abort)
        if self._aside.last_error is not None:
            self.last_error, self._aside.last_error = self._aside.last_error, None
