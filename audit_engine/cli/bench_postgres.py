"""``audit-engine bench --db postgresql://...``: the engine against a PostgreSQL server.

Four modes write the same realistic row as the SQLite bench into the engine's own schema, each in
a scratch schema of its own on the server (created, then dropped with everything in it):

* ``insert-commit``: ``INSERT`` + ``COMMIT`` per event on one connection, as an application with
  psycopg's defaults does (the row linked into the chain first, so every mode stores the same rows);
* ``engine``: ``AuditService`` on the URL, async (write-behind), level ``all``, from the first
  ``record()`` until ``flush()`` returns;
* ``engine-keyed``: the same with a chain key (HMAC-SHA256 links), so the keyed chain's cost
  shows as the ratio of the two;
* ``ceiling``: the rows as the engine stores them, prebuilt, copied with the engine's own
  ``COPY`` in transactions of the engine's batch size (500) — the server's limit for this work.

psycopg is reached through :func:`audit_engine.storage.backends.postgres`, so the CLI still starts
without the ``postgres`` extra.
"""

from __future__ import annotations

import os
import platform
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict

from audit_engine.cli.bench_modes import (
    ModeResult,
    engine_key,
    engine_settings,
    event_fields,
    mode_result,
    run_engine,
    stored_row,
)
from audit_engine.settings import mask_url
from audit_engine.storage.backends import postgres
from audit_engine.storage.chain import GENESIS_HASH, link_into

PG_MODES = ("insert-commit", "engine", "engine-keyed", "ceiling")
# A commit per event is a round trip and (with fsync on) a WAL flush each: fewer events.
INSERT_COMMIT_MAX_EVENTS = 5000
BATCH_ROWS = 500  # the writer's default batch: the ceiling copies in batches of the same size
# Scratch schemas start with this, so a run that was killed leaves names an operator recognises.
SCHEMA_PREFIX = "audit_bench_"


class PgBenchReport(BaseModel):
    """A whole PostgreSQL ``bench`` run, the server and the machine it ran on."""

    model_config = ConfigDict(frozen=True)

    python: str
    server: str
    fsync: str
    synchronous_commit: str
    database: str  # the URL, password masked
    machine: str
    cpus: int
    events: int
    threads: int
    results: list[ModeResult]


