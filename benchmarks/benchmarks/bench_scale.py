"""Scale: the trail a tool has after years — bytes per row, verify, filtered reads, a big purge.

``Scale.setup_cache`` builds one SQLite trail of ``AUDIT_BENCH_SCALE_ROWS`` rows (default
10 000 000) in a temporary directory and measures everything on it once; each ``track_*`` reads
its figure from that run. The trail is what a desktop tool has after years: 200 actors of whom
one, ``alice``, owns 90 % of the rows, 50 000 resources of four types, a handful of actions, 2 %
failures, timestamps rising with the id over three years, details like ``bench_record._fields``.

The rows are built fast, not one ``record()`` at a time: a few dozen templates are validated
by ``AuditEntry`` (so every value is one ``record()`` accepts), then each row is a template with
its own event id, timestamp, actor and resource id, linked into the chain and inserted by the
writer's own code (``storage.sqlite.write_batch``: the chain link and the multi-row insert)
in transactions of 20 000 rows.

What is measured (medians of ``QUERY_ROUNDS`` runs, after one warm-up run):

* bytes per row: the file (indexes included, after a WAL checkpoint) over the rows;
* ``query(<one filter>, newest_first=..., limit=50)`` in ms, both orders, for each filter
  (:data:`FILTERS`), and ``count()`` of a few;
* ``AuditStore.verify()`` over the whole trail, rows/s;
* a purge of the oldest ``AUDIT_BENCH_SCALE_PURGE_ROWS`` rows (default: 1 000 000, at most a
  tenth of the trail) by ``AuditStore.purge`` while a service records 5 000 calls/s in another
  thread: the purge's seconds, the recording caller's p50/p99, and the rows counted afterwards
  (none recorded may be lost).

Run it as a script for a quick look (a table on stdout)::

    AUDIT_BENCH_SCALE_ROWS=200000 python benchmarks/benchmarks/bench_scale.py

Numbers and how to read them: docs/performance.md.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from audit_engine import AuditEntry, AuditStore
from audit_engine.models import format_timestamp
from audit_engine.rows import Row, entry_row
from audit_engine.storage import sqlite as store
from audit_engine.storage.retention import CleanupReport

if __package__:
    from .bench_integrity import WARMUP, _percentile, _record_timed, _service
else:  # run as a script: the suite's package is the directory above this file
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.bench_integrity import WARMUP, _percentile, _record_timed, _service

ROWS_VARIABLE = "AUDIT_BENCH_SCALE_ROWS"
PURGE_VARIABLE = "AUDIT_BENCH_SCALE_PURGE_ROWS"
DEFAULT_ROWS = 10_000_000
DEFAULT_PURGE_ROWS = 1_000_000
BUILD_BATCH = 20_000  # rows per transaction while building
CHUNK = 500  # rows per INSERT statement, as the writer's default batch
LIMIT = 50  # the page a screen shows: "the newest 50 matching ..."
QUERY_ROUNDS = 7
ACTORS = 200
ALICE_SHARE = 0.9
SPAN = timedelta(days=3 * 365)
SEED = 16

# (action, operation, resource type, weight): a notes tool. The resource types' id ranges add
# up to 50 000 resources.
ACTIONS = (
    ("note.save", "update", "note", 55),
    ("note.view", "read", "note", 25),
    ("note.create", "create", "note", 8),
    ("attachment.add", "create", "attachment", 4),
    ("folder.create", "create", "folder", 3),
    ("user.login", "execute", "user", 3),
    ("note.delete", "delete", "note", 2),
)
RESOURCES = {"note": 40_000, "attachment": 7_800, "folder": 2_000, "user": ACTORS}
FAILURE_SHARE = 0.02
RARE_ACTOR = "user-199"


def _rows_setting(name: str, default: int, smallest: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise SystemExit(f"Error: {name} must be a whole number of rows (got {text!r})") from None
    if value < smallest:
        raise SystemExit(f"Error: {name} must be at least {smallest} (got {value})")
    return value


def _actors() -> list[str]:
    return ["alice", *(f"user-{n:03d}" for n in range(1, ACTORS))]


def _templates() -> dict[tuple[str, str], Row]:
    """One validated row per (action, outcome): what ``record()`` would store for it."""
    templates = {}
    for action, operation, resource_type, _ in ACTIONS:
        for outcome in ("success", "failure"):
            entry = AuditEntry.model_validate(
                {
                    "action": action,
                    "actor": "alice",
                    "operation": operation,
                    "outcome": outcome,
                    "resource_type": resource_type,
                    "resource_id": "1",
                    "details": {"bytes": 812, "title": "Quarterly plan"},
                }
            )
            templates[action, outcome] = entry_row(entry)
    return templates


def trail_start() -> datetime:
    """The first row's time: SPAN before now, on a whole second."""
    return (datetime.now(UTC) - SPAN - timedelta(days=1)).replace(microsecond=0)


