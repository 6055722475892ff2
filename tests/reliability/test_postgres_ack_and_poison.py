"""A commit whose acknowledgement was lost, and a row the server refuses, on PostgreSQL.

A lost acknowledgement is made by wrapping the sink's connection: the batch's transaction
commits on the server, then the connection is closed and an ``OperationalError`` is raised
before the sink returns, as when the network drops right after COMMIT. The writer must retry
without storing the batch twice.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from audit_engine import AuditService, AuditSettings, AuditStore
from audit_engine.storage import deadletter
from audit_engine.storage.postgres import connection as pg_connection
from audit_engine.storage.postgres import sink as pg_sink

TIMEOUT_S = 60


def stored_ids(url: str) -> list[str]:
    with psycopg.connect(url, connect_timeout=10) as conn:
        return [row[0] for row in conn.execute("SELECT event_id FROM audit_entries ORDER BY id")]


class LoseNextAck:
    """Wraps connections: once armed, the next transaction commits, then the connection drops."""

    def __init__(self) -> None:
        self.armed = threading.Event()
        self.lost = 0

    def connect(self, url: str, **options: Any) -> Any:
        return _AckLosingConnection(pg_connection.connect(url, **options), self)


class _AckLosingConnection:
    def __init__(self, real: psycopg.Connection[Any], fault: LoseNextAck) -> None:
        self._real = real
        self._fault = fault

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        with self._real.transaction() as tx:
            yield tx
        # Committed on the server. Now the acknowledgement "never arrives".
        if self._fault.armed.is_set():
            self._fault.armed.clear()
            self._fault.lost += 1
            self._real.close()
            raise psycopg.OperationalError("server closed the connection unexpectedly")


def test_a_commit_whose_acknowledgement_was_lost_is_not_stored_twice(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault = LoseNextAck()
    monkeypatch.setattr(pg_sink, "connect", fault.connect)
    settings = AuditSettings(
        database=pg_url,
        deadletter_path=tmp_path / "dl.jsonl",
        buffer_max_size=50,
        buffer_flush_interval=5,  # one batch per flush()
        cleanup_enabled=False,
    )
    service = AuditService(settings)
    try:
        first = [service.record(action="ack", event_id=f"a-{n:03d}") for n in range(10)]
        assert service.flush(TIMEOUT_S)
        fault.armed.set()
        second = [service.record(action="ack", event_id=f"b-{n:03d}") for n in range(30)]
        assert service.flush(TIMEOUT_S)
        assert fault.lost == 1  # the fault did happen, on the second batch
        third = [service.record(action="ack", event_id=f"c-{n:03d}") for n in range(10)]
        assert service.close(timeout=TIMEOUT_S)
    finally:
        service.close(timeout=5)
    stats = service.stats()
    assert stats.retries == 1
    assert stats.dead_lettered == 0, stats.last_error  # not refused as duplicates either
    ids = stored_ids(pg_url)
    assert ids == first + second + third  # each once, in order
    with AuditStore(pg_url) as store:
        assert store.verify().ok


def test_a_poison_row_is_dead_lettered_alone_and_the_rest_of_its_batch_commits(
    pg_url: str, tmp_path: Path
) -> None:
    dl_path = tmp_path / "dl.jsonl"
    settings = AuditSettings(
        database=pg_url,
        deadletter_path=dl_path,
        buffer_max_size=50,
        buffer_flush_interval=5,  # the whole batch goes in one transaction at flush()
        cleanup_enabled=False,
    )
    service = AuditService(settings)
    try:
        # An application's own transaction stores "dup" first, through an injected connection.
        with psycopg.connect(pg_url) as app:
            service.record(action="injected", event_id="dup", connection=app)
            app.commit()
        batch = [f"row-{n:02d}" for n in range(20)]
        batch.insert(7, "dup")
        for event_id in batch:
            service.record(action="batch", event_id=event_id)
        assert service.flush(TIMEOUT_S)
        stats = service.stats()
        assert service.close(timeout=TIMEOUT_S)
    finally:
        service.close(timeout=5)
    assert stats.dead_lettered == 1
    assert stats.written == 20 + 1  # the batch, and the injected entry
    assert "ux_audit_entries_event_id" in (stats.last_error or ""), stats.last_error
    lines = list(deadletter.read(dl_path))
    assert [(entry.event_id, entry.action) for _, entry, _ in lines if entry] == [("dup", "batch")]
    assert "UniqueViolation" in lines[0][2]
    assert stored_ids(pg_url) == ["dup"] + [eid for eid in batch if eid != "dup"]
    with AuditStore(pg_url) as store:
        assert store.verify().ok