def scoped_url(url: str, schema: str) -> str:
    """``url`` with ``schema`` first on the connection's search_path (libpq's ``options``)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    options = f"{query.get('options', '')} -csearch_path={schema}".strip()
    return urlunsplit(parts._replace(query=urlencode(query | {"options": options})))


@contextmanager
def _scratch_schema(admin: Any, mode: str) -> Iterator[str]:
    """A new schema for one mode, dropped with its tables afterwards whatever happens."""
    name = f"{SCHEMA_PREFIX}{mode.replace('-', '_')}_{secrets.token_hex(4)}"
    admin.execute(f'CREATE SCHEMA "{name}"')  # name: our prefix, a mode, hex digits
    try:
        yield name
    finally:
        admin.execute(f'DROP SCHEMA "{name}" CASCADE')


def _create_tables(pg: Any, url: str) -> None:
    conn = pg.connect(url)
    try:
        pg.migrate(conn)
    finally:
        conn.close()


def _stored_rows(pg: Any, url: str) -> int:
    conn = pg.connect(url)
    try:
        row = conn.execute(f"SELECT count(*) FROM {pg.TABLE}").fetchone()
    finally:
        conn.close()
    return int(row[0])


def _insert_commit(
    pg: Any, url: str, inputs: list[dict[str, Any]], tick: Callable[[], None]
) -> ModeResult:
    conn = pg.connect(url)
    try:
        pg.migrate(conn)
        conn.autocommit = False  # psycopg's default: the INSERT opens a transaction, commit ends it
        insert, tail = pg.append.INSERT_SQL, (0, GENESIS_HASH)
        costs: list[float] = []
        started = time.perf_counter()
        for fields in inputs:
            t0 = time.perf_counter_ns()
            params: list[Any] = []
            tail = link_into(params, (stored_row(fields),), *tail)
            params[11] = bool(params[11])  # critical: a boolean column
            conn.execute(insert, params)
            conn.commit()
            costs.append((time.perf_counter_ns() - t0) / 1000)
            tick()
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    return mode_result("", len(inputs), elapsed, costs, commits=len(inputs))


def _ceiling(
    pg: Any, url: str, inputs: list[dict[str, Any]], tick: Callable[[], None]
) -> ModeResult:
    # Prebuilt and linked as the engine stores them: only the server's work (and the COPY's
    # client side, which the engine's writer pays too) is timed.
    params: list[Any] = []
    link_into(params, (stored_row(fields) for fields in inputs), 0, GENESIS_HASH)
    width = len(params) // len(inputs)
    conn = pg.connect(url)
    try:
        pg.migrate(conn)
        commits = 0
        started = time.perf_counter()
        for offset in range(0, len(inputs), BATCH_ROWS):
            chunk = params[offset * width : (offset + BATCH_ROWS) * width]
            with conn.transaction():
                pg.append.copy_linked(conn, chunk)
            commits += 1
            for _ in range(len(chunk) // width):
                tick()
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    return mode_result("", len(inputs), elapsed, [], commits=commits)


def run_pg_bench(
    url: str,
    events: int = 20000,
    threads: int = 1,
    *,
    modes: tuple[str, ...] = PG_MODES,
    on_progress: Callable[[int], None] | None = None,
    chain_key_file: Path | None = None,
) -> PgBenchReport:
    """Run the modes side by side against ``url``, each in a scratch schema dropped afterwards.

    ``chain_key_file``: the key of the engine-keyed mode (a throwaway key when None), as
    ``run_bench``.
    """
    if events < 1:
        raise ValueError(f"events must be at least 1 (got {events})")
    if threads < 1:
        raise ValueError(f"threads must be at least 1 (got {threads})")
    unknown = set(modes) - set(PG_MODES)
    if unknown:
        raise ValueError(f"unknown bench mode(s): {', '.join(sorted(unknown))}")
    pg = postgres()  # a clear error naming the extra when psycopg is missing

    def tick() -> None:
        if on_progress is not None:
            on_progress(1)

    inputs = [event_fields(i) for i in range(events)]
    results: list[ModeResult] = []
    admin = pg.connect(url)
    try:
        server, fsync, sync_commit = (
            admin.execute(f"SHOW {name}").fetchone()[0]
            for name in ("server_version", "fsync", "synchronous_commit")
        )
        with tempfile.TemporaryDirectory(prefix="audit-bench-pg-") as tmp:
            for mode in (m for m in PG_MODES if m in modes):
                with _scratch_schema(admin, mode) as schema:
                    mode_url = scoped_url(url, schema)
                    if mode == "insert-commit":
                        n = min(events, INSERT_COMMIT_MAX_EVENTS)
                        result = _insert_commit(pg, mode_url, inputs[:n], tick)
                    elif mode in ("engine", "engine-keyed"):
                        _create_tables(pg, mode_url)  # as for the others: not timed
                        # The dead-letter file of a URL defaults to the user's data directory:
                        # a bench keeps it in its temporary directory.
                        settings = engine_settings(
                            mode_url,
                            deadletter_path=Path(tmp) / f"{mode}.deadletter.jsonl",
                            **engine_key(mode, chain_key_file, Path(tmp)),
                        )
                        result = run_engine(settings, inputs, threads, tick)
                    else:
                        result = _ceiling(pg, mode_url, inputs, tick)
                    stored = _stored_rows(pg, mode_url)
                results.append(result.model_copy(update={"mode": mode, "rows_stored": stored}))
    finally:
        admin.close()
    ceiling = next((r.events_per_s for r in results if r.mode == "ceiling"), 0.0)
    if ceiling:
        results = [
            r.model_copy(update={"ratio_to_ceiling": r.events_per_s / ceiling}) for r in results
        ]
    return PgBenchReport(
        python=platform.python_version(),
        server=str(server),
        fsync=str(fsync),
        synchronous_commit=str(sync_commit),
        database=mask_url(url),
        machine=f"{platform.system()} {platform.machine()}",
        cpus=os.cpu_count() or 1,
        events=events,
        threads=threads,
        results=results,
    )


def total_pg_events(events: int, modes: tuple[str, ...] = PG_MODES) -> int:
    """How many progress ticks :func:`run_pg_bench` makes (for a progress bar's length)."""
    return sum(
        min(events, INSERT_COMMIT_MAX_EVENTS) if m == "insert-commit" else events for m in modes
    )
