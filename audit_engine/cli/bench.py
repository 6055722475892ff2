"""``audit-engine bench``: the engine against what users would otherwise do, in one run.

Seven modes write the same realistic row into the same schema (copied from a database the engine
created), side by side in one process, so their ratios mean something on a noisy machine:

* ``sync-default``: INSERT + COMMIT per event, sqlite3 defaults (rollback journal, FULL sync);
* ``sync-wal``: INSERT + COMMIT per event in WAL with synchronous=NORMAL;
* ``thread-per-row``: a ``queue.Queue`` and a thread committing each row (naive write-behind);
* ``logging-queue``: the standard library's ``QueueHandler`` + ``QueueListener`` and a handler
  batching rows into SQLite — what a user would build instead (:mod:`.bench_peers`);
* ``engine``: ``AuditService`` async, level ``all``, hash chain on, from ``record()`` to commit;
* ``engine-keyed``: the same with a chain key (HMAC-SHA256 links): what the keyed chain costs,
  as the ratio of the two in one run;
* ``ceiling``: the engine's stored rows (chain values included) prebuilt as tuples,
  ``executemany`` 500 per transaction, WAL + NORMAL — what SQLite itself can do with the same
  work.

The run is made of rounds (:mod:`.bench_rounds`): each runs every selected mode once, on a fresh
database, in an order that rotates from round to round; the modes with producers
(``THREADED_MODES``) run once per thread count of the sweep. Every mode's stored rows are
counted afterwards: a mode that lost one fails the run (:class:`BenchRowsLost`).
"""

from __future__ import annotations

import gc
import os
import platform
import sqlite3
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from audit_engine.cli.bench_modes import (
    BenchRowsLost,
    ModeResult,
    Tick,
    ceiling,
    count_rows,
    engine_settings,
    event_fields,
    fresh_connection,
    per_event_commit,
    remove_database,
    run_engine,
    schema_sql,
    thread_per_row,
    write_chain_key,
)
from audit_engine.cli.bench_peers import logging_queue
from audit_engine.cli.bench_rounds import (
    MAX_THREADS,
    ModeSummary,
    Ratio,
    ratio,
    round_order,
    summarise,
)

MODES = (
    "sync-default",
    "sync-wal",
    "thread-per-row",
    "logging-queue",
    "engine",
    "engine-keyed",
    "ceiling",
)
# The modes with producer threads: run once per thread count of the sweep.
THREADED_MODES = ("logging-queue", "engine", "engine-keyed")
# Per-event commits with a full fsync are ~100x slower: they get fewer events (same row).
SYNC_DEFAULT_MAX_EVENTS = 2000
# Three rounds give a median and a range at about three times the cost of the old single pass
# (~15-40 s at 20 000 events on two shared cores); the published figures take --rounds 5 or more.
DEFAULT_ROUNDS = 3

Job = tuple[str, int]  # a mode and its producer threads


class BenchReport(BaseModel):
    """A whole ``bench`` run and the machine it ran on."""

    model_config = ConfigDict(frozen=True)

    python: str
    sqlite: str
    machine: str
    cpus: int
    events: int
    rounds: int
    threads: list[int]  # the thread counts of the sweep
    # Each round's order, as "mode" or "mode:threads" for the modes with producers.
    orders: list[list[str]]
    results: list[ModeSummary]  # per mode and thread count, in MODES order
    ratios: list[Ratio]  # engine ÷ ceiling and engine ÷ logging-queue per thread count


def bench_jobs(modes: Sequence[str], threads: Sequence[int]) -> list[Job]:
    """The selected modes in MODES order; those with producers once per thread count."""
    return [
        (mode, count)
        for mode in MODES
        if mode in modes
        for count in (threads if mode in THREADED_MODES else (1,))
    ]


def _label(job: Job) -> str:
    mode, threads = job
    return f"{mode}:{threads}" if mode in THREADED_MODES else mode


def _thread_counts(threads: int | Sequence[int]) -> tuple[int, ...]:
    counts = (threads,) if isinstance(threads, int) else tuple(threads)
    if not counts:
        raise ValueError("threads must name at least one thread count")
    for count in counts:
        if not 1 <= count <= MAX_THREADS:
            raise ValueError(f"threads must be from 1 to {MAX_THREADS} (got {count})")
    if len(set(counts)) != len(counts):
        raise ValueError(f"threads lists a count twice: {', '.join(map(str, counts))}")
    return tuple(sorted(counts))


