"""Integrity and retention: how fast verify() walks the chain, and what a purge costs the app.

* ``Verify``: ``AuditStore.verify()`` over a database of 200 000 chained rows.
* ``PurgeUnderLoad``: a purge of 1 000 000 old rows (``AuditStore.purge``, batches of 10 000) in
  one thread while the caller records continuously (5 000 calls/s) through an async
  ``AuditService``: the caller's p99, the writer's longest batch and the purge's rows/s, next
  to the same caller and writer figures measured on the same database just before, with no
  purge running.

Both build their database in ``setup_cache`` (asv runs it once per class and hands its result
to every benchmark of the class): rows are validated once, then linked and inserted by
``store.write_batch`` in large batches, as the writer thread would but without a queue.
Numbers and how to read them: docs/performance.md.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from audit_engine import AuditEntry, AuditService, AuditSettings, AuditStore
from audit_engine.rows import entry_row
from audit_engine.storage import sqlite as store
from audit_engine.storage.retention import CleanupReport

from .bench_record import _fields  # the realistic row: a user saves a note

# The suite measures the defaults: AUDIT_TRAIL_* variables in a developer's shell must not change
# them (asv imports this module in processes of its own, so this touches nothing else).
for _name in [name for name in os.environ if name.upper().startswith("AUDIT_TRAIL_")]:
    del os.environ[_name]

VERIFY_ROWS = 200_000
VERIFY_ROUNDS = 3  # track_verify_rows_per_s reports the median of this many verify() runs
PURGE_ROWS = 1_000_000
PURGE_BATCH = 10_000  # AuditStore.purge's default, and the default cleanup_batch_size
BASELINE_CALLS = 50_000  # record() calls timed with no purge running
RATE = 5_000  # record() calls per second in both phases: a busy tool, below the writer's capacity
PACE_BURST = 50  # calls between two checks of the pace
MAX_CALLS = 2_000_000  # a bound on the loop that records for as long as the purge runs
WARMUP = 200  # record() calls made, untimed, before the per-call latencies are taken
LARGE_QUEUE = 2_000_000  # no call ever waits for room in the queue: the hand-off is timed
OLD = timedelta(days=200)
RETENTION = timedelta(days=90)


def fill(path: Path, rows: int, batch: int, age: timedelta) -> float:
    """Commit ``rows`` chained entries stamped ``age`` ago, ``batch`` per transaction; seconds.

    One entry is validated, then copied with a new event id and timestamp: the rows are the
    same as record() would store, without paying pydantic's validation a million times.
    """
    template = AuditEntry.model_validate(_fields(0))
    start = datetime.now(UTC) - age
    conn = store.open_connection(path)
    try:
        started = time.perf_counter()
        for first in range(0, rows, batch):
            entries = [
                template.model_copy(
                    update={
                        "event_id": f"00000000-0000-7000-8000-{i:012x}",
                        "timestamp": start + timedelta(microseconds=i),
                        "resource_id": str(i),
                    }
                )
                for i in range(first, min(first + batch, rows))
            ]
            store.write_batch(conn, [entry_row(e) for e in entries])
        return time.perf_counter() - started
    finally:
        conn.close()


def _percentile(samples: list[float], p: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[p - 1]


class Verify:
    """verify() over 200 000 rows: the per-row SHA-256 and canonical form, streamed."""

    timeout = 300

    def setup_cache(self) -> str:
        # asv runs setup_cache in a directory of its own, kept until this class is done.
        path = Path("verify.db").resolve()
        fill(path, VERIFY_ROWS, 5_000, timedelta(days=1))
        return str(path)

    setup_cache.timeout = 300  # type: ignore[attr-defined]

    def time_verify_200k(self, path: str) -> None:
        with AuditStore(path) as audit_store:
            report = audit_store.verify()
        if not report.ok or report.rows_checked != VERIFY_ROWS:
            raise RuntimeError(f"verify() did not check the whole chain: {report}")

    def track_verify_rows_per_s(self, path: str) -> float:
        """Rows verified per second; median of 3 verify() runs."""
        rates = []
        with AuditStore(path) as audit_store:
            for _ in range(VERIFY_ROUNDS):
                started = time.perf_counter()
                report = audit_store.verify()
                elapsed = time.perf_counter() - started
                if not report.ok or report.rows_checked != VERIFY_ROWS:
                    raise RuntimeError(f"verify() did not check the whole chain: {report}")
                rates.append(report.rows_checked / elapsed)
        return statistics.median(rates)

    track_verify_rows_per_s.unit = "rows/s"  # type: ignore[attr-defined]


def _service(path: Path) -> AuditService:
    # No cleanup thread: the service must not purge the old rows itself before the purge runs.
    return AuditService(
        AuditSettings(database=path, cleanup_enabled=False, queue_maxsize=LARGE_QUEUE)
    )


def _record_timed(audit: AuditService, first: int, keep_going: Any) -> list[float]:
    """record() at RATE calls per second until ``keep_going()`` is false; each call in µs.

    Calls come in bursts of PACE_BURST, then the caller sleeps until the schedule catches up
    (untimed), as a busy app would: an unpaced loop offers more than the writer can commit
    while a purge holds the write lock, and then the purge, not the app, gives way (see
    docs/performance.md).
    """
    record = audit.record
    clock = time.perf_counter_ns
    samples: list[int] = []
    i = first
    started = time.perf_counter()
    while keep_going() and len(samples) < MAX_CALLS:
        for _ in range(PACE_BURST):
            fields = _fields(i)
            before = clock()
            record(**fields)
            samples.append(clock() - before)
            i += 1
        ahead = started + len(samples) / RATE - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
    return [ns / 1000 for ns in samples]


def _measure(path: Path, purge: bool) -> dict[str, float]:
    """One phase on the database at ``path``: a fresh service, warm-up, then the timed calls.

    Without ``purge``: BASELINE_CALLS calls. With it: calls for as long as another thread's
    ``AuditStore(path).purge(...)`` runs.
    """
    result: dict[str, float] = {}
    with _service(path) as audit:
        for i in range(WARMUP):
            audit.record(**_fields(i))
        if not audit.flush():
            raise RuntimeError("flush() did not complete")
        if purge:
            reports: list[CleanupReport | Exception] = []

            def run_purge() -> None:
                try:
                    with AuditStore(path) as audit_store:
                        reports.append(audit_store.purge(RETENTION, batch_size=PURGE_BATCH))
                except Exception as exc:  # e.g. "database is locked": reported below
                    reports.append(exc)

            purger = threading.Thread(target=run_purge, name="bench-purge")
            purger.start()
            samples = _record_timed(audit, WARMUP, purger.is_alive)
            purger.join()
            report = reports[0] if reports else None
            if not isinstance(report, CleanupReport) or report.rows_deleted != PURGE_ROWS:
                raise RuntimeError(f"the purge did not delete the old rows: {reports}")
            result["purge_s"] = report.duration_s
            result["purge_batches"] = report.batches
        else:
            calls = iter(range(BASELINE_CALLS // PACE_BURST))
            samples = _record_timed(audit, WARMUP, lambda: next(calls, None) is not None)
        if not audit.flush():
            raise RuntimeError("flush() did not complete")
        stats = audit.stats()
    result.update(
        calls=len(samples),
        p50_us=_percentile(samples, 50),
        p99_us=_percentile(samples, 99),
        longest_batch_ms=stats.longest_batch_s * 1000,
        writer_batches=stats.batches,
    )
    return result


class PurgeUnderLoad:
    """A purge of 1 000 000 old rows while the app records: what the caller and writer see.

    ``setup_cache`` does the whole measurement once: fill the database with 1 000 000 rows
    stamped 200 days ago; record 50 000 entries through a fresh async service with no purge
    running (the baseline); then, through another fresh service, record for as long as a
    thread purges everything older than 90 days in batches of 10 000. Both phases offer 5 000
    record() calls per second and time each with ``time.perf_counter_ns``, after 200 untimed
    calls. Afterwards the whole chain must still verify. Every track_* below reads its figure
    from that one run.
    """

    timeout = 300

    def setup_cache(self) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="audit-bench-") as tmp:
            path = Path(tmp) / "audit.db"
            fill_s = fill(path, PURGE_ROWS, PURGE_BATCH, OLD)
            baseline = _measure(path, purge=False)
            loaded = _measure(path, purge=True)
            with AuditStore(path) as audit_store:
                report = audit_store.verify()
            expected = BASELINE_CALLS + loaded["calls"] + 2 * WARMUP
            if not report.ok or report.rows_checked != expected:
                raise RuntimeError(f"the chain is broken after the purge: {report}")
        return {"fill_s": fill_s, "baseline": baseline, "purge": loaded}

    setup_cache.timeout = 300  # type: ignore[attr-defined]

    def track_purge_prefill_rows_per_s(self, cache: dict[str, Any]) -> float:
        """How fast setup filled the database (store.write_batch, 10 000 rows per batch)."""
        return PURGE_ROWS / cache["fill_s"]

    track_purge_prefill_rows_per_s.unit = "rows/s"  # type: ignore[attr-defined]

    def track_purge_rows_per_s(self, cache: dict[str, Any]) -> float:
        """Rows the purge deleted per second while the app was recording."""
        return PURGE_ROWS / cache["purge"]["purge_s"]

    track_purge_rows_per_s.unit = "rows/s"  # type: ignore[attr-defined]

    def track_purge_caller_p99_us(self, cache: dict[str, Any]) -> float:
        """p99 of one record() call while the purge runs."""
        return float(cache["purge"]["p99_us"])

    track_purge_caller_p99_us.unit = "us"  # type: ignore[attr-defined]

    def track_caller_p99_us_without_purge(self, cache: dict[str, Any]) -> float:
        """p99 of one record() call on the same database just before, no purge running."""
        return float(cache["baseline"]["p99_us"])

    track_caller_p99_us_without_purge.unit = "us"  # type: ignore[attr-defined]

    def track_purge_caller_p50_us(self, cache: dict[str, Any]) -> float:
        return float(cache["purge"]["p50_us"])

    track_purge_caller_p50_us.unit = "us"  # type: ignore[attr-defined]

    def track_caller_p50_us_without_purge(self, cache: dict[str, Any]) -> float:
        return float(cache["baseline"]["p50_us"])

    track_caller_p50_us_without_purge.unit = "us"  # type: ignore[attr-defined]

    def track_purge_writer_longest_batch_ms(self, cache: dict[str, Any]) -> float:
        """The service's stats().longest_batch_s while the purge ran (lock waits included)."""
        return float(cache["purge"]["longest_batch_ms"])

    track_purge_writer_longest_batch_ms.unit = "ms"  # type: ignore[attr-defined]

    def track_writer_longest_batch_ms_without_purge(self, cache: dict[str, Any]) -> float:
        return float(cache["baseline"]["longest_batch_ms"])

    track_writer_longest_batch_ms_without_purge.unit = "ms"  # type: ignore[attr-defined]

    def track_purge_caller_calls(self, cache: dict[str, Any]) -> float:
        """How many record() calls the caller made while the purge ran (the p99's sample)."""
        return float(cache["purge"]["calls"])

    track_purge_caller_calls.unit = "calls"  # type: ignore[attr-defined]
