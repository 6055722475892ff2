"""The bench's ways of writing, one function each, and what they share: the row, the schema,
the producers, the per-run figures.

Every runner takes the same prebuilt field dicts (the application's data exists before it
records) and starts its clock where the caller validates them — ``record()`` for the engine,
:func:`stored_row` (what ``record()`` does) for the others — so the modes differ only in how the
row reaches the database. Each returns one :class:`ModeResult`: one mode, one round.
"""

from __future__ import annotations

import os
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from audit_engine.errors import AuditEngineError
from audit_engine.models import DEFAULT_MAX_DETAILS_BYTES
from audit_engine.pipeline.intake import validated_row
from audit_engine.pipeline.service import AuditService
from audit_engine.settings import AuditSettings
from audit_engine.storage.chain import GENESIS_HASH, link
from audit_engine.storage.sqlite.schema import TABLE

CEILING_BATCH = 500
# The latency targets for several producer threads, counted per round.
P99_TARGET_US = 50.0
P999_TARGET_US = 1000.0

Tick = Callable[[], None]


class BenchRowsLost(AuditEngineError):
    """A mode stored fewer (or more) rows than it was given: its figures would not compare."""


class ModeResult(BaseModel):
    """One mode's figures in one run (a round of the SQLite bench, or the PostgreSQL bench)."""

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
    caller_p999_us: float | None = None
    ratio_to_ceiling: float = 0.0
    # Rows found in the mode's table afterwards (None: not counted).
    rows_stored: int | None = None
    threads: int = 1  # producer threads (the single-threaded modes: 1)


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


def stored_row(fields: dict[str, Any]) -> tuple[Any, ...]:
    # The same validation the engine's record() does, so the modes differ only in writing.
    return validated_row(fields, DEFAULT_MAX_DETAILS_BYTES)[0]


def percentiles(values: Sequence[float], fractions: Sequence[float]) -> list[float | None]:
    """Percentiles of ``values`` (sorted once), e.g. ``(0.5, 0.99, 0.999)``: the value at index
    ``round(fraction * (n - 1))`` (Python rounds half to even), as the bench always took them.

    All None when there are no values (the ceiling has no caller). A fraction outside 0..1 is a
    ValueError.
    """
    bad = [f for f in fractions if not 0.0 <= f <= 1.0]
    if bad:
        raise ValueError(f"a percentile is a fraction from 0 to 1 (got {bad[0]})")
    if not values:
        return [None] * len(fractions)
    ordered = sorted(values)
    last = len(ordered) - 1
    return [ordered[min(last, round(f * last))] for f in fractions]


def percentile(values: Sequence[float], fraction: float) -> float | None:
    return percentiles(values, (fraction,))[0]


def mode_result(
    mode: str, events: int, seconds: float, costs: list[float], *, commits: int
) -> ModeResult:
    p50, p99, p999 = percentiles(costs, (0.50, 0.99, 0.999))
    return ModeResult(
        mode=mode,
        events=events,
        seconds=seconds,
        events_per_s=events / seconds if seconds > 0 else 0.0,
        caller_p50_us=p50,
        caller_p99_us=p99,
        caller_p999_us=p999,
        commits=commits,
        commits_per_event=commits / events if events else 0.0,
    )


# -- the schema and the baselines' connections ---------------------------------------------------


def schema_sql(workdir: Path) -> list[str]:
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


def fresh_connection(path: Path, schema: list[str], *, wal: bool) -> sqlite3.Connection:
    """A new database at ``path`` with ``schema``; autocommit, usable from the writer thread."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    if wal:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
    for sql in schema:
        conn.execute(sql)
    return conn


def count_rows(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        (rows,) = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
    finally:
        conn.close()
    return int(rows)


def remove_database(path: Path) -> None:
    """``path`` and its journal files: a round's databases go once counted (disk stays small)."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


_COLUMNS = (
    "event_id, timestamp, actor, action, operation, outcome, resource_type, resource_id, "
    "correlation_id, details, critical"
)
INSERT_ROW = f"INSERT INTO {TABLE} ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
INSERT_STORED = (
    f"INSERT INTO {TABLE} (id, {_COLUMNS}, prev_hash, hash) VALUES ({', '.join('?' * 14)})"
)


