"""intake: which inputs take the fast path, and that the rest reach the model."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from audit_engine import AuditService, AuditStore
from audit_engine.models import AuditEntry
from audit_engine.pipeline.intake import _NotPlain, plain_row, validated_row, with_details
from audit_engine.rows import Row, entry_row, row_entry, storable_entry


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels):
        value = {"n": value}
    return value


@pytest.mark.parametrize(
    "fields",
    [
        {"action": "a", "event_id": None},  # explicit None: the model says what that means
        {"action": "a", "timestamp": None},
        {"action": "a", "details": {"t": "zoë"}, "actor": "zoë"},
        {"action": "a", "details": _deep(40)},
        {"action": "a", "details": {"x": (1, 2)}},
        {"action": "a", "operation": 3},
        {"action": "a", "critical": 1},
        {"action": " "},
        {"action": "a", "event_id": ""},
        {"action": "a", "details": {"f": 1.5, "n": float("nan")}},
        {"action": "a", "timestamp": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))},
    ],
)
def test_unusual_input_leaves_the_fast_path(fields: dict[str, Any]) -> None:
    with pytest.raises(_NotPlain):
        plain_row(fields, 65536)


def test_non_ascii_details_are_measured_in_bytes() -> None:
    fields = {"action": "a", "details": {"t": "é" * 40}}
    with pytest.raises(ValidationError, match="more than max_details_bytes=60"):
        validated_row(fields, 60)


def test_a_lone_surrogate_in_details_is_rejected_by_the_model() -> None:
    with pytest.raises(ValidationError, match="cannot be encoded as UTF-8"):
        validated_row({"action": "a", "details": {"t": "\ud800"}}, 65536)


def test_an_overflowing_timestamp_is_a_validation_error() -> None:
    stamp = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))
    with pytest.raises(ValidationError, match="out of range once converted to UTC"):
        validated_row({"action": "a", "timestamp": stamp}, 65536)


def test_non_ascii_details_within_the_limit_take_the_fast_path() -> None:
    row, _ = plain_row({"action": "a", "details": {"t": "é"}, "event_id": "e"}, 65536)
    assert row.details == '{"t":"é"}'


def test_rows_and_models_convert_both_ways() -> None:
    entry = AuditEntry(
        action="a",
        actor="al",
        details={"k": [1, {"x": None}]},
        critical=True,
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
    )
    row = entry_row(entry)
    assert isinstance(row, Row)
    assert row_entry(row) == entry
    assert with_details(row, {}).details == "{}"
    assert with_details(row, {"b": 1, "a": 2}).details == '{"a":2,"b":1}'


# -- entries record() did not see validated (item 6, item 10) -----------------------------------


def _smuggled(how: str, field: str, value: object) -> AuditEntry:
    """An entry holding ``value`` in ``field`` without validation having seen it."""
    if how == "model_copy":
        return AuditEntry(action="x").model_copy(update={field: value})
    if how == "model_construct":
        return AuditEntry.model_construct(**{**AuditEntry(action="x").__dict__, field: value})
    entry = AuditEntry(action="x")
    object.__setattr__(entry, field, value)  # around frozen
    return entry


SMUGGLED = [
    ("actor", "\ud800", "actor\n  Input should be a valid string, unable to parse raw data"),
    ("resource_id", "a\x00b", "Value error, resource_id must not contain control characters"),
    ("correlation_id", "\x85", "Value error, correlation_id must not contain control characters"),
    ("event_id", "e\u202e", "Value error, event_id must not contain control characters"),
    ("action", "a\u2028", "Value error, action must not contain control characters"),
    ("operation", "destroy", "operation\n  Input should be 'create', 'read', 'update'"),
    ("details", {"n": math.nan}, "Value error, details.n is nan, which JSON cannot hold"),
    ("details", {"n": 10**5000}, "Value error, details.n is an integer with more than 4300"),
    ("timestamp", datetime(2026, 1, 1), "Value error, timestamp must be timezone-aware"),
]


@pytest.mark.parametrize("how", ["model_copy", "model_construct", "setattr"])
@pytest.mark.parametrize(("field", "value", "message"), SMUGGLED, ids=[s[0] for s in SMUGGLED])
def test_record_validates_again_an_entry_validation_did_not_make(
    make_service: Callable[..., AuditService], how: str, field: str, value: object, message: str
) -> None:
    # Was: accepted, and then the writer thread died on it (B3) or verify() raised a false alarm.
    audit = make_service(cleanup_enabled=False)

    with pytest.raises(ValueError, match=re.escape(message)):
        audit.record(_smuggled(how, field, value))

    assert audit.stats().accepted == 0
    assert audit.record(action="after") is not None
    assert audit.close(10) is True
    assert (audit.stats().written, audit.stats().dead_lettered) == (1, 0)


def test_a_copy_with_details_to_convert_is_converted_when_recorded(
    make_service: Callable[..., AuditService], db_path: Path
) -> None:
    audit = make_service(cleanup_enabled=False)
    copy = AuditEntry(action="x").model_copy(
        update={"details": {"when": date(2026, 1, 2), "password": "hunter2"}, "resource_id": 42}
    )

    audit.record(copy)

    assert audit.close(10) is True
    with AuditStore(db_path) as store:
        (stored,) = store.query()
    assert stored.resource_id == "42"
    assert stored.details == {"when": "2026-01-02", "password": "[REDACTED]"}


def test_a_smuggled_copy_over_the_services_details_limit_is_refused(
    make_service: Callable[..., AuditService],
) -> None:
    audit = make_service(cleanup_enabled=False, max_details_bytes=100)
    copy = AuditEntry(action="x").model_copy(update={"details": {"k": "x" * 200}})

    with pytest.raises(ValueError, match="more than max_details_bytes=100"):
        audit.record(copy)


def test_verify_stays_clean_after_a_smuggled_control_character_was_refused(
    make_service: Callable[..., AuditService], db_path: Path
) -> None:
    # Item 10: the entry used to be committed, and verify() then reported the file as modified.
    audit = make_service(cleanup_enabled=False)
    audit.record(action="before")
    with pytest.raises(ValueError, match="actor must not contain control characters"):
        audit.record(AuditEntry(action="x").model_copy(update={"actor": "eve\x1f"}))
    audit.record(action="after")
    assert audit.close(10) is True

    with AuditStore(db_path) as store:
        report = store.verify()
    assert report.ok, report
    assert report.rows_checked == 2


def test_storable_entry_returns_an_intact_entry_itself() -> None:
    entry = AuditEntry(action="x")

    assert storable_entry(entry) is entry
    again = storable_entry(entry.model_copy(update={"actor": "bob"}))
    assert again.actor == "bob"
    assert again.is_intact()


def test_entry_row_validates_an_entry_that_is_not_intact() -> None:
    with pytest.raises(ValidationError, match="actor must not contain control characters"):
        entry_row(AuditEntry(action="x").model_copy(update={"actor": "\x9b"}))


# -- details the fast path leaves to the model (items 11, 15, 17) ------------------------------


def test_an_int_too_long_for_text_leaves_the_fast_path_and_is_named() -> None:
    # Was: the fast path's encoder raised an unnamed ValueError (Python's int -> str limit).
    fields = {"action": "a", "details": {"n": 10**5000}}
    with pytest.raises(_NotPlain):
        plain_row(fields, 65536)

    with pytest.raises(ValidationError, match=r"details\.n is an integer with more than 4300"):
        validated_row(fields, 10**9)


def test_keyword_details_nested_5000_deep_are_a_clean_value_error() -> None:
    with pytest.raises(ValidationError, match="details is nested more than 64 levels deep"):
        validated_row({"action": "a", "details": _deep(5000)}, 10**9)


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        (Decimal("2.50"), '"2.50"'),
        (datetime(2026, 1, 1, tzinfo=UTC), '"2026-01-01T00:00:00+00:00"'),
        ((1, 2), "[1,2]"),
        ({"b", "a"}, '["a","b"]'),
    ],
)
def test_keyword_details_to_convert_take_the_model_path(value: object, stored: str) -> None:
    fields = {"action": "a", "details": {"v": value}}
    with pytest.raises(_NotPlain):
        plain_row(fields, 65536)

    row, details = validated_row(fields, 65536)

    assert row.details == f'{{"v":{stored}}}'
    assert details == {"v": json.loads(stored)}


def test_an_int_resource_id_is_stored_as_text() -> None:
    row, _ = validated_row({"action": "a", "resource_id": 42}, 65536)

    assert row.resource_id == "42"


@dataclass
class _Login:
    user: str
    password: str


class _Session(BaseModel):
    token: str
    started: datetime


def test_redaction_sees_the_keys_of_converted_details(
    make_service: Callable[..., AuditService], db_path: Path
) -> None:
    audit = make_service(cleanup_enabled=False)
    started = datetime(2026, 1, 1, tzinfo=UTC)

    audit.record(
        action="login",
        details={
            "login": _Login("alice", "hunter2"),
            "keys": ({"api_key": "k-1", "n": 1},),  # a tuple: converted to a list
            "session": _Session(token="t-1", started=started),
        },
    )

    assert audit.close(10) is True
    with AuditStore(db_path) as store:
        (stored,) = store.query()
    assert stored.details == {
        "login": {"user": "alice", "password": "[REDACTED]"},
        "keys": [{"api_key": "[REDACTED]", "n": 1}],
        "session": {"token": "[REDACTED]", "started": "2026-01-01T00:00:00Z"},
    }


def test_details_changed_in_place_after_validation_are_checked_when_redacted(
    make_service: Callable[..., AuditService], db_path: Path
) -> None:
    # The dict inside a frozen entry can still be changed; redaction re-serialises it.
    audit = make_service(cleanup_enabled=False)
    bad = AuditEntry(action="x", details={"password": "p"})
    bad.details["note"] = "\ud800"
    converted = AuditEntry(action="y", details={"password": "p"})
    converted.details["on"] = date(2026, 1, 2)

    with pytest.raises(ValueError, match=r"details\.note contains characters that cannot be"):
        audit.record(bad)
    audit.record(converted)

    assert audit.close(10) is True
    assert (audit.stats().written, audit.stats().dead_lettered) == (1, 0)
    with AuditStore(db_path) as store:
        (stored,) = store.query()
    assert stored.details == {"password": "[REDACTED]", "on": "2026-01-02"}


def test_with_details_keeps_plain_details_as_they_are() -> None:
    row = entry_row(AuditEntry(action="a"))

    assert with_details(row, {"t": "é", "n": 1}).details == '{"n":1,"t":"é"}'
