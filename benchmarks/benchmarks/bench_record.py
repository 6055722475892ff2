"""record() in async (write-behind) mode against sync mode (INSERT + COMMIT per event).

Every benchmark records the same realistic row (see ``_fields``) into a fresh database in a
temporary directory, with the default settings except those named. Numbers and how to read them:
docs/performance.md.

The installed asv runner re-runs ``setup()`` before every timed call when a class has one, and
``--quick`` takes a single sample; so a ``time_*`` benchmark here times a burst of calls (its name
says how many), never one call on its own. The per-call distribution (p50, p99) comes from
``CallerLatency``, which times each call with ``time.perf_counter_ns``.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from audit_engine import AuditEntry, AuditService, AuditSettings
from audit_engine.rows import entry_row
from audit_engine.storage import sqlite as store

# The suite measures the defaults: AUDIT_TRAIL_* variables in a developer's shell must not change
# them (asv imports this module in processes of its own, so this touches nothing else).
for _name in [name for name in os.environ if name.upper().startswith("AUDIT_TRAIL_")]:
    del os.environ[_name]

# Large enough that the queue never fills while a benchmark runs: what is timed is the hand-off,
# not back-pressure.
LARGE_QUEUE = 1_000_000
BURST = 500  # record() calls per time_record_500 sample
ASYNC_EVENTS = 20_000
SYNC_EVENTS = 2_000  # sync mode is slower: fewer events keep the run short
ROUNDS = 5  # track_*_events_per_s report the median of this many rounds
WARMUP = 200  # calls made, untimed, before the per-call latencies are taken
QUEUED = 10_000


def _fields(i: int) -> dict[str, Any]:
    """The realistic row: a user saves a note."""
    return {
        "action": "note.save",
        "actor": "alice",
        "operation": "update",
        "resource_type": "note",
        "resource_id": str(i),
        "details": {"bytes": 812, "title": "Quarterly plan"},
    }


def _record(record: Callable[..., Any], i: int) -> None:
    record(**_fields(i))


class _ServiceInTempDir:
    """setup()/teardown() that give each benchmark a service on a fresh database."""

    async_writes = True
    queue_maxsize = LARGE_QUEUE

    def setup(self, *params: Any) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="audit-bench-")
        self.database = Path(self._tmp.name) / "audit.db"
        self.audit = AuditService(
            AuditSettings(
                database=self.database,
                async_writes=self._async_writes(*params),
                queue_maxsize=self.queue_maxsize,
            )
        )

    def _async_writes(self, *params: Any) -> bool:
        return self.async_writes

    def teardown(self, *params: Any) -> None:
        try:
            self.audit.flush()
            self.audit.close()
        finally:
            self._tmp.cleanup()


class RecordCallerCost(_ServiceInTempDir):
    """What record() costs the calling thread: async (hand-off to the queue) vs sync (commit)."""

    params: ClassVar[list[str]] = ["async", "sync"]
    param_names: ClassVar[list[str]] = ["mode"]

    def _async_writes(self, mode: str) -> bool:
        return mode == "async"

    def time_record_500(self, mode: str) -> None:
        """500 record() calls; divide by 500 for the cost of one."""
        record = self.audit.record
        for i in range(BURST):
            _record(record, i)


def _rate(audit: AuditService, events: int) -> float:
    """Record ``events`` rows, wait until they are committed; events per second."""
    record = audit.record
    start = time.perf_counter()
    for i in range(events):
        _record(record, i)
    if not audit.flush():
        raise RuntimeError("flush() did not complete")
    return events / (time.perf_counter() - start)


def _events_per_s(audit: AuditService, events: int) -> float:
    """The median of ROUNDS rates."""
    return statistics.median(_rate(audit, events) for _ in range(ROUNDS))


class AsyncThroughput(_ServiceInTempDir):
    """End to end in async mode: record N entries, then flush() until all are committed."""

    timeout = 180

    def time_async_record_20000_then_flush(self) -> None:
        record = self.audit.record
        for i in range(ASYNC_EVENTS):
            _record(record, i)
        self.audit.flush()

    def track_async_events_per_s(self) -> float:
        """Entries committed per second, record() of 20 000 through flush(); median of 5."""
        return _events_per_s(self.audit, ASYNC_EVENTS)

    track_async_events_per_s.unit = "events/s"  # type: ignore[attr-defined]


class SyncThroughput(_ServiceInTempDir):
    """End to end in sync mode (async_writes=False): each record() is INSERT + COMMIT."""

    async_writes = False
    timeout = 180

    def time_sync_record_2000(self) -> None:
        record = self.audit.record
        for i in range(SYNC_EVENTS):
            _record(record, i)

    def track_sync_events_per_s(self) -> float:
        """Entries committed per second over 2 000 record() calls; median of 5."""
        return _events_per_s(self.audit, SYNC_EVENTS)

    track_sync_events_per_s.unit = "events/s"  # type: ignore[attr-defined]


class AsyncOverSync:
    """Async events/s divided by sync events/s, the two measured in alternating rounds.

    On a noisy machine a ratio taken side by side is steadier than two rates taken a minute
    apart. Each round: 2 000 sync record() calls, then 20 000 async ones and flush().
    """

    timeout = 180
    unit = "x"

    def setup(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="audit-bench-")
        directory = Path(self._tmp.name)
        self.services = {
            mode: AuditService(
                AuditSettings(
                    database=directory / f"{mode}.db",
                    async_writes=mode == "async",
                    queue_maxsize=LARGE_QUEUE,
                )
            )
            for mode in ("async", "sync")
        }

    def teardown(self) -> None:
        try:
            for audit in self.services.values():
                audit.close()
        finally:
            self._tmp.cleanup()

    def track_async_over_sync_events_per_s(self) -> float:
        ratios = []
        for _ in range(ROUNDS):
            sync_rate = _rate(self.services["sync"], SYNC_EVENTS)
            async_rate = _rate(self.services["async"], ASYNC_EVENTS)
            ratios.append(async_rate / sync_rate)
        return statistics.median(ratios)


def _latencies_us(async_writes: bool, events: int) -> list[float]:
    """Time each of ``events`` record() calls on its own, in microseconds."""
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as tmp:
        settings = AuditSettings(
            database=Path(tmp) / "audit.db",
            async_writes=async_writes,
            queue_maxsize=LARGE_QUEUE,
        )
        with AuditService(settings) as audit:
            record = audit.record
            for i in range(WARMUP):
                _record(record, i)
            clock = time.perf_counter_ns
            samples = []
            for i in range(events):
                start = clock()
                _record(record, i)
                samples.append(clock() - start)
            audit.flush()
    return [ns / 1000 for ns in samples]


def _percentile(samples: list[float], p: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[p - 1]


class CallerLatency:
    """Per-call cost of record() in the caller's thread: p50 and p99.

    One measuring run per mode (20 000 async calls, 2 000 sync calls, after 200 untimed ones)
    in ``setup_cache``; every track_* below reads its percentile from that same sample.
    """

    timeout = 180
    unit = "us"  # of every track_* here

    def setup_cache(self) -> dict[str, dict[str, float]]:
        result = {}
        for mode, async_writes, events in (
            ("async", True, ASYNC_EVENTS),
            ("sync", False, SYNC_EVENTS),
        ):
            samples = _latencies_us(async_writes, events)
            result[mode] = {"p50": _percentile(samples, 50), "p99": _percentile(samples, 99)}
        return result

    def track_caller_p50_us(self, cache: dict[str, dict[str, float]]) -> float:
        """Median time of one async record() call."""
        return cache["async"]["p50"]

    def track_caller_p99_us(self, cache: dict[str, dict[str, float]]) -> float:
        """99th percentile of one async record() call."""
        return cache["async"]["p99"]

    def track_sync_caller_p50_us(self, cache: dict[str, dict[str, float]]) -> float:
        """Median time of one sync record() call (INSERT + COMMIT)."""
        return cache["sync"]["p50"]

    def track_sync_caller_p99_us(self, cache: dict[str, dict[str, float]]) -> float:
        """99th percentile of one sync record() call (INSERT + COMMIT)."""
        return cache["sync"]["p99"]


class QueuedMemory(_ServiceInTempDir):
    """Python memory held by 10 000 accepted entries that the writer cannot commit yet.

    Another connection holds the write lock (BEGIN IMMEDIATE), so the writer retries its first
    batch while everything else waits in the queue; tracemalloc counts what record() left behind.
    """

    queue_maxsize = 2 * QUEUED

    def setup(self, *params: Any) -> None:
        super().setup(*params)
        self.locker = sqlite3.connect(self.database, isolation_level=None)
        self.locker.execute("BEGIN IMMEDIATE")

    def teardown(self, *params: Any) -> None:
        self.locker.execute("ROLLBACK")
        self.locker.close()
        super().teardown(*params)

    def track_queued_10000_entries_kib(self) -> float:
        record = self.audit.record
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(QUEUED):
                _record(record, i)
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        stats = self.audit.stats()
        if stats.written or stats.accepted != QUEUED:
            raise RuntimeError(f"entries were not all held back: {stats}")
        return (after - before) / 1024

    track_queued_10000_entries_kib.unit = "KiB"  # type: ignore[attr-defined]


class Breakdown:
    """Where the time of one entry goes: the caller's validation, the writer's batch commit.

    Neither runs a service: they time the two halves of the work on their own, for comparison
    with RecordCallerCost.time_record_500 (both time 500 entries).
    """

    number = 1  # a written batch cannot be written again (event_id is unique): fresh setup each

    def setup(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="audit-bench-")
        self.conn = store.open_connection(Path(self._tmp.name) / "audit.db")
        self.context = {"max_details_bytes": AuditSettings().max_details_bytes}
        self.entries = [
            AuditEntry.model_validate(_fields(i), context=self.context) for i in range(BURST)
        ]

    def teardown(self) -> None:
        self.conn.close()
        self._tmp.cleanup()

    def time_validate_500(self) -> None:
        """What record() does in the caller before the hand-off: AuditEntry.model_validate."""
        context = self.context
        for i in range(BURST):
            AuditEntry.model_validate(_fields(i), context=context)

    def time_write_batch_500(self) -> None:
        """What the writer thread does per batch: one transaction of 500 validated entries."""
        # Converted here, as write_batch did itself before it took only rows: the figure stays
        # comparable with earlier runs.
        store.write_batch(self.conn, [entry_row(e) for e in self.entries])
