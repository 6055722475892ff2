"""``service.context()`` and ``service.disabled()``: fields bound to a block of work.

What is checked is what is stored: every test reads the trail back after ``flush()``.
"""

from __future__ import annotations

import contextvars
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from audit_engine import AuditEntry, AuditService, AuditStore, DomainEvent, EventBus

MakeService = Callable[..., AuditService]


def stored(db_path: Path) -> list[AuditEntry]:
    with AuditStore(db_path) as store:
        return list(store.query())


def only(db_path: Path) -> AuditEntry:
    entries = stored(db_path)
    assert len(entries) == 1, entries
    return entries[0]


def test_a_context_fills_in_the_fields_a_record_did_not_pass(
    make_service: MakeService, db_path: Path
) -> None:
    audit = make_service()
    with audit.context(actor="alice", correlation_id="req-1", resource_type="note", tenant="t1"):
        audit.record(action="note.save", details={"size": 3})
    assert audit.flush(10)
    entry = only(db_path)
    assert (entry.actor, entry.correlation_id, entry.resource_type) == ("alice", "req-1", "note")
    assert entry.details == {"size": 3, "tenant": "t1"}


def test_explicit_keywords_win_even_none_and_the_entrys_details_keys_win(
    make_service: MakeService, db_path: Path
) -> None:
    audit = make_service()
    with audit.context(actor="alice", correlation_id="req-1", details={"k": "ctx", "other": 1}):
        audit.record(action="a", actor="bob", correlation_id=None, details={"k": "own"})
    assert audit.flush(10)
    entry = only(db_path)
    assert (entry.actor, entry.correlation_id) == ("bob", None)
    assert entry.details == {"k": "own", "other": 1}


def test_nested_contexts_inner_wins_and_the_outer_comes_back(
    make_service: MakeService, db_path: Path
) -> None:
    audit = make_service()
    with audit.context(actor="alice", step="outer", keep=1):
        with audit.context(actor="system", step="inner"):
            audit.record(action="inner")
        audit.record(action="outer")
    audit.record(action="outside")
    assert audit.flush(10)
    inner, outer, outside = stored(db_path)
    assert (inner.actor, inner.details) == ("system", {"keep": 1, "step": "inner"})
    assert (outer.actor, outer.details) == ("alice", {"keep": 1, "step": "outer"})
    assert (outside.actor, outside.details) == (None, {})


def test_an_audit_entry_gets_the_context_only_for_fields_it_was_not_given(
    make_service: MakeService, db_path: Path
) -> None:
    audit = make_service()
    given = AuditEntry(action="a", actor=None, details={"own": True})
    with audit.context(actor="alice", correlation_id="req-9", tenant="t1"):
        event_id = audit.record(given)
    assert audit.flush(10)
    entry = only(db_path)
    assert event_id == given.event_id == entry.event_id
    assert entry.timestamp == given.timestamp
    # actor=None was passed explicitly: it wins; correlation_id was left at its default.
    assert (entry.actor, entry.correlation_id) == (None, "req-9")
    assert entry.details == {"own": True, "tenant": "t1"}


def test_an_audit_entry_with_keywords_is_still_refused_inside_a_context(
    make_service: MakeService,
) -> None:
    audit = make_service()
    with (
        audit.context(actor="alice"),
        pytest.raises(TypeError, match="an AuditEntry or keyword fields, not both"),
    ):
        audit.record(AuditEntry(action="a"), actor="bob")
    with audit.context(actor="alice"), pytest.raises(TypeError, match="got str"):
        audit.record("a")  # type: ignore[arg-type]


def test_bus_events_get_the_context(make_service: MakeService, db_path: Path) -> None:
    audit = make_service()
    bus = EventBus()
    audit.subscribe(bus)
    with audit.context(actor="alice", correlation_id="req-2"):
        bus.emit(DomainEvent(event_type="note.created", resource_type="note", resource_id="1"))
        bus.emit(DomainEvent(event_type="note.shared", actor=None, correlation_id="own"))
    assert audit.flush(10)
    created, shared = stored(db_path)
    assert (created.actor, created.correlation_id, created.resource_id) == ("alice", "req-2", "1")
    # What the event set explicitly wins, even None.
    assert (shared.actor, shared.correlation_id) == (None, "own")


def test_a_mapped_bus_event_gets_the_context_for_fields_it_left_unset(
    make_service: MakeService, db_path: Path
) -> None:
    audit = make_service()
    bus = EventBus()
    audit.subscribe(bus, lambda event: event.to_audit_entry())
    with audit.context(actor="alice"):
        bus.emit(DomainEvent(event_type="note.created"))
    assert audit.flush(10)
    assert only(db_path).actor == "alice"


def test_a_new_thread_starts_without_the_context_unless_given_a_copy(
    make_service: MakeService, db_path: Path
) -> None:
    audit = make_service()
    with audit.context(actor="alice"):
        plain = threading.Thread(target=audit.record, kwargs={"action": "plain"})
        copied = contextvars.copy_context()
        carried = threading.Thread(target=copied.run, args=(audit.record,), kwargs={"action": "c"})
        for worker in (plain, carried):
            worker.start()
            worker.join(10)
    assert audit.flush(10)
    actors = {entry.action: entry.actor for entry in stored(db_path)}
    assert actors == {"plain": None, "c": "alice"}


