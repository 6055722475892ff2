"""Retention: delete old rows in short batches without breaking the hash chain.

Only a *prefix* of the chain is ever deleted: the rows before the first row whose timestamp is at
or after the cutoff. (A row with an old timestamp that was committed after a newer one waits until
the prefix reaches it.) Each batch is its own short transaction and moves the run's anchor — the
last deleted id and hash, the rows deleted, the newest purged timestamp, the cutoff — so
``verify()`` still proves the rows that remain and can check the purge itself (see
:mod:`audit_engine.storage.anchors`). Every run that deletes something logs one INFO line.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict

from audit_engine import forks
from audit_engine.errors import AuditStoreError
from audit_engine.models import format_timestamp, utcnow
from audit_engine.storage.anchors import extend_anchor, keyed_from, record_run
from audit_engine.storage.dialect import (
    DATABASE_ERRORS,
    AnyConnection,
    begin_write,
    commit,
    is_busy,
    mark_purge,
    rollback_quietly,
    unmark_purge,
)
from audit_engine.storage.leaves import frontier_through
from audit_engine.storage.linker import UNKEYED, Linker
from audit_engine.storage.sqlite.schema import TABLE

logger = logging.getLogger("audit_engine.retention")  # the documented logger name

CLEANUP_THREAD_NAME = "audit-cleanup"
DEFAULT_CLEANUP_BATCH_SIZE = 10_000
BUSY_RETRY_S = 60.0


class CleanupReport(BaseModel):
    """What one purge did (or, with ``dry_run``, would do)."""

    model_config = ConfigDict(frozen=True)

    cutoff: datetime
    rows_deleted: int
    batches: int
    duration_s: float
    dry_run: bool = False


def cutoff_for(older_than: timedelta | datetime) -> datetime:
    """The cutoff instant for ``older_than`` (an age, or an aware datetime)."""
    if isinstance(older_than, timedelta):
        if older_than <= timedelta(0):
            raise AuditStoreError(f"older_than must be a positive duration (got {older_than})")
        try:
            return utcnow() - older_than
        except OverflowError:
            raise AuditStoreError(f"older_than reaches before year 1 (got {older_than})") from None
    if isinstance(older_than, datetime):
        if older_than.tzinfo is None:
            raise AuditStoreError("older_than must be timezone-aware (got a naive datetime)")
        if older_than > utcnow():
            # A purge deletes the past only; verify() refuses an anchor cut after its purge.
            raise AuditStoreError(
                f"older_than must not be in the future (got {older_than.isoformat()})"
            )
        return older_than
    raise AuditStoreError(
        f"older_than must be a timedelta or a datetime (got {type(older_than).__name__})"
    )


# Planning reads the table through its primary key only, a batch-sized window at a time: a
# "min(id) WHERE timestamp >= ?" over the whole table would walk every old row on every batch.
# min() and max() each in a subquery of its own: together in one SELECT, SQLite cannot answer
# them from the ends of the primary key and scans a whole index instead (~0.1 us a row, twice
# per batch: seconds per batch on a trail of millions).
_ENDS_SQL = f"SELECT (SELECT min(id) FROM {TABLE}), (SELECT max(id) FROM {TABLE})"
_FIRST_KEPT_SQL = f"SELECT min(id) FROM {TABLE} WHERE id BETWEEN ? AND ? AND timestamp >= ?"


def _plan(conn: AnyConnection, cutoff_text: str, batch_size: int) -> int | None:
    """The last id the next batch deletes, or None when the prefix is gone."""
    lowest, highest = conn.execute(_ENDS_SQL).fetchone()
    if lowest is None:
        return None
    window_end = min(lowest + batch_size - 1, highest)
    first_kept = conn.execute(_FIRST_KEPT_SQL, (lowest, window_end, cutoff_text)).fetchone()[0]
    upto = window_end if first_kept is None else first_kept - 1
    return int(upto) if upto >= lowest else None


def _prefix_rows(conn: AnyConnection, cutoff_text: str, step: int) -> int:
    """How many rows the prefix holds (a dry run), window by window."""
    lowest, highest = conn.execute(_ENDS_SQL).fetchone()
    if lowest is None:
        return 0
    start = lowest
    while start <= highest:
        end = min(start + step - 1, highest)
        first_kept = conn.execute(_FIRST_KEPT_SQL, (start, end, cutoff_text)).fetchone()[0]
        if first_kept is not None:
            end = first_kept - 1
            break
        start = end + 1
    else:
        end = highest
    return int(conn.execute(f"SELECT count(*) FROM {TABLE} WHERE id <= ?", (end,)).fetchone()[0])


def purge(
    conn: AnyConnection,
    cutoff: datetime,
    batch_size: int,
    *,
    dry_run: bool = False,
    record_empty_run: bool = True,
    should_stop: Callable[[], bool] = lambda: False,
    gate: AbstractContextManager[Any] | None = None,
    on_batch: Callable[[int], None] | None = None,
    wait: Callable[[float], bool] | None = None,
    older_than: timedelta | None = None,
    linker: Linker = UNKEYED,
) -> CleanupReport:
    """Delete the prefix of rows older than ``cutoff`` in transactions of ``batch_size`` rows.

    ``conn`` is in autocommit mode. The run is kept in the cleanup-runs table (unless it deleted
    nothing and ``record_empty_run`` is False, or it is a dry run). ``gate`` is held around each
    step that is inside SQLite (the service's writer gate, so writer and cleanup take turns).
    ``on_batch(rows)`` is called after each committed batch (a progress bar). A batch that
    meets a busy database is retried with backoff for up to :data:`BUSY_RETRY_S` seconds;
    ``wait(seconds)`` does the waiting and returns True to give up (the cleanup thread's stop).
    ``older_than``, the age the cutoff was computed from (None: a cutoff given as a datetime),
    is kept in the anchor. ``linker``: the chain key the anchors over keyed rows are keyed
    with (a keyed trail's purge needs it: see storage/anchors.py).
    """
    held = gate if gate is not None else contextlib.nullcontext()
    wait = wait if wait is not None else threading.Event().wait
    if batch_size <= 0:
        raise AuditStoreError(f"batch_size must be a positive number of rows (got {batch_size})")
    started_at = utcnow()
    started = time.perf_counter()
    cutoff_text = format_timestamp(cutoff)
    if dry_run:
        return CleanupReport(
            cutoff=cutoff,
            rows_deleted=_prefix_rows(conn, cutoff_text, max(batch_size, 10_000)),
            batches=0,
            duration_s=time.perf_counter() - started,
            dry_run=True,
        )
    deleted = batches = 0
    anchor_id: int | None = None
    older_than_us = None if older_than is None else older_than // timedelta(microseconds=1)
    # A read outside any transaction first: a run with nothing to delete never takes the lock.
    while not should_stop():
        with held:
            if _plan(conn, cutoff_text, batch_size) is None:
                break
        anchor_id, count = _delete_with_retries(
            conn, (cutoff_text, older_than_us), batch_size, anchor_id, held, wait, linker
        )
        if not count:
            break
        deleted += count
        batches += 1
        if on_batch is not None:
            on_batch(count)
    report = CleanupReport(
        cutoff=cutoff,
        rows_deleted=deleted,
        batches=batches,
        duration_s=time.perf_counter() - started,
    )
    if deleted or record_empty_run:
        with held:
            _record_run(conn, report, started_at)
    if deleted:
        # Deleting audit data is worth a line in the application's log, every time.
        logger.info(
            "audit retention purged %d %s older than %s in %d %s",
            deleted,
            "entry" if deleted == 1 else "entries",
            cutoff_text,
            batches,
            "batch" if batches == 1 else "batches",
        )
    return report


def _delete_with_retries(
    conn: AnyConnection,
    cutoff: tuple[str, int | None],
    batch_size: int,
    anchor_id: int | None,
    held: AbstractContextManager[Any],
    wait: Callable[[float], bool],
    linker: Linker,
) -> tuple[int | None, int]:
    # A busy writer retakes the lock right after each commit; SQLite's own busy wait is no
    # queue, so the purge keeps trying (with backoff) instead of failing the whole run.
    deadline = time.monotonic() + BUSY_RETRY_S
    delay = 0.01
    while True:
        try:
            with held:
                return _delete_batch(conn, cutoff, batch_size, anchor_id, linker)
        except DATABASE_ERRORS as exc:
            if not is_busy(exc) or time.monotonic() >= deadline or wait(delay):
                raise
            delay = min(delay * 2, 0.5)


def _delete_batch(
    conn: AnyConnection,
    cutoff: tuple[str, int | None],
    batch_size: int,
    anchor_id: int | None,
    linker: Linker = UNKEYED,
) -> tuple[int | None, int]:
    """Delete the next batch of the prefix and move the run's anchor there, in one transaction.

    ``cutoff`` is the cutoff's stored text and the age it came from in microseconds (or None).
    The batch is planned again under the write lock, so it matches the table as it is now.
    """
    cutoff_text, older_than_us = cutoff
    begin_write(conn)
    try:
        upto = _plan(conn, cutoff_text, batch_size)
        if upto is None:
            commit(conn)
            return anchor_id, 0
        last = conn.execute(
            f"SELECT id, hash FROM {TABLE} WHERE id <= ? ORDER BY id DESC LIMIT 1", (upto,)
        ).fetchone()
        # Not max(timestamp) alone: SQLite would answer it from the timestamp index, walking
        # down from the newest time past every row kept until one is <= upto (per batch).
        newest = conn.execute(
            f"SELECT max(timestamp), count(*) FROM {TABLE} WHERE id <= ?", (upto,)
        ).fetchone()[0]
        key = _anchor_key(conn, last[0], linker)
        # The anchor keeps the Merkle tree over what it replaces: read before the rows go.
        merkle = frontier_through(conn, last[0]).to_text()
        # Only a transaction with the purge's marker gets past the append-only guard.
        mark_purge(conn)
        count = conn.execute(f"DELETE FROM {TABLE} WHERE id <= ?", (upto,)).rowcount
        anchor_id = extend_anchor(
            conn,
            anchor_id,
            last=(last[0], last[1]),
            count=count,
            newest=newest,
            cutoff=cutoff_text,
            older_than_us=older_than_us,
            created_at=utcnow().isoformat(),
            merkle=merkle,
            key=key,
        )
        unmark_purge(conn)
        commit(conn)
    except BaseException:
        rollback_quietly(conn)
        raise
    return anchor_id, count


def _record_run(conn: AnyConnection, report: CleanupReport, started_at: datetime) -> None:
    # In its own write transaction: the run chain's tail cannot move between read and insert.
    begin_write(conn)
    try:
        record_run(
            conn,
            (
                started_at.isoformat(),
                utcnow().isoformat(),
                format_timestamp(report.cutoff),  # the same form as the anchors' cutoff
                report.rows_deleted,
                report.batches,
                # Rounded as the run's canonical form spells it (six decimals).
                round(report.duration_s, 6),
            ),
        )
        commit(conn)
    except BaseException:
        rollback_quietly(conn)
        raise


def _anchor_key(conn: AnyConnection, last_id: int, linker: Linker) -> bytes | None:
    """The key of an anchor over rows up to ``last_id``: keyed over keyed rows, else None."""
    first_keyed = keyed_from(conn)
    if first_keyed is None or last_id < first_keyed:
        return None
    if linker.key is None:
        raise AuditStoreError(
            f"this trail is keyed from id {first_keyed} on: purging its keyed rows needs the chain "
            "key (chain_key_file, AUDIT_TRAIL_CHAIN_KEY_FILE, or --chain-key-file), since the "
            "purge record that replaces them is keyed too"
        )
    return linker.key


class CleanupThread:
    """Purges rows older than the retention period every ``interval_s`` seconds.

    A daemon thread named ``audit-cleanup`` with its own connection. It waits on an Event between
    runs (no polling), stops between batches when asked, and never dies from a purge error.
    """

    def __init__(
        self,
        connect: Callable[[], AnyConnection],
        *,
        retention: timedelta,
        batch_size: int,
        interval_s: float,
        gate: threading.RLock | None = None,
        linker: Linker = UNKEYED,
    ) -> None:
        self._connect = connect
        self._linker = linker  # a keyed trail's anchors are keyed (storage/anchors.py)
        self._retention = retention
        self._batch_size = batch_size
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        # Held while this thread is inside SQLite: opening its connection, or one purge step (one
        # batch of deletes, which may wait up to its connection's busy timeout). os.fork() waits
        # for it (audit_engine.forks). The service passes its writer's gate, so that writer and
        # cleanup take turns fairly.
        self.fork_gate = gate if gate is not None else threading.RLock()
        self.runs = 0
        self.rows_deleted = 0
        self.last_report: CleanupReport | None = None
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name=CLEANUP_THREAD_NAME, daemon=True)
        self._thread.start()
        forks.register(self)

    def fork_gates(self) -> tuple[threading.RLock]:
        """The gate this thread holds while inside SQLite (see ``__init__``)."""
        return (self.fork_gate,)

    def after_fork_in_child(self) -> None:
        """Nothing: the thread does not survive a fork; the owner starts a new one if it wants."""

    def _run(self) -> None:
        conn: AnyConnection | None = None
        try:
            while not self._stop.is_set():
                try:
                    if conn is None:
                        with self.fork_gate:
                            conn = self._connect()
                    report = purge(
                        conn,
                        cutoff_for(self._retention),
                        self._batch_size,
                        record_empty_run=False,  # an hourly no-op is not worth a write
                        should_stop=self._stop.is_set,
                        gate=self.fork_gate,
                        wait=self._stop.wait,
                        older_than=self._retention,
                        linker=self._linker,
                    )
                except Exception as exc:  # a locked or broken database: try again next time
                    self.last_error = f"cleanup failed: {exc}"
                    logger.warning(
                        "audit cleanup failed; retrying in %ss: %s", self._interval_s, exc
                    )
                    # A server that restarted took the connection along: a new one next time.
                    if conn is not None:
                        with self.fork_gate, contextlib.suppress(Exception):
                            conn.close()
                        conn = None
                else:
                    with self._lock:
                        self.runs += 1
                        self.rows_deleted += report.rows_deleted
                        self.last_report = report
                self._stop.wait(self._interval_s)
        finally:
            if conn is not None:
                with self.fork_gate:
                    conn.close()

    def request_stop(self) -> None:
        """Ask the thread to stop after its current batch; does not wait."""
        self._stop.set()

    def stop(self, timeout_s: float) -> None:
        """Ask the thread to stop (between batches) and wait up to ``timeout_s`` seconds."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()