def generate(rows: int, start: datetime) -> Iterator[Row]:
    """The trail's rows in id order (deterministic: :data:`SEED`)."""
    rng = random.Random(SEED)
    templates = _templates()
    others = _actors()[1:]
    kinds = [action for action, *_ in ACTIONS]
    weights = [weight for *_, weight in ACTIONS]
    types = {action: resource_type for action, _, resource_type, _ in ACTIONS}
    step_us = SPAN / timedelta(microseconds=1) / rows
    base = start.timestamp()
    for i in range(rows):
        action = rng.choices(kinds, weights)[0]
        outcome = "failure" if rng.random() < FAILURE_SHARE else "success"
        template = templates[action, outcome]
        actor = "alice" if rng.random() < ALICE_SHARE else others[rng.randrange(len(others))]
        stamp = datetime.fromtimestamp(base + i * step_us / 1e6, UTC)
        yield Row(
            f"00000000-0000-7000-8000-{i:012x}",  # time-ordered, as the engine's UUIDv7 ids
            format_timestamp(stamp),
            actor,
            template.action,
            template.operation,
            template.outcome,
            template.resource_type,
            str(rng.randrange(1, RESOURCES[types[action]] + 1)),
            None,
            template.details,
            0,
        )


def build(path: Path, rows: int, start: datetime) -> float:
    """Create the trail at ``path`` with ``rows`` chained rows; seconds taken."""
    conn = store.open_connection(path)
    try:
        conn.execute("PRAGMA cache_size = -262144")  # 256 MiB: the indexes' insert points
        started = time.perf_counter()
        batch: list[Row] = []
        for row in generate(rows, start):
            batch.append(row)
            if len(batch) == BUILD_BATCH:
                store.write_batch(conn, batch, CHUNK)
                batch = []
        if batch:
            store.write_batch(conn, batch, CHUNK)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return time.perf_counter() - started
    finally:
        conn.close()


def file_bytes(path: Path) -> int:
    """The trail's bytes on disk: the file, its WAL and shared-memory file."""
    files = (path, Path(f"{path}-wal"), Path(f"{path}-shm"))
    return sum(f.stat().st_size for f in files if f.exists())


def index_bytes(path: Path) -> dict[str, int]:
    """Bytes per table and index of the entries table (SQLite's dbstat), largest first."""
    conn = store.open_connection(path, create=False)
    try:
        sizes = conn.execute(
            "SELECT name, sum(pgsize) FROM dbstat WHERE name = ? OR name IN "
            "(SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?) "
            "GROUP BY name ORDER BY 2 DESC",
            (store.TABLE, store.TABLE),
        ).fetchall()
    finally:
        conn.close()
    return {str(name): int(size) for name, size in sizes}


def filters(start: datetime, rows: int) -> dict[str, dict[str, Any]]:
    """The filters measured, by label. The time range is one day in the middle of the trail."""
    middle = start + SPAN / 2
    return {
        "actor=alice": {"actor": "alice"},
        f"actor={RARE_ACTOR}": {"actor": RARE_ACTOR},
        "action=note.delete": {"action": "note.delete"},
        "operation=read": {"operation": "read"},
        "outcome=failure": {"outcome": "failure"},
        "resource_type=folder": {"resource_type": "folder"},
        "resource_type=note": {"resource_type": "note"},
        "resource_type+id": {"resource_type": "note", "resource_id": "4242"},
        "one day": {"since": middle, "until": middle + timedelta(days=1)},
        "since a day ago": {"since": start + SPAN - timedelta(days=1)},
    }


