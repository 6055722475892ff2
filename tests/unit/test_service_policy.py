"""The service applies the operator's policy: level, exclusions, sampling, critical, redaction,
and de-duplication within scopes."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from audit_engine import AuditEntry, AuditService, AuditStore, AuditWriteError
from audit_engine.storage.sqlite import append

MakeService = Callable[..., AuditService]


def rows(db_path: Path) -> int:
    conn = sqlite3.connect(db_path)
    try:
        return int(conn.execute("SELECT count(*) FROM audit_entries").fetchone()[0])
    finally:
        conn.close()


class WriteLock:
    """Another connection that holds the database's write lock until released."""

    def __init__(self, db_path: Path) -> None:
        self._conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)

    def hold(self) -> None:
        self._conn.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def close(self) -> None:
        self.release()
        self._conn.close()


@pytest.fixture
def write_lock(db_path: Path) -> Iterator[WriteLock]:
    lock = WriteLock(db_path)
    yield lock
    lock.close()


def test_default_level_writes_only_filters_reads(make_service: MakeService, db_path: Path) -> None:
    audit = make_service()
    assert audit.record(action="note.list", operation="read") is None
    created = audit.record(action="note.create", operation="create")
    assert created is not None
    assert audit.flush(10)
    stats = audit.stats()
    assert (stats.accepted, stats.written, stats.filtered_by_level) == (1, 1, 1)
    with AuditStore(db_path) as store:
        assert [e.event_id for e in store.query()] == [created]