# -- producers ------------------------------------------------------------------------------------


def timed_producers(
    call: Callable[[dict[str, Any]], object],
    inputs: list[dict[str, Any]],
    threads: int,
    tick: Tick,
) -> tuple[list[float], float]:
    """``call`` each input from ``threads`` threads that start together; every call timed.

    Returns the calls' costs in microseconds and the ``perf_counter`` at the common start (the
    caller stops its clock when its writing is done).
    """
    events = len(inputs)
    per_thread = [events // threads + (1 if n < events % threads else 0) for n in range(threads)]
    costs: list[list[float]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads + 1)

    def produce(n: int) -> None:
        mine, clock = costs[n], time.perf_counter_ns
        base = sum(per_thread[:n])
        start.wait()
        for fields in inputs[base : base + per_thread[n]]:
            t0 = clock()
            call(fields)
            mine.append((clock() - t0) / 1000)
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
    return [c for mine in costs for c in mine], started


# -- the modes ------------------------------------------------------------------------------------


def per_event_commit(
    conn: sqlite3.Connection, inputs: list[dict[str, Any]], tick: Tick
) -> ModeResult:
    """sync-default and sync-wal: INSERT + COMMIT per event, in the caller."""

    def write(fields: dict[str, Any]) -> None:
        row = stored_row(fields)  # the caller validates its row in every mode
        conn.execute("BEGIN")
        conn.execute(INSERT_ROW, row)
        conn.execute("COMMIT")

    costs, started = timed_producers(write, inputs, 1, tick)
    elapsed = time.perf_counter() - started
    return mode_result("", len(inputs), elapsed, costs, commits=len(inputs))


def thread_per_row(
    conn: sqlite3.Connection, inputs: list[dict[str, Any]], tick: Tick
) -> ModeResult:
    """A ``queue.Queue`` and a thread committing each row: naive write-behind."""
    rows: queue.Queue[tuple[Any, ...] | None] = queue.Queue()

    def drain() -> None:
        while (row := rows.get()) is not None:
            conn.execute("BEGIN")
            conn.execute(INSERT_ROW, row)
            conn.execute("COMMIT")

    worker = threading.Thread(target=drain, name="bench-thread-per-row", daemon=True)
    worker.start()
    try:
        costs, started = timed_producers(lambda f: rows.put(stored_row(f)), inputs, 1, tick)
    finally:
        rows.put(None)  # the worker ends whatever happened to the producer
        worker.join()
    elapsed = time.perf_counter() - started
    return mode_result("", len(inputs), elapsed, costs, commits=len(inputs))


def ceiling(conn: sqlite3.Connection, inputs: list[dict[str, Any]], tick: Tick) -> ModeResult:
    """The engine's stored rows prebuilt, ``executemany`` 500 per transaction: SQLite's limit."""
    events = len(inputs)
    # Prebuilt as the engine stores them — id, fields, prev_hash and hash — so only SQLite's
    # work is timed, for the same rows the engine writes.
    rows = link((stored_row(fields) for fields in inputs), 0, GENESIS_HASH)
    started = time.perf_counter()
    commits = 0
    for offset in range(0, events, CEILING_BATCH):
        chunk = rows[offset : offset + CEILING_BATCH]
        conn.execute("BEGIN")
        conn.executemany(INSERT_STORED, chunk)
        conn.execute("COMMIT")
        commits += 1
        for _ in chunk:
            tick()
    elapsed = time.perf_counter() - started
    return mode_result("", events, elapsed, [], commits=commits)


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
    settings: AuditSettings, inputs: list[dict[str, Any]], threads: int, tick: Tick
) -> ModeResult:
    """``record()`` each input from ``threads`` threads, timed until ``flush()`` returns."""
    with AuditService(settings) as audit:
        record = audit.record
        costs, started = timed_producers(lambda fields: record(**fields), inputs, threads, tick)
        audit.flush()
        elapsed = time.perf_counter() - started
        commits = audit.stats().batches
    result = mode_result("", len(inputs), elapsed, costs, commits=commits)
    return result.model_copy(update={"threads": threads})
