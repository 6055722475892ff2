"""The write-behind worker: a bounded queue drained by one daemon thread in batched transactions.

Guarantees kept here (see docs/guarantees.md):

* entries commit in the order they were enqueued (one FIFO queue, one writer, batches in order);
* a busy database is retried with backoff, never given up on, until ``close()`` times out;
* a batch that fails for another reason is split until the failing rows are alone; those go to
  the dead-letter file and the rest commit;
* the thread never dies, whatever is raised in it: the batch in hand is dead-lettered and the
  failure is remembered (``clean`` is False, so ``close()`` returns False);
* an entry that could be neither committed nor dead-lettered is logged at CRITICAL in the
  dead-letter line format and counted in ``logged_only``; ``flush()`` then returns False;
* ``flush()``/``close()`` never hang on a dead thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from audit_engine import forks
from audit_engine.pipeline.committer import Committer
from audit_engine.pipeline.handoff import HandoffQueue
from audit_engine.pipeline.setaside import SetAside
from audit_engine.rows import Row
from audit_engine.storage.base import OpenSink
from audit_engine.storage.checkpointing import Checkpointer
from audit_engine.storage.deadletter import DeadLetterFile

logger = logging.getLogger("audit_engine.writer")  # the documented logger name

WRITER_THREAD_NAME = "audit-writer"
# The writer's own SQLite busy wait is short so that close(timeout) can abort a retry loop
# promptly; the retry loop itself never gives up on a busy database.
_WRITER_BUSY_SLICE_S = 0.25
# After close() times out, how long it waits for the writer to dead-letter the batch in flight:
# the writer's current attempt ends first — within the busy slice on SQLite, within the connect
# timeout (2 s, see storage/postgres/connection.py) on a PostgreSQL server that does not answer.
_ABORT_GRACE_S = 2.5


class Writer:
    """Owns the queue, the writer thread and the writer's sink (see :mod:`.committer`)."""

    def __init__(
        self,
        open_sink: OpenSink,
        dead_letters: DeadLetterFile,
        *,
        queue_maxsize: int,
        batch_size: int,
        flush_interval_s: float,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        self._open_sink = open_sink
        # Signs checkpoints after commits, on interval and at close (signing_key_file set).
        self.checkpointer = checkpointer
        self._dead_letters = dead_letters
        self._queue_maxsize = queue_maxsize
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._reset_state()
        # Held while this writer's thread is inside SQLite or the dead-letter file: one sink call
        # (one transaction attempt, whose busy wait the service caps at _WRITER_BUSY_SLICE_S; the
        # backoff between attempts is outside it) or one dead-letter append (not while it waits
        # for the file's lock). os.fork() waits for it (audit_engine.forks), so a child never
        # inherits a SQLite mutex locked by a thread that does not exist there.
        self.fork_gate = threading.RLock()
        self._committer.sink = open_sink()
        self._start()
        forks.register(self)

    # -- state ------------------------------------------------------------------------------

    def _reset_state(self) -> None:
        self._queue = HandoffQueue(self._queue_maxsize)
        # Queue an entry if there is room, without waiting: True, or False when full; raises
        # AuditServiceClosed once closing. The queue's own method, bound here: record() calls it
        # for every entry.
        self.offer: Callable[[Row], bool] = self._queue.offer
        self._stopping = False
        self._abort = threading.Event()
        self._progress = threading.Condition()
        self._processed = 0  # entries committed or dead-lettered, counted in queue order
        self._flush_target = 0
        self._alive = False
        self._inflight: list[Row] = []
        self._inflight_slots = 0  # queue slots _inflight came from (voids included)
        self._aside = SetAside(self._dead_letters)
        # Commits batches through the sink: retry, split, set aside, and the counters. The gate
        # is looked up at each commit: reset_after_fork replaces it.
        self._committer = Committer(self._aside, gate=lambda: self.fork_gate, abort=self._abort)
        # Remember what happens to an entry / learn it (critical_sync); see SetAside.
        self.watch = self._aside.watch
        self.outcome = self._aside.outcome
        # Batches dead-lettered because the loop itself failed (a bug, not a write error).
        self.loop_failures = 0
        # Where a timed-out stop() moved what was left (the dead-letter file, or side files).
        self.moved_to = str(self._dead_letters.path)

    def _start(self) -> None:
        # Every attribute is set before the thread starts: it never sees a half-built writer.
        self._alive = True
        self._thread = threading.Thread(target=self._run, name=WRITER_THREAD_NAME, daemon=True)
        self._thread.start()

    def fork_gates(self) -> tuple[threading.RLock]:
        """The gate this writer's thread holds while inside SQLite (see ``__init__``)."""
        return (self.fork_gate,)

    def after_fork_in_child(self) -> None:
        """Nothing by itself: whether the child writes again is its owner's call.

        The service calls :meth:`reset_after_fork` in a child where it is still open; a writer
        whose service is gone holds only the parent's entries, which the child must not write.
        """

    def reset_after_fork(self) -> None:
        """In a forked child: start over with an empty queue, a new connection and a new thread.

        The parent's queued entries stay the parent's (the child must not write them twice), and the
        parent's connection is never used or closed here.
        """
        orphan = self._committer.sink
        if orphan is not None:
            forks.keep_inherited(orphan)
        if self.checkpointer is not None:
            self.checkpointer.reset_after_fork()
        self.fork_gate = threading.RLock()
        self._reset_state()
        self._committer.sink = self._open_sink()
        self._start()

    # -- counters (the committer's) ---------------------------------------------------------

    @property
    def written(self) -> int:
        return self._committer.written

    @property
    def batches(self) -> int:
        return self._committer.batches

    @property
    def retries(self) -> int:
        return self._committer.retries

    @property
    def longest_batch_s(self) -> float:
        return self._committer.longest_batch_s

    @property
    def last_error(self) -> str | None:
        return self._committer.last_error

    @last_error.setter
    def last_error(self, value: str | None) -> None:
        self._committer.last_error = value

    @property
    def _inflight_done(self) -> int:
        # Rows of _inflight committed or dead-lettered so far.
        return self._committer.done

    @_inflight_done.setter
    def _inflight_done(self, value: int) -> None:
        self._committer.done = value

    # -- producer side ----------------------------------------------------------------------

    @property
    def enqueued(self) -> int:
        """Position of the last entry queued so far (what ``flush()`` waits for)."""
        return self._queue.enqueued

    @property
    def accepted(self) -> int:
        """Entries the queue accepted so far (``enqueued`` without the void slots)."""
        return self._queue.accepted

    @property
    def queue_depth(self) -> int:
        return self._queue.depth()

    @property
    def max_queue_depth(self) -> int:
        return self._queue.max_depth

    @property
    def alive(self) -> bool:
        return self._alive and self._thread.is_alive()

    @property
    def closed(self) -> bool:
        return self._queue.closed

    @property
    def clean(self) -> bool:
        """False once an entry went only to the log, or the loop failed with a batch in hand."""
        return self.logged_only == 0 and self.loop_failures == 0

    @property
    def dead_lettered(self) -> int:
        """Entries moved to the dead-letter file (or a side file of it)."""
        return self._aside.dead_lettered

    @property
    def logged_only(self) -> int:
        """Entries that reached neither the database nor the dead-letter file, only the log."""
        return self._aside.logged_only

    def put(self, entry: Row, timeout_s: float) -> int:
        """Queue ``entry``: its position (1-based), or 0 if no room within ``timeout_s``.
        Raises :class:`AuditServiceClosed` once the writer is closing."""
        queue = self._queue
        if queue.offer(entry):
            return queue.enqueued  # exact, unless others append at the same moment (later)
        if timeout_s <= 0:
            return 0
        deadline = time.monotonic() + timeout_s
        while True:
            # Only the deadline ends the wait: room seen while waiting may be taken by a producer
            # (they take no lock) before this one appends. Closed raises in offer().
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return queue.enqueued if queue.offer(entry) else 0
            queue.wait_for_room(remaining)
            if queue.offer(entry):
                return queue.enqueued

    def put_many(self, entries: Sequence[Row], timeout_s: float) -> int:
        """Queue all of ``entries`` next to each other, or none (see :meth:`put` and
        ``HandoffQueue.offer_many``): the last one's position, or 0 (no room in time)."""
        queue = self._queue
        position = queue.offer_many(entries)
        if position or timeout_s <= 0:
            return position
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()  # only the deadline ends the wait (put)
            if remaining <= 0:
                return queue.offer_many(entries)  # closed while waiting raises here
            queue.wait_for_room(remaining, len(entries))
            position = queue.offer_many(entries)
            if position:
                return position

    def _wake(self) -> None:
        self._queue.wake()

    def wait_for(self, position: int, timeout_s: float | None) -> bool:
        """Wait until the first ``position`` entries are committed (or dead-lettered)."""
        with self._progress:
            if self._processed >= position:
                return True
            if position > self._flush_target:
                self._flush_target = position
        self._wake()
        with self._progress:
            self._progress.wait_for(
                lambda: self._processed >= position or not self._alive, timeout_s
            )
            return self._processed >= position

    def flush(self, timeout_s: float | None) -> bool:
        """Wait until everything queued before the call is committed (or dead-lettered).

        False on timeout, and once any entry could only be logged (see ``logged_only``).
        """
        return self.wait_for(self._queue.enqueued, timeout_s) and not self.logged_only

    # -- shutdown ---------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop accepting and let the thread exit once the queue is drained; does not wait."""
        self._queue.close()
        self._stopping = True
        self._wake()

    def stop(self, timeout_s: float | None) -> tuple[bool, int]:
        """Drain, commit and stop; returns (drained in time, entries moved to the dead-letter file).

        If the queue is not drained within ``timeout_s`` (a database locked by someone else), the
        writer is aborted: what is still queued and the batch in flight go to the dead-letter file.
        """
        self.request_stop()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        if not self._thread.is_alive():
            if self._alive:  # pragma: no cover - only if the thread was killed from outside
                self._alive = False
            left = self._drain_here()
            self._close_connection()
            # A dead thread's leftovers that could not be committed make close() report False,
            # as a timed-out drain does: the operator has entries to replay.
            return left == 0, left
        self._abort.set()
        before = self.dead_lettered
        self._aside.track()
        self._dead_letter_queue("close() timed out while the database was busy")
        # The writer dead-letters its batch in flight once its current attempt ends (or commits
        # it, if the lock went away meanwhile): count what really happened.
        self._thread.join(_ABORT_GRACE_S)
        left = self.dead_lettered - before
        if self._thread.is_alive():  # pragma: no cover - an attempt outlasting the grace period
            left += len(self._inflight)
        # Where they went: the dead-letter file, or side files when its lock was taken.
        files = self._aside.tracked() or [self._dead_letters.path]
        self.moved_to = ", ".join(str(f) for f in files)
        logger.error(
            "audit writer did not drain within %.1fs; %d entries moved to %s",
            timeout_s or 0.0,
            left,
            self.moved_to,
        )
        self.last_error = f"close() timed out; {left} entries moved to {self.moved_to}"
        return False, left

    def _drain_here(self) -> int:
        """Write what a dead writer thread left in the queue, from the calling thread.

        Returns how many entries went to the dead-letter file instead of the database.
        """
        # The batch the thread had in hand comes first: it was taken off the queue first. Its
        # rows already committed or dead-lettered (the thread died mid-split) are not redone.
        done = self._inflight_done
        queued, slots = self._queue.drain()
        rows = self._inflight[done:] + queued
        slots += self._inflight_slots
        self._inflight, self._inflight_done, self._inflight_slots = [], 0, 0
        if not rows:
            self._advance(slots)
            return 0
        before = self.dead_lettered
        if self._committer.sink is None:
            try:
                self._committer.sink = self._open_sink()
            except Exception as exc:
                self._dead_letter(rows, f"could not reopen the database: {exc}")
                self._advance(slots)
                return len(rows)
        self._write(rows)
        self._advance(slots)
        return self.dead_lettered - before

    def _close_connection(self) -> None:
        sink, self._committer.sink = self._committer.sink, None
        if sink is not None:
            with self.fork_gate:
                sink.close()
        if self.checkpointer is not None:
            with self.fork_gate:
                self.checkpointer.close()

    # -- writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        finished = False
        self._committer.read_tail()
        if self.checkpointer is not None:
            with self.fork_gate:
                self.checkpointer.start()
        try:
            while True:
                try:
                    stop = self._run_once()
                except BaseException as exc:  # nothing may end this loop
                    self._recover(exc)
                    continue
                if stop:
                    break
            finished = True
            if not self._abort.is_set():  # the last drain is committed: sign what is new
                self._checkpoint(final=True)
            self._close_connection()
        finally:
            # If the thread dies some other way, the connection stays open so that stop() can
            # still write what is queued from the caller's thread.
            with self._progress:
                self._alive = False
                self._progress.notify_all()
            if not finished:
                self.last_error = "the writer thread died; close() writes the queue itself"
                logger.critical("audit writer thread died; close() will write the queue itself")

    def _recover(self, exc: BaseException) -> None:
        """After the loop itself failed (a bug, not a write error): set the batch aside, go on."""
        logger.critical("audit writer loop failed; continuing", exc_info=exc)
        self.last_error = f"writer loop error: {exc!r}"
        batch, done, slots = self._inflight, self._inflight_done, self._inflight_slots
        self._inflight, self._inflight_done, self._inflight_slots = [], 0, 0
        if batch[done:]:
            self.loop_failures += 1
            self._dead_letter(batch[done:], self.last_error)
        self._advance(slots)

    def _run_once(self) -> bool:
        batch, stop = self._collect()
        if batch:
            self._write(batch)
        if self._inflight_slots:  # voids alone are finished too
            slots = self._inflight_slots
            self._inflight, self._inflight_slots = [], 0
            self._advance(slots)
        if not stop:  # after a commit, or an idle wake-up (checkpoint_interval)
            self._checkpoint(final=False)
        return stop

    def _checkpoint(self, *, final: bool) -> None:
        checkpointer, tail = self.checkpointer, self._committer.tail
        if checkpointer is None or tail is None:
            return
        if tail[0] > checkpointer.signed_head if final else checkpointer.due(tail[0]):
            with self.fork_gate:
                checkpointer.make(tail)

    def _collect(self) -> tuple[list[Row], bool]:
        """Take up to one batch from the queue; returns (batch, writer should stop)."""
        batch, slots = self._queue.take(self._batch_size, self._flush_interval_s, self._urgent)
        self._inflight, self._inflight_done, self._inflight_slots = batch, 0, slots
        if self._abort.is_set():
            return batch, True
        # Stop once closing and nothing is left: close() accepts nothing new after _stopping.
        return batch, not batch and self._stopping and not self._queue.depth()

    def _urgent(self) -> bool:
        # Commit what is there now: someone waits for it (flush, critical entry) or we close.
        return self._stopping or self._flush_target > self._processed or self._abort.is_set()

    def _write(self, rows: Sequence[Row]) -> None:
        """Commit ``rows``; isolate and dead-letter the ones that cannot be committed."""
        self._committer.commit(rows)

    def _dead_letter(self, rows: Sequence[Row], error: str) -> None:
        """Set ``rows`` aside: the dead-letter file, else the log. Never raises."""
        self._committer.set_aside(rows, error)

    def _dead_letter_queue(self, error: str) -> int:
        rows, slots = self._queue.drain()
        self._dead_letter(rows, error)
        self._advance(slots)
        return len(rows)

    def _advance(self, count: int) -> None:
        with self._progress:
            self._processed += count
            self._progress.notify_all()
