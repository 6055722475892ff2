"""The engine beside what an application would use instead, measured in the same class.

Every peer writes the realistic row of ``audit-engine bench`` (``event_fields``), validated in
the caller as ``record()`` validates it (``stored_row``), into a fresh database with the engine's
own schema (``schema_sql``: the table and its indexes, WAL + NORMAL), 500 rows per transaction;
none of them stores a hash chain. Each is timed from its first call until every row is
committed, then its rows are counted: a peer that lost one fails the benchmark.

* ``engine``: ``AuditService`` async, level ``all``, hash chain on, ``record()`` to ``flush()``;
* ``logging-queue``: the standard library's ``QueueHandler`` + ``QueueListener`` with a batched
  SQLite handler (the ``bench`` command's peer, :mod:`audit_engine.cli.bench_peers`);
* ``otel``: OpenTelemetry's ``LoggerProvider`` + ``BatchLogRecordProcessor`` and an exporter
  writing each batch in one transaction (its queue raised to hold every record: by default it
  drops what does not fit);
* ``loguru``: ``logger.add(sink, enqueue=True)``, a sink batching rows into SQLite.

The peers' packages come with the ``dev`` extra only; the engine never imports them. One
``setup_cache`` runs ``ROUNDS`` rounds, each running the four in an order that rotates from round
to round; the ``track_*_events_per_s`` report medians, and the ``track_engine_over_*`` the median
of the per-round ratios (steadier on a noisy machine than rates taken apart).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loguru import logger as loguru_logger
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    LogRecordExporter,
    LogRecordExportResult,
)

from audit_engine.cli.bench_modes import (
    CEILING_BATCH,
    INSERT_ROW,
    count_rows,
    engine_settings,
    event_fields,
    fresh_connection,
    run_engine,
    schema_sql,
    stored_row,
)
from audit_engine.cli.bench_peers import logging_queue
from audit_engine.cli.bench_rounds import round_order

# The suite measures the defaults: AUDIT_TRAIL_* variables in a developer's shell must not change
# them (asv imports this module in processes of its own, so this touches nothing else).
for _name in [name for name in os.environ if name.upper().startswith("AUDIT_TRAIL_")]:
    del os.environ[_name]

EVENTS = 20_000
ROUNDS = 3
BATCH = CEILING_BATCH  # rows per transaction, as the engine's writer

Inputs = list[dict[str, Any]]


def _noop() -> None:
    pass


class _BatchWriter:
    """Rows into a fresh database with the engine's schema, one transaction per batch."""

    def __init__(self, path: Path, schema: list[str]) -> None:
        self.conn = fresh_connection(path, schema, wal=True)

    def write(self, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            self.conn.execute("BEGIN")
            self.conn.executemany(INSERT_ROW, rows)
            self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


def _engine(path: Path, schema: list[str], inputs: Inputs) -> float:
    return run_engine(engine_settings(path), inputs, 1, _noop).events_per_s


def _logging_queue(path: Path, schema: list[str], inputs: Inputs) -> float:
    conn = fresh_connection(path, schema, wal=True)
    try:
        return logging_queue(conn, inputs, 1, _noop).events_per_s
    finally:
        conn.close()


class _SQLiteExporter(LogRecordExporter):
    """OpenTelemetry's exporter side: each batch the processor hands over, one transaction."""

    def __init__(self, writer: _BatchWriter) -> None:
        self.writer = writer

    def export(self, batch: Any) -> LogRecordExportResult:
        self.writer.write([record.log_record.body for record in batch])
        return LogRecordExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _otel(path: Path, schema: list[str], inputs: Inputs) -> float:
    writer = _BatchWriter(path, schema)
    try:
        provider = LoggerProvider(shutdown_on_exit=False)
        provider.add_log_record_processor(
            BatchLogRecordProcessor(
                _SQLiteExporter(writer), max_export_batch_size=BATCH, max_queue_size=2 * EVENTS
            )
        )
        emit = provider.get_logger("audit-engine-bench").emit
        started = time.perf_counter()
        for fields in inputs:
            emit(body=stored_row(fields))
        provider.shutdown()  # exports what is queued, then stops the worker thread
        return len(inputs) / (time.perf_counter() - started)
    finally:
        writer.close()


class _LoguruSink:
    """A loguru sink (its ``write`` runs on loguru's enqueue thread): a commit every ``BATCH``
    rows, the rest in ``stop``, which loguru calls when the handler is removed."""

    def __init__(self, writer: _BatchWriter) -> None:
        self.writer = writer
        self.rows: list[tuple[Any, ...]] = []

    def write(self, message: Any) -> None:
        self.rows.append(message.record["extra"]["row"])
        if len(self.rows) >= BATCH:
            self.writer.write(self.rows)
            self.rows = []

    def stop(self) -> None:
        self.writer.write(self.rows)
        self.rows = []


def _loguru(path: Path, schema: list[str], inputs: Inputs) -> float:
    # loguru's logger is process-wide: asv runs setup_cache in a process of its own, so the
    # peer takes it over (without its default stderr handler, which would print every row).
    loguru_logger.remove()
    writer = _BatchWriter(path, schema)
    try:
        sink = _LoguruSink(writer)
        handler = loguru_logger.add(sink, enqueue=True, format="{message}", catch=False)
        info = loguru_logger.info
        started = time.perf_counter()
        for fields in inputs:
            info("note.save", row=stored_row(fields))  # keyword arguments land in "extra"
        loguru_logger.remove(handler)  # drains the queue, joins the thread, calls sink.stop()
        return len(inputs) / (time.perf_counter() - started)
    finally:
        writer.close()


_RUNNERS: list[tuple[str, Callable[[Path, list[str], Inputs], float]]] = [
    ("engine", _engine),
    ("logging-queue", _logging_queue),
    ("otel", _otel),
    ("loguru", _loguru),
]


def run_rounds(events: int = EVENTS, rounds: int = ROUNDS) -> dict[str, list[float]]:
    """Each runner's events/s in every round, the rounds in rotating order; rows counted."""
    inputs = [event_fields(i) for i in range(events)]
    rates: dict[str, list[float]] = {name: [] for name, _ in _RUNNERS}
    with tempfile.TemporaryDirectory(prefix="audit-bench-peers-") as tmp:
        workdir = Path(tmp)
        schema = schema_sql(workdir)
        for n in range(rounds):
            for name, run in round_order(_RUNNERS, n, rounds):
                path = workdir / f"{name}-{n}.db"
                rates[name].append(run(path, schema, inputs))
                stored = count_rows(path)
                if stored != events:
                    raise RuntimeError(f"{name} stored {stored} of {events} rows in round {n}")
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
    return rates


def _over(rates: dict[str, list[float]], peer: str) -> float:
    return statistics.median(
        engine / other for engine, other in zip(rates["engine"], rates[peer], strict=True)
    )


class Peers:
    """The engine and three peers, 20 000 events each, in 3 interleaved rounds (medians)."""

    timeout = 600

    def setup_cache(self) -> dict[str, list[float]]:
        return run_rounds()

    def track_engine_events_per_s(self, rates: dict[str, list[float]]) -> float:
        return statistics.median(rates["engine"])

    track_engine_events_per_s.unit = "events/s"  # type: ignore[attr-defined]

    def track_logging_queue_events_per_s(self, rates: dict[str, list[float]]) -> float:
        return statistics.median(rates["logging-queue"])

    track_logging_queue_events_per_s.unit = "events/s"  # type: ignore[attr-defined]

    def track_otel_events_per_s(self, rates: dict[str, list[float]]) -> float:
        return statistics.median(rates["otel"])

    track_otel_events_per_s.unit = "events/s"  # type: ignore[attr-defined]

    def track_loguru_events_per_s(self, rates: dict[str, list[float]]) -> float:
        return statistics.median(rates["loguru"])

    track_loguru_events_per_s.unit = "events/s"  # type: ignore[attr-defined]

    def track_engine_over_logging_queue(self, rates: dict[str, list[float]]) -> float:
        """Engine ÷ logging-queue events/s, the median of the per-round ratios."""
        return _over(rates, "logging-queue")

    track_engine_over_logging_queue.unit = "x"  # type: ignore[attr-defined]

    def track_engine_over_otel(self, rates: dict[str, list[float]]) -> float:
        """Engine ÷ OpenTelemetry batch processor events/s, median of the per-round ratios."""
        return _over(rates, "otel")

    track_engine_over_otel.unit = "x"  # type: ignore[attr-defined]

    def track_engine_over_loguru(self, rates: dict[str, list[float]]) -> float:
        """Engine ÷ loguru enqueue=True events/s, the median of the per-round ratios."""
        return _over(rates, "loguru")

    track_engine_over_loguru.unit = "x"  # type: ignore[attr-defined]