def test_level_from_the_environment(
    make_service: MakeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUDIT_TRAIL_LEVEL", "MUTATIONS_ONLY")
    audit = AuditService()  # reads the environment
    try:
        assert audit.policy.level.value == "mutations_only"
    finally:
        audit.close()


@pytest.mark.parametrize(
    ("level", "kept"),
    [
        ("all", {"create", "read", "update", "delete", "execute"}),
        ("writes_only", {"create", "update", "delete", "execute"}),
        ("mutations_only", {"update", "delete"}),
        ("deletes_only", {"delete"}),
    ],
)
def test_each_level_stores_its_operations(
    make_service: MakeService, db_path: Path, level: str, kept: set[str]
) -> None:
    audit = make_service(level=level)
    for op in ("create", "read", "update", "delete", "execute"):
        audit.record(action=f"note.{op}", operation=op)
    audit.close()
    with AuditStore(db_path) as store:
        assert {e.operation.value for e in store.query()} == kept
    assert audit.stats().filtered_by_level == 5 - len(kept)


def test_exclusions_and_sampling_are_counted_separately(make_service: MakeService) -> None:
    audit = make_service(
        level="all",
        exclude_actions=["health_check", "metrics_*"],
        exclude_resources="metric,health",
        sample_rate=0.0,
    )
    assert audit.record(action="health_check") is None
    assert audit.record(action="metrics_read") is None
    assert audit.record(action="note.create", resource_type="health") is None
    assert audit.record(action="note.open", operation="read") is None
    assert audit.record(action="note.create", operation="create") is not None
    stats = audit.stats()
    assert (stats.excluded, stats.sampled_out, stats.accepted) == (3, 1, 1)


def test_a_critical_read_is_recorded_under_writes_only(
    make_service: MakeService, db_path: Path
) -> None:
    audit = make_service(exclude_resources=["patient"], sample_rate=0.0, sample_reads=False)
    event_id = audit.record(
        action="patient.view", operation="read", resource_type="patient", critical=True
    )
    assert event_id is not None
    # critical_sync (default): committed before record() returned, without any flush.
    assert rows(db_path) == 1


def test_critical_sync_commits_at_once_and_keeps_order(
    make_service: MakeService, db_path: Path
) -> None:
    audit = make_service(buffer_flush_interval=3600, buffer_max_size=500)
    first = audit.record(action="note.create", operation="create")
    critical = audit.record(action="note.export", critical=True)
    assert rows(db_path) == 2  # the earlier entry was committed with (before) the critical one
    with AuditStore(db_path) as store:
        assert [e.event_id for e in store.query()] == [first, critical]


def test_without_critical_sync_a_critical_entry_waits_for_its_batch(
    make_service: MakeService, db_path: Path
) -> None:
    audit = make_service(critical_sync=False, buffer_flush_interval=3600)
    audit.record(action="note.export", critical=True)
    assert rows(db_path) == 0  # still queued: nothing asked the writer to commit
    assert audit.flush(10)
    assert rows(db_path) == 1


def test_critical_entry_not_confirmed_in_time_raises_and_stays_queued(
    make_service: MakeService, db_path: Path, write_lock: WriteLock
) -> None:
    audit = make_service(block_timeout=0.2)
    write_lock.hold()
    with pytest.raises(AuditWriteError, match=r"was not confirmed committed within 0\.2s"):
        audit.record(action="patient.view", operation="read", critical=True)
    write_lock.release()
    assert audit.flush(30)
    assert rows(db_path) == 1


def test_redacted_values_never_reach_the_file(make_service: MakeService, db_path: Path) -> None:
    audit = make_service(redact_fields="password,ssn")
    audit.record(
        action="user.update",
        details={"password": "hunter2-secret", "profile": {"SSN": "123-45-6789"}, "name": "Al"},
    )
    audit.close()
    raw = b"".join(p.read_bytes() for p in db_path.parent.iterdir() if p.is_file())
    assert b"hunter2-secret" not in raw
    assert b"123-45-6789" not in raw
    with AuditStore(db_path) as store:
        (entry,) = store.query()
    assert entry.details == {
        "password": "[REDACTED]",
        "profile": {"SSN": "[REDACTED]"},
        "name": "Al",
    }


def test_scope_records_repeats_once(make_service: MakeService) -> None:
    audit = make_service()
    with audit.scope():
        first = audit.record(action="note.save", actor="al", resource_type="note", resource_id="1")
        again = audit.record(action="note.save", actor="al", resource_type="note", resource_id="1")
        other = audit.record(action="note.save", actor="al", resource_type="note", resource_id="2")
    assert first is not None
    assert again is None
    assert other is not None
    outside = audit.record(action="note.save", actor="al", resource_type="note", resource_id="1")
    assert outside is not None  # nothing is de-duplicated outside a scope
    assert audit.stats().deduplicated == 1
    assert audit.stats().accepted == 3


def test_nested_scopes_share_markers_unless_fresh(make_service: MakeService) -> None:
    audit = make_service()
    with audit.scope():
        assert audit.record(action="a") is not None
        with audit.scope():
            assert audit.record(action="a") is None
        with audit.scope(fresh=True):
            assert audit.record(action="a") is not None
        assert audit.record(action="a") is None


def test_scope_with_a_custom_key(make_service: MakeService) -> None:
    audit = make_service()
    with audit.scope(key=lambda e: e.actor):
        assert audit.record(action="a", actor="al") is not None
        assert audit.record(action="b", actor="al") is None
        assert audit.record(action="a", actor="bo") is not None


def test_critical_entries_are_never_deduplicated(make_service: MakeService) -> None:
    audit = make_service()
    with audit.scope():
        assert audit.record(action="patient.view", critical=True) is not None
        assert audit.record(action="patient.view", critical=True) is not None
    assert audit.stats().deduplicated == 0


def test_after_a_failed_record_the_same_entry_is_tried_again(
    make_service: MakeService, db_path: Path, write_lock: WriteLock
) -> None:
    audit = make_service(async_writes=False, busy_timeout=0.05)
    write_lock.hold()
    with audit.scope():
        with pytest.raises(AuditWriteError, match="database is locked"):
            audit.record(action="note.delete", operation="delete", resource_id="7")
        write_lock.release()
        retried = audit.record(action="note.delete", operation="delete", resource_id="7")
        assert retried is not None
        assert audit.record(action="note.delete", operation="delete", resource_id="7") is None
    assert rows(db_path) == 1


def test_a_dropped_entry_is_not_marked(
    make_service: MakeService, db_path: Path, write_lock: WriteLock
) -> None:
    # The writer holds at most one entry (stuck on the lock) and the queue one more, so of three
    # distinct entries at least one is dropped.
    audit = make_service(on_full="drop", queue_maxsize=1, buffer_max_size=1)
    write_lock.hold()
    with audit.scope(key=lambda e: e.action):
        results = {name: audit.record(action=name) for name in ("a", "b", "c")}
        dropped = [name for name, event_id in results.items() if event_id is None]
        assert dropped
        write_lock.release()
        assert audit.flush(30)
        assert audit.record(action=dropped[0]) is not None
    assert audit.flush(30)
    assert rows(db_path) == 4 - len(dropped)


def test_scope_belongs_to_the_thread_that_opened_it(make_service: MakeService) -> None:
    audit = make_service()
    results: list[str | None] = []
    with audit.scope():
        assert audit.record(action="sync") is not None
        worker = threading.Thread(target=lambda: results.append(audit.record(action="sync")))
        worker.start()
        worker.join(10)
    assert len(results) == 1
    assert results[0] is not None


def test_disabled_service_applies_no_policy_and_creates_nothing(
    make_service: MakeService, db_path: Path
) -> None:
    audit = make_service(enabled=False)
    assert audit.record(action="x", critical=True) is None
    assert not db_path.exists()
    assert audit.stats().accepted == 0


def test_a_read_only_database_dead_letters_whole_batches_without_splitting(
    make_service: MakeService, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    attempts: list[int] = []

    def read_only(conn: sqlite3.Connection, rows: Any, *rest: Any) -> None:
        attempts.append(len(rows))
        exc = sqlite3.OperationalError("attempt to write a readonly database")
        exc.sqlite_errorcode = sqlite3.SQLITE_READONLY  # type: ignore[attr-defined]
        raise exc

    audit = make_service(level="all", buffer_max_size=64, buffer_flush_interval=3600)
    monkeypatch.setattr(append, "commit_batch", read_only)
    for i in range(64):
        audit.record(action="note.save", resource_id=str(i))
    assert audit.flush(10)
    stats = audit.stats()
    assert (stats.written, stats.dead_lettered) == (0, 64)
    assert attempts == [64]  # one attempt for the whole batch: no splitting
    lines = (db_path.parent / (db_path.name + ".deadletter.jsonl")).read_text().splitlines()
    assert len(lines) == 64


def test_bus_events_are_stored_as_their_audit_entry(
    make_service: MakeService, db_path: Path
) -> None:
    from audit_engine import DomainEvent, EventBus, Operation

    class Saved(DomainEvent):
        event_type: str = "note.save"
        actor: str
        operation: Operation = Operation.UPDATE
        resource_id: str
        size: int = 0

    class Custom(Saved):
        def to_audit_entry(self) -> AuditEntry:
            return super().to_audit_entry().model_copy(update={"action": "custom.save"})

    audit = make_service(level="all")
    bus = EventBus()
    audit.subscribe(bus)
    plain = Saved(actor="al", resource_id="7", size=3, payload={"k": "v"}, correlation_id="c1")
    custom = Custom(actor="bo", resource_id="8")
    bus.emit(plain)
    bus.emit(custom)
    audit.close()
    with AuditStore(db_path) as store:
        stored = [e.model_dump(exclude={"event_id"}) for e in store.query()]
    expected = [
        e.model_dump(exclude={"event_id"})
        for e in (plain.to_audit_entry(), custom.to_audit_entry())
    ]
    assert stored == expected
    assert stored[1]["action"] == "custom.save"
