"""intake: which inputs take the fast path, and that the rest reach the model."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from audit_engine.intake import (
    Row,
    _NotPlain,
    entry_row,
    plain_row,
    row_entry,
    validated_row,
    with_details,
)
from audit_engine.models import AuditEntry


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
