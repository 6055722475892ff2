"""``audit-engine bench``: the engine against what users would otherwise do, in one run.

Six modes write the same realistic row into the same schema (copied from a database the engine
created), side by side in one process, so their ratios mean something on a noisy machine:

* ``sync-default``: INSERT + COMMIT per event, sqlite3 defaults (rollback journal, FULL sync);
* ``sync-wal``: INSERT + COMMIT per event in WAL with synchronous=NORMAL;
* ``thread-per-row``: a ``queue.Queue`` and a thread committing each row (naive write-behind);
* ``engine``: ``AuditService`` async, level ``all``, hash chain on, from ``record()`` to commit;
* ``engine-keyed``: the same with a chain key (HMAC-SHA256 links): what the keyed chain costs,
  as the ratio of the two in one run;
* ``ceiling``: the engine's stored rows (chain values included) prebuilt as tuples,
  ``executemany`` 500 per transaction, WAL + NORMAL — what SQLite itself can do with the same
  work.
"""

from __future__ import annotations

import os
import platform
import queue
import secrets
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from audit_engine.models import DEFAULT_MAX_DETAILS_BYTES
from audit_engine.pipeline.intake import validated_row
from audit_engine.pipeline.service import AuditService
from audit_engine.settings import AuditSettings
from audit_engine.storage.chain import GENESIS_HASH, link
from audit_engine.storage.sqlite.schema import TABLE

MODES = ("sync-default", "sync-wal", "thread-per-row", "engine", "engine-keyed", "ceiling")
# Per-event commits with a full fsync are ~100x slower: they get fewer events (same row).
SYNC_DEFAULT_MAX_EVENTS = 2000
_CEILING_BATCH = 500


class ModeResult(BaseModel):
    """One mode's figures."""

    model_config = ConfigDict(frozen=True)

    mode: str
    events: int
    seconds: float
    events_per_s: float
    # None for the ceiling: its rows are prebuilt, there is no caller to time.
    caller_p50_us: float | None
    caller_p99_us: float | None
    commits: int
    commits_per_event: float
    ratio_to_ceiling: float = 0.0
    # Rows found in the mode's table afterwards (the PostgreSQL bench counts them; None: not
    # counted).
    rows_stored: int | None = None


class BenchReport(BaseModel):
    """A whole ``bench`` run and the machine it ran on."""

    model_config = ConfigDict(frozen=True)

    python: str
    sqlite: str
    machine: str
    cpus: int
    events: int
    threads: int
    results: list[ModeResult]


def event_fields(i: int) -> dict[str, Any]:
    """The realistic row: a user saves a note."""
    return {
        "action": "note.save",
        "actor": "alice",
        "operation": "update",
        "resource_type": "note",
        "resource_id": str(i),
        "correlation_id": f"session-{i // 100}",
        "details": {"bytes": 812, "title": "Quarterly plan"},
    }


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _schema_sql(workdir: Path) -> list[str]:
    """CREATE statements of the engine's table and indexes, from a database it created (not the
    append-only guard's triggers: they name the engine's other tables; the baselines measure
    the table itself, the engine's mode pays for the guard)."""
    path = workdir / "schema-source.db"
    AuditService(AuditSettings(database=path, cleanup_enabled=False)).close()
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL "
            "AND type IN ('table', 'index') ORDER BY type DESC",  # the table before its indexes
            (TABLE,),
        ).fetchall()
    finally:
        conn.close()
    return [sql for (sql,) in rows]


def _fresh(workdir: Path, name: str, schema: list[str], *, wal: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(workdir / f"{name}.db", isolation_level=None, check_same_thread=False)
    if wal:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
    for sql in schema:
        conn.execute(sql)
    return conn


_COLUMNS = (
    "event_id, timestamp, actor, action, operation, outcome, resource_type, resource_id, "
    "correlation_id, details, critical"
)
_INSERT = f"INSERT INTO {TABLE} ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_STORED = (
    f"INSERT INTO {TABLE} (id, {_COLUMNS}, prev_hash, hash) VALUES ({', '.join('?' * 14)})"
)