def test_contexts_are_per_service(make_service: MakeService, tmp_path: Path) -> None:
    first = make_service()
    second = make_service(database=tmp_path / "second.db")
    with first.context(actor="alice"):
        second.record(action="a")
    assert second.flush(10)
    assert only(tmp_path / "second.db").actor is None


@pytest.mark.parametrize("field", ["action", "operation", "outcome", "event_id", "critical"])
def test_fields_of_each_entry_are_refused(make_service: MakeService, field: str) -> None:
    audit = make_service()
    with pytest.raises(TypeError, match=f"context\\(\\) does not take {field}: it belongs to each"):
        audit.context(**{field: "x"})


def test_bad_values_are_refused_when_the_block_opens(make_service: MakeService) -> None:
    audit = make_service()
    with pytest.raises(ValidationError, match="actor"):
        audit.context(actor="x" * 10_000)
    with pytest.raises(ValidationError, match=r"details\.when"):
        audit.context(when=object())
    with pytest.raises(TypeError, match="context\\(\\) details must be a mapping, got list"):
        audit.context(details=[1])  # type: ignore[arg-type]


def test_values_are_normalised_as_an_entry_would_hold_them(
    make_service: MakeService, db_path: Path
) -> None:
    audit = make_service()
    with audit.context(resource_id=42, batch={"n": 1}):  # ids as text, as record() stores them
        audit.record(action="a")
    assert audit.flush(10)
    entry = only(db_path)
    assert (entry.resource_id, entry.details) == ("42", {"batch": {"n": 1}})


def test_context_details_that_overflow_max_details_bytes_fail_each_record(
    make_service: MakeService,
) -> None:
    audit = make_service(max_details_bytes=64)
    with audit.context(note="n" * 40), pytest.raises(ValueError, match="max_details_bytes"):
        audit.record(action="a", details={"more": "m" * 40})


def test_disabled_records_nothing_but_critical_entries_and_counts_what_it_skipped(
    make_service: MakeService, db_path: Path
) -> None:
    audit = make_service()
    with audit.disabled():
        assert audit.record(action="maintenance.fix") is None
        assert audit.record(AuditEntry(action="maintenance.fix")) is None
        kept = audit.record(action="admin.override", critical=True)
    assert kept is not None
    assert audit.record(action="normal") is not None
    assert audit.flush(10)
    assert [e.action for e in stored(db_path)] == ["admin.override", "normal"]
    stats = audit.stats()
    assert (stats.skipped_disabled, stats.accepted) == (2, 2)


def test_disabled_still_refuses_bad_input(make_service: MakeService) -> None:
    audit = make_service()
    with audit.disabled(), pytest.raises(ValidationError, match="action"):
        audit.record(action="")


def test_disabled_keeps_the_context_and_scope_around_it(
    make_service: MakeService, db_path: Path
) -> None:
    audit = make_service()
    with audit.context(actor="alice"), audit.scope():
        audit.record(action="a", resource_id="1")
        with audit.disabled():
            audit.record(action="b")
        audit.record(action="a", resource_id="1")  # a repeat of the same scope
        audit.record(action="c")
    assert audit.flush(10)
    assert [(e.action, e.actor) for e in stored(db_path)] == [("a", "alice"), ("c", "alice")]
    assert audit.stats().deduplicated == 1


def test_a_scope_inside_a_context_keeps_the_context(
    make_service: MakeService, db_path: Path
) -> None:
    audit = make_service()
    with audit.scope(), audit.context(actor="alice"), audit.scope(fresh=True):
        audit.record(action="a")
        audit.record(action="a")
    assert audit.flush(10)
    assert [e.actor for e in stored(db_path)] == ["alice"]


def test_a_context_applies_to_an_injected_connection(
    make_service: MakeService, tmp_path: Path
) -> None:
    conn = sqlite3.connect(tmp_path / "app.db")
    try:
        audit = make_service(database=tmp_path / "unused.db")
        with audit.context(actor="alice"):
            audit.record(action="a", connection=conn)
        conn.commit()
    finally:
        conn.close()
    assert only(tmp_path / "app.db").actor == "alice"


def test_policy_sees_the_context_fields(make_service: MakeService, db_path: Path) -> None:
    audit = make_service(exclude_resources=["session"])
    with audit.context(resource_type="session"):
        assert audit.record(action="session.touch") is None
    assert audit.stats().excluded == 1


def test_a_disabled_service_accepts_a_context_and_records_nothing(tmp_path: Path) -> None:
    values: dict[str, Any] = {"database": tmp_path / "off.db", "enabled": False}
    with AuditService(**values) as audit, audit.context(actor="alice"):
        assert audit.record(action="a") is None
    assert not (tmp_path / "off.db").exists()


def test_context_details_are_checked_against_the_services_max_details_bytes(
    make_service: MakeService, db_path: Path
) -> None:
    audit = make_service(max_details_bytes=200_000)
    with audit.context(note="n" * 100_000):  # over the default 65 536, under this service's
        audit.record(action="a")
    assert audit.flush(10)
    assert len(only(db_path).details["note"]) == 100_000
    small = make_service(database=db_path.with_name("small.db"), max_details_bytes=100)
    with pytest.raises(ValidationError, match="max_details_bytes=100"):
        small.context(note="n" * 200)