class _Runner:
    """What every job of a run shares: the inputs, the directory, the schema, the key."""

    def __init__(
        self, inputs: list[dict[str, Any]], workdir: Path, chain_key_file: Path | None, tick: Tick
    ) -> None:
        self.inputs = inputs
        self.workdir = workdir
        self.schema = schema_sql(workdir)
        self.tick = tick
        self._chain_key_file = chain_key_file

    def chain_key(self) -> Path:
        # One throwaway key for every round (written once: the file is created exclusively).
        if self._chain_key_file is None:
            self._chain_key_file = write_chain_key(self.workdir)
        return self._chain_key_file

    def run(self, job: Job, round_index: int) -> ModeResult:
        """One mode on a fresh database; its rows counted, then the database removed."""
        mode, threads = job
        path = self.workdir / f"{mode}-{threads}-round{round_index + 1}.db"
        # One mode's garbage is not collected on the next mode's clock.
        gc.collect()
        if mode in ("engine", "engine-keyed"):
            key = self.chain_key() if mode == "engine-keyed" else None
            result = run_engine(
                engine_settings(path, chain_key_file=key), self.inputs, threads, self.tick
            )
        else:
            result = self._baseline(mode, threads, path)
        stored = count_rows(path)
        remove_database(path)
        if stored != result.events:
            raise BenchRowsLost(
                f"bench mode {mode} ({threads} thread(s)) stored {stored} of {result.events} "
                f"rows in round {round_index + 1}: its figures would not compare"
            )
        return result.model_copy(update={"mode": mode, "threads": threads, "rows_stored": stored})

    def _baseline(self, mode: str, threads: int, path: Path) -> ModeResult:
        inputs = self.inputs
        if mode == "sync-default":
            inputs = inputs[:SYNC_DEFAULT_MAX_EVENTS]
        conn = fresh_connection(path, self.schema, wal=mode != "sync-default")
        try:
            if mode in ("sync-default", "sync-wal"):
                return per_event_commit(conn, inputs, self.tick)
            if mode == "thread-per-row":
                return thread_per_row(conn, inputs, self.tick)
            if mode == "logging-queue":
                return logging_queue(conn, inputs, threads, self.tick)
            return ceiling(conn, inputs, self.tick)
        finally:
            conn.close()


def run_bench(
    events: int = 20000,
    threads: int | Sequence[int] = 1,
    *,
    rounds: int = DEFAULT_ROUNDS,
    modes: Sequence[str] = MODES,
    on_progress: Callable[[int], None] | None = None,
    chain_key_file: Path | None = None,
) -> BenchReport:
    """Run the modes side by side, ``rounds`` times, on fresh databases in a temporary directory.

    ``threads``: one producer count, or the counts of a sweep (the modes with producers run once
    per count in every round). ``chain_key_file``: the key of the engine-keyed mode (a throwaway
    key when None); the engine mode is unkeyed, so the two side by side show what the keyed
    chain costs. Raises :class:`BenchRowsLost` if a mode's table does not hold every row.
    """
    if events < 1:
        raise ValueError(f"events must be at least 1 (got {events})")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1 (got {rounds})")
    counts = _thread_counts(threads)
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(
            f"unknown bench mode(s): {', '.join(sorted(unknown))} (modes: {', '.join(MODES)})"
        )
    if not modes:
        raise ValueError(f"no bench mode selected (modes: {', '.join(MODES)})")

    def tick() -> None:
        if on_progress is not None:
            on_progress(1)

    # The application's data exists before it records: every mode gets the same prebuilt field
    # dicts, and its timing starts where it validates them (record(), for the engine).
    inputs = [event_fields(i) for i in range(events)]
    jobs = bench_jobs(modes, counts)
    orders = [round_order(jobs, n, rounds) for n in range(rounds)]
    runs: dict[Job, list[ModeResult]] = {job: [] for job in jobs}
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as tmp:
        runner = _Runner(inputs, Path(tmp), chain_key_file, tick)
        for n, order in enumerate(orders):
            for job in order:
                runs[job].append(runner.run(job, n))
    return BenchReport(
        python=platform.python_version(),
        sqlite=sqlite3.sqlite_version,
        machine=f"{platform.system()} {platform.machine()}",
        cpus=os.cpu_count() or 1,
        events=events,
        rounds=rounds,
        threads=list(counts),
        orders=[[_label(job) for job in order] for order in orders],
        results=_summaries(runs),
        ratios=_ratios(runs, counts),
    )


def _rates(runs: dict[Job, list[ModeResult]], job: Job) -> list[float]:
    return [run.events_per_s for run in runs.get(job, [])]


def _summaries(runs: dict[Job, list[ModeResult]]) -> list[ModeSummary]:
    ceilings = _rates(runs, ("ceiling", 1))
    return [summarise(results, ceilings) for results in runs.values()]


def _ratios(runs: dict[Job, list[ModeResult]], counts: tuple[int, ...]) -> list[Ratio]:
    """engine ÷ ceiling and engine ÷ logging-queue, per round, for each thread count."""
    found: list[Ratio] = []
    for count in counts:
        engine = _rates(runs, ("engine", count))
        for other, other_job in (
            ("ceiling", ("ceiling", 1)),
            ("logging-queue", ("logging-queue", count)),
        ):
            others = _rates(runs, other_job)
            per_round = [a / b for a, b in zip(engine, others, strict=False) if b]
            spread = ratio("engine", other, count, per_round)
            if spread is not None:
                found.append(spread)
    return found


def total_events(
    events: int,
    modes: Sequence[str] = MODES,
    threads: int | Sequence[int] = 1,
    rounds: int = DEFAULT_ROUNDS,
) -> int:
    """How many progress ticks :func:`run_bench` makes (for a progress bar's length)."""
    counts = (threads,) if isinstance(threads, int) else tuple(threads)
    per_round = sum(
        min(events, SYNC_DEFAULT_MAX_EVENTS) if mode == "sync-default" else events
        for mode, _ in bench_jobs(modes, counts)
    )
    return rounds * per_round