def stored_row(fields: dict[str, Any]) -> tuple[Any, ...]:
    # The same validation the engine's record() does, so the modes differ only in writing.
    return validated_row(fields, DEFAULT_MAX_DETAILS_BYTES)[0]


def _per_event_commit(
    conn: sqlite3.Connection, inputs: list[dict[str, Any]], tick: Callable[[], None]
) -> ModeResult:
    events = len(inputs)
    costs: list[float] = []
    started = time.perf_counter()
    for fields in inputs:
        t0 = time.perf_counter_ns()
        row = stored_row(fields)  # the caller validates its row in every mode
        conn.execute("BEGIN")
        conn.execute(_INSERT, row)
        conn.execute("COMMIT")
        costs.append((time.perf_counter_ns() - t0) / 1000)
        tick()
    elapsed = time.perf_counter() - started
    return mode_result("", events, elapsed, costs, commits=events)


def _thread_per_row(
    conn: sqlite3.Connection, inputs: list[dict[str, Any]], tick: Callable[[], None]
) -> ModeResult:
    events = len(inputs)
    rows: queue.Queue[tuple[Any, ...] | None] = queue.Queue()

    def drain() -> None:
        while (row := rows.get()) is not None:
            conn.execute("BEGIN")
            conn.execute(_INSERT, row)
            conn.execute("COMMIT")

    worker = threading.Thread(target=drain, name="bench-thread-per-row", daemon=True)
    worker.start()
    costs: list[float] = []
    started = time.perf_counter()
    for fields in inputs:
        t0 = time.perf_counter_ns()
        rows.put(stored_row(fields))
        costs.append((time.perf_counter_ns() - t0) / 1000)
        tick()
    rows.put(None)
    worker.join()
    elapsed = time.perf_counter() - started
    return mode_result("", events, elapsed, costs, commits=events)


def write_chain_key(directory: Path) -> Path:
    """A throwaway chain key file in ``directory`` (0600, one random key), for engine-keyed."""
    path = directory / "bench-chain.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(secrets.token_hex(32) + "\n")
    return path


def engine_key(mode: str, chain_key_file: Path | None, directory: Path) -> dict[str, Any]:
    """The chain key setting of an engine mode: ``engine`` unkeyed (whatever the environment
    says), ``engine-keyed`` with ``chain_key_file`` or else a throwaway key."""
    if mode != "engine-keyed":
        return {"chain_key_file": None}
    return {"chain_key_file": chain_key_file or write_chain_key(directory)}


def engine_settings(database: Path | str, **overrides: Any) -> AuditSettings:
    """The engine as the bench runs it: keep everything, no cleanup, a queue that rarely fills."""
    options: dict[str, Any] = {"level": "all", "cleanup_enabled": False, "queue_maxsize": 10000}
    return AuditSettings(database=database, **(options | overrides))


