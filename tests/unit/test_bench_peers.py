"""The bench's logging-queue peer: the stdlib hand-off, validated rows, batched commits, no loss."""

from __future__ import annotations

import logging
import queue
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from audit_engine.cli import bench_peers
from audit_engine.cli.bench_modes import (
    count_rows,
    event_fields,
    fresh_connection,
    schema_sql,
    stored_row,
)
from audit_engine.cli.bench_peers import BatchedSQLiteHandler, logging_queue
from audit_engine.storage.sqlite.schema import TABLE


@pytest.fixture
def conn(tmp_path: Path) -> Any:
    conn = fresh_connection(tmp_path / "peer.db", schema_sql(tmp_path), wal=True)
    yield conn
    conn.close()


def _record(fields: dict[str, Any]) -> logging.LogRecord:
    record = logging.LogRecord("peer", logging.INFO, __file__, 1, "note.save", None, None)
    record.row = stored_row(fields)
    return record


def test_the_peer_stores_every_row_from_several_threads(
    conn: sqlite3.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench_peers, "PEER_BATCH", 50)
    ticks: list[None] = []
    result = logging_queue(
        conn, [event_fields(i) for i in range(333)], 3, lambda: ticks.append(None)
    )
    assert len(ticks) == 333
    assert (result.events, result.threads) == (333, 3)
    assert count_rows(tmp_path / "peer.db") == 333
    # The same validated rows as every other mode, at least one commit per 50 rows.
    stored = conn.execute(f"SELECT resource_id, details FROM {TABLE}").fetchall()
    assert sorted(int(rid) for rid, _ in stored) == list(range(333))
    assert {details for _, details in stored} == {stored_row(event_fields(0))[9]}
    assert 333 / 50 <= result.commits <= 333
    assert result.caller_p50_us is not None
    assert result.caller_p999_us is not None
    assert result.caller_p999_us >= result.caller_p50_us


def test_the_handler_commits_a_full_batch_or_when_the_queue_is_empty(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench_peers, "PEER_BATCH", 2)
    source: queue.SimpleQueue[Any] = queue.SimpleQueue()
    handler = BatchedSQLiteHandler(conn, source)
    source.put("more to come")
    handler.emit(_record(event_fields(1)))
    assert (handler.commits, len(handler.rows)) == (0, 1)  # the queue holds more: wait
    handler.emit(_record(event_fields(2)))
    assert (handler.commits, len(handler.rows)) == (1, 0)  # a full batch
    handler.emit(_record(event_fields(3)))
    source.get()
    handler.emit(_record(event_fields(4)))
    assert (handler.commits, len(handler.rows)) == (2, 0)  # nothing more queued
    handler.flush()  # nothing held back: no empty transaction
    assert handler.commits == 2
    assert conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone() == (4,)


def test_a_row_that_fails_validation_is_lost_as_logging_loses_it(
    conn: sqlite3.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # logging reports a handler's error on stderr and goes on: the bench counts the rows after,
    # so a peer that loses one is caught (run_bench fails the run).
    monkeypatch.setattr(logging, "raiseExceptions", False)
    inputs = [event_fields(0), event_fields(1) | {"action": ""}, event_fields(2)]
    result = logging_queue(conn, inputs, 1, lambda: None)
    assert result.events == 3
    assert count_rows(tmp_path / "peer.db") == 2