def median_ms(call: Callable[[], object], rounds: int = QUERY_ROUNDS) -> float:
    """The median of ``rounds`` timed calls, in ms, after one untimed call (a warm cache)."""
    call()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure_reads(path: Path, start: datetime, rows: int) -> dict[str, Any]:
    """Each filter's newest and oldest 50 (ms), a few counts (ms and value), verify (rows/s)."""
    result: dict[str, Any] = {"newest_ms": {}, "oldest_ms": {}, "count_ms": {}, "counts": {}}
    with AuditStore(path) as audit_store:
        for label, where in filters(start, rows).items():
            for key, newest in (("newest_ms", True), ("oldest_ms", False)):

                def read(where: dict[str, Any] = where, newest: bool = newest) -> int:
                    return len(list(audit_store.query(newest_first=newest, limit=LIMIT, **where)))

                result[key][label] = median_ms(read)
        for label, where in (
            ("all", {}),
            (f"actor={RARE_ACTOR}", {"actor": RARE_ACTOR}),
            ("outcome=failure", {"outcome": "failure"}),
            ("actor=alice", {"actor": "alice"}),
        ):
            result["counts"][label] = audit_store.count(**where)
            result["count_ms"][label] = median_ms(lambda where=where: audit_store.count(**where))
        rates = []
        for _ in range(1 if rows >= 2_000_000 else 3):
            started = time.perf_counter()
            report = audit_store.verify()
            elapsed = time.perf_counter() - started
            if not report.ok or report.rows_checked != rows:
                raise RuntimeError(f"verify() did not check the whole trail: {report}")
            rates.append(rows / elapsed)
        result["verify_rows_per_s"] = statistics.median(rates)
    return result


def purge_while_recording(path: Path, cutoff: datetime, expected: int) -> dict[str, float]:
    """Purge the rows before ``cutoff`` in one thread while a service records in this one."""
    reports: list[CleanupReport | Exception] = []

    def run_purge() -> None:
        try:
            with AuditStore(path) as audit_store:
                reports.append(audit_store.purge(cutoff))
        except Exception as exc:  # e.g. "database is locked": reported below
            reports.append(exc)

    with _service(path) as audit:
        before = AuditStore(path)
        try:
            rows_before = before.count()
        finally:
            before.close()
        purger = threading.Thread(target=run_purge, name="bench-scale-purge")
        purger.start()
        samples = _record_timed(audit, WARMUP, purger.is_alive)
        purger.join()
        if not audit.flush():
            raise RuntimeError("flush() did not complete")
    report = reports[0] if reports else None
    if not isinstance(report, CleanupReport) or report.rows_deleted != expected:
        raise RuntimeError(f"the purge did not delete the {expected} oldest rows: {reports}")
    with AuditStore(path) as audit_store:
        rows_after = audit_store.count()
    lost = rows_before - expected + len(samples) - rows_after
    if lost:
        raise RuntimeError(f"{lost} recorded entries are missing after the purge")
    return {
        "purge_s": report.duration_s,
        "purged": float(expected),
        "calls": float(len(samples)),
        "caller_p50_us": _percentile(samples, 50),
        "caller_p99_us": _percentile(samples, 99),
        "rows_after": float(rows_after),
    }


def measure(rows: int, purge_rows: int) -> dict[str, Any]:
    """Build the trail, measure it, purge it under load; every figure, in one dict."""
    with tempfile.TemporaryDirectory(prefix="audit-bench-scale-") as tmp:
        path = Path(tmp) / "audit.db"
        start = trail_start()
        build_s = build(path, rows, start)
        result: dict[str, Any] = {
            "rows": rows,
            "build_s": build_s,
            "bytes_per_row": file_bytes(path) / rows,
            "objects_bytes_per_row": {k: v / rows for k, v in index_bytes(path).items()},
        }
        result.update(measure_reads(path, start, rows))
        step = SPAN / rows
        # Half a step before the first kept row's time: exactly purge_rows rows are older.
        cutoff = start + step * purge_rows - step / 2
        result["purge"] = purge_while_recording(path, cutoff, purge_rows)
    return result