def run_engine(
    settings: AuditSettings,
    inputs: list[dict[str, Any]],
    threads: int,
    tick: Callable[[], None],
) -> ModeResult:
    """``record()`` each input from ``threads`` threads, timed until ``flush()`` returns."""
    events = len(inputs)
    per_thread = [events // threads + (1 if n < events % threads else 0) for n in range(threads)]
    costs: list[list[float]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads + 1)
    with AuditService(settings) as audit:

        def produce(n: int) -> None:
            record, mine = audit.record, costs[n]
            base = sum(per_thread[:n])
            start.wait()
            for fields in inputs[base : base + per_thread[n]]:
                t0 = time.perf_counter_ns()
                record(**fields)
                mine.append((time.perf_counter_ns() - t0) / 1000)
                tick()

        workers = [
            threading.Thread(target=produce, args=(n,), name=f"bench-producer-{n}")
            for n in range(threads)
        ]
        for worker in workers:
            worker.start()
        start.wait()
        started = time.perf_counter()
        for worker in workers:
            worker.join()
        audit.flush()
        elapsed = time.perf_counter() - started
        commits = audit.stats().batches
    return mode_result("", events, elapsed, [c for mine in costs for c in mine], commits=commits)


def _ceiling(
    conn: sqlite3.Connection, inputs: list[dict[str, Any]], tick: Callable[[], None]
) -> ModeResult:
    events = len(inputs)
    # Prebuilt as the engine stores them — id, fields, prev_hash and hash — so only SQLite's
    # work is timed, for the same rows the engine writes.
    rows = link((stored_row(fields) for fields in inputs), 0, GENESIS_HASH)
    started = time.perf_counter()
    commits = 0
    for offset in range(0, events, _CEILING_BATCH):
        chunk = rows[offset : offset + _CEILING_BATCH]
        conn.execute("BEGIN")
        conn.executemany(_INSERT_STORED, chunk)
        conn.execute("COMMIT")
        commits += 1
        for _ in chunk:
            tick()
    elapsed = time.perf_counter() - started
    return mode_result("", events, elapsed, [], commits=commits)


def mode_result(
    mode: str, events: int, seconds: float, costs: list[float], *, commits: int
) -> ModeResult:
    return ModeResult(
        mode=mode,
        events=events,
        seconds=seconds,
        events_per_s=events / seconds if seconds > 0 else 0.0,
        caller_p50_us=percentile(costs, 0.50),
        caller_p99_us=percentile(costs, 0.99),
        commits=commits,
        commits_per_event=commits / events if events else 0.0,
    )


def run_bench(
    events: int = 20000,
    threads: int = 1,
    *,
    modes: tuple[str, ...] = MODES,
    on_progress: Callable[[int], None] | None = None,
    chain_key_file: Path | None = None,
) -> BenchReport:
    """Run the modes side by side on fresh databases in a temporary directory.

    ``chain_key_file``: the key of the engine-keyed mode (a throwaway key when None); the
    engine mode is unkeyed, so the two side by side show what the keyed chain costs.
    """
    if events < 1:
        raise ValueError(f"events must be at least 1 (got {events})")
    if threads < 1:
        raise ValueError(f"threads must be at least 1 (got {threads})")
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown bench mode(s): {', '.join(sorted(unknown))}")

    def tick() -> None:
        if on_progress is not None:
            on_progress(1)

    # The application's data exists before it records: every mode gets the same prebuilt field
    # dicts, and its timing starts where it validates them (record(), for the engine).
    inputs = [event_fields(i) for i in range(events)]
    results: list[ModeResult] = []
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as tmp:
        workdir = Path(tmp)
        schema = _schema_sql(workdir)
        for mode in MODES:
            if mode not in modes:
                continue
            if mode == "sync-default":
                n = min(events, SYNC_DEFAULT_MAX_EVENTS)
                conn = _fresh(workdir, mode, schema, wal=False)
                result = _per_event_commit(conn, inputs[:n], tick)
            elif mode == "sync-wal":
                conn = _fresh(workdir, mode, schema, wal=True)
                result = _per_event_commit(conn, inputs, tick)
            elif mode == "thread-per-row":
                conn = _fresh(workdir, mode, schema, wal=True)
                result = _thread_per_row(conn, inputs, tick)
            elif mode in ("engine", "engine-keyed"):
                conn = None
                keyed = engine_key(mode, chain_key_file, workdir)
                settings = engine_settings(workdir / f"{mode}.db", **keyed)
                result = run_engine(settings, inputs, threads, tick)
            else:
                conn = _fresh(workdir, mode, schema, wal=True)
                result = _ceiling(conn, inputs, tick)
            if conn is not None:
                conn.close()
            results.append(result.model_copy(update={"mode": mode}))
    ceiling = next((r.events_per_s for r in results if r.mode == "ceiling"), 0.0)
    if ceiling:
        results = [
            r.model_copy(update={"ratio_to_ceiling": r.events_per_s / ceiling}) for r in results
        ]
    return BenchReport(
        python=platform.python_version(),
        sqlite=sqlite3.sqlite_version,
        machine=f"{platform.system()} {platform.machine()}",
        cpus=os.cpu_count() or 1,
        events=events,
        threads=threads,
        results=results,
    )


def total_events(events: int, modes: tuple[str, ...] = MODES) -> int:
    """How many progress ticks :func:`run_bench` makes (for a progress bar's length)."""
    return sum(
        min(events, SYNC_DEFAULT_MAX_EVENTS) if m == "sync-default" else events for m in modes
    )
