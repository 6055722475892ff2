"""The bench's ``logging-queue`` peer: what a user would build with the standard library instead.

A ``logging.handlers.QueueHandler`` in the caller's thread, a ``QueueListener`` thread, and a
handler that batches the rows into SQLite (the engine's schema, WAL + NORMAL): a commit every
500 rows or whenever the queue runs empty, and the rest on stop. Each log call carries the
realistic row, validated in the caller by the QueueHandler as ``record()`` validates it, so the
peer and the engine differ only in the hand-off and the writing (the peer stores no hash chain).
Timed from the first log call until the listener has stopped and every row is committed.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sqlite3
import time
from typing import Any

from audit_engine.cli.bench_modes import (
    CEILING_BATCH,
    INSERT_ROW,
    ModeResult,
    Tick,
    mode_result,
    stored_row,
    timed_producers,
)

PEER_BATCH = CEILING_BATCH  # rows per transaction, as the engine's writer and the ceiling


class _ValidatingQueueHandler(logging.handlers.QueueHandler):
    """The stdlib QueueHandler (it formats and copies the record) plus the row's validation."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        prepared: logging.LogRecord = super().prepare(record)
        # Extra fields are plain attributes of the record (``extra={"audit": ...}``).
        vars(prepared)["row"] = stored_row(vars(record)["audit"])
        return prepared


class BatchedSQLiteHandler(logging.Handler):
    """Rows into SQLite in batches, on the listener's thread: a commit every ``PEER_BATCH`` rows
    or when ``source`` is empty (nothing more to wait for), the rest on :meth:`flush`."""

    def __init__(self, conn: sqlite3.Connection, source: queue.SimpleQueue[Any]) -> None:
        super().__init__()
        self.conn = conn
        self.source = source
        self.rows: list[tuple[Any, ...]] = []
        self.commits = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.rows.append(vars(record)["row"])
        if len(self.rows) >= PEER_BATCH or self.source.empty():
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        self.conn.execute("BEGIN")
        self.conn.executemany(INSERT_ROW, self.rows)
        self.conn.execute("COMMIT")
        self.commits += 1
        self.rows.clear()


def logging_queue(
    conn: sqlite3.Connection, inputs: list[dict[str, Any]], threads: int, tick: Tick
) -> ModeResult:
    """``logger.info(..., extra={"audit": fields})`` from ``threads`` threads, until stored."""
    records: queue.SimpleQueue[Any] = queue.SimpleQueue()
    sink = BatchedSQLiteHandler(conn, records)
    # A logger of its own, outside logging's registry: nothing global is touched or left behind.
    logger = logging.Logger("audit-engine-bench-peer", logging.INFO)
    logger.propagate = False
    logger.addHandler(_ValidatingQueueHandler(records))
    listener = logging.handlers.QueueListener(records, sink)
    listener.start()
    try:
        costs, started = timed_producers(
            lambda fields: logger.info("note.save", extra={"audit": fields}), inputs, threads, tick
        )
    finally:
        listener.stop()  # drains what is queued, then joins the listener's thread
        sink.flush()  # rows the listener held back when the stop sentinel was already queued
    elapsed = time.perf_counter() - started
    result = mode_result("", len(inputs), elapsed, costs, commits=sink.commits)
    return result.model_copy(update={"threads": threads})