class Scale:
    """A trail of AUDIT_BENCH_SCALE_ROWS rows (default 10 M), built and measured once."""

    timeout = 7200

    def setup_cache(self) -> dict[str, Any]:
        rows = _rows_setting(ROWS_VARIABLE, DEFAULT_ROWS, 10_000)
        purge_rows = _rows_setting(PURGE_VARIABLE, min(DEFAULT_PURGE_ROWS, rows // 10), 1)
        return measure(rows, min(purge_rows, rows - 1))

    setup_cache.timeout = 7200  # type: ignore[attr-defined]

    def track_bytes_per_row(self, cache: dict[str, Any]) -> float:
        """The file (indexes included) over its rows."""
        return float(cache["bytes_per_row"])

    track_bytes_per_row.unit = "bytes"  # type: ignore[attr-defined]

    def track_build_rows_per_s(self, cache: dict[str, Any]) -> float:
        """How fast the trail was built (chain link + multi-row insert, 20 000 per commit)."""
        return float(cache["rows"] / cache["build_s"])

    track_build_rows_per_s.unit = "rows/s"  # type: ignore[attr-defined]

    def track_verify_rows_per_s(self, cache: dict[str, Any]) -> float:
        """AuditStore.verify() over the whole trail."""
        return float(cache["verify_rows_per_s"])

    track_verify_rows_per_s.unit = "rows/s"  # type: ignore[attr-defined]

    def track_newest_50_ms(self, cache: dict[str, Any], label: str) -> float:
        """query(<filter>, newest_first=True, limit=50): median ms."""
        return float(cache["newest_ms"][label])

    track_newest_50_ms.unit = "ms"  # type: ignore[attr-defined]

    def track_oldest_50_ms(self, cache: dict[str, Any], label: str) -> float:
        """query(<filter>, limit=50), oldest first: median ms."""
        return float(cache["oldest_ms"][label])

    track_oldest_50_ms.unit = "ms"  # type: ignore[attr-defined]

    def track_count_ms(self, cache: dict[str, Any], label: str) -> float:
        """count(<filter>): median ms."""
        return float(cache["count_ms"][label])

    track_count_ms.unit = "ms"  # type: ignore[attr-defined]

    def track_purge_s(self, cache: dict[str, Any]) -> float:
        """Purging the oldest rows (1 M at the default size) while a service records."""
        return float(cache["purge"]["purge_s"])

    track_purge_s.unit = "s"  # type: ignore[attr-defined]

    def track_purge_caller_p99_us(self, cache: dict[str, Any]) -> float:
        """p99 of one record() call (5 000 calls/s) while the purge runs."""
        return float(cache["purge"]["caller_p99_us"])

    track_purge_caller_p99_us.unit = "us"  # type: ignore[attr-defined]


_FILTER_LABELS = list(filters(datetime(2000, 1, 1, tzinfo=UTC), 1))
_COUNT_LABELS = ["all", f"actor={RARE_ACTOR}", "outcome=failure", "actor=alice"]
for _method, _labels in (
    (Scale.track_newest_50_ms, _FILTER_LABELS),
    (Scale.track_oldest_50_ms, _FILTER_LABELS),
    (Scale.track_count_ms, _COUNT_LABELS),
):
    _method.params = _labels  # type: ignore[attr-defined]
    _method.param_names = ["filter"]  # type: ignore[attr-defined]


def table(result: dict[str, Any]) -> str:
    """The figures of :func:`measure` as a plain-text table."""
    rows = result["rows"]
    lines = [
        f"{rows:,} rows built in {result['build_s']:.1f} s "
        f"({rows / result['build_s']:,.0f} rows/s)",
        f"bytes per row {result['bytes_per_row']:.1f} (file, indexes included)",
        *(f"  {name:38} {size:7.1f}" for name, size in result["objects_bytes_per_row"].items()),
        f"verify {result['verify_rows_per_s']:,.0f} rows/s",
        f"{'query (limit 50), median ms':38} {'newest':>8} {'oldest':>8}",
        *(
            f"  {label:36} {ms:8.2f} {result['oldest_ms'][label]:8.2f}"
            for label, ms in result["newest_ms"].items()
        ),
        f"{'count(), median ms':38} {'ms':>8} {'rows':>10}",
        *(
            f"  {label:36} {ms:8.2f} {result['counts'][label]:10,}"
            for label, ms in result["count_ms"].items()
        ),
    ]
    purge = result["purge"]
    lines.append(
        f"purge of {purge['purged']:,.0f} rows while recording: {purge['purge_s']:.2f} s; "
        f"caller p50 {purge['caller_p50_us']:.1f} us, p99 {purge['caller_p99_us']:.1f} us "
        f"over {purge['calls']:,.0f} calls; {purge['rows_after']:,.0f} rows after, none lost"
    )
    return "\n".join(lines)


def main() -> None:
    rows = _rows_setting(ROWS_VARIABLE, DEFAULT_ROWS, 10_000)
    purge_rows = _rows_setting(PURGE_VARIABLE, min(DEFAULT_PURGE_ROWS, rows // 10), 1)
    print(table(measure(rows, min(purge_rows, rows - 1))))


if __name__ == "__main__":
    main()
