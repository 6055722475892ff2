"""The fast path of record() accepts and rejects exactly what the AuditEntry model does.

For any keyword input, ``intake.validated_row`` either raises ValueError exactly when
``AuditEntry.model_validate`` does, or returns the same stored row as the model's
``entry_row``. Inputs are drawn to hit both sides of every check the fast path makes, and the
values details convert (dates, decimals, UUIDs, enums, paths, sets, dataclasses, models).
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from enum import Enum, IntEnum, StrEnum
from pathlib import PurePosixPath
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from audit_engine.models import AuditEntry, Operation, Outcome
from audit_engine.pipeline.intake import plain_row, validated_row
from audit_engine.rows import Row, entry_row

LIMIT = 256


class Shade(Enum):
    DARK = "dark"
    PAIR = (1, 2)


class Rank(IntEnum):
    TOP = 1


class Tag(StrEnum):
    NEW = "new"


@dataclasses.dataclass(frozen=True)
class Spot:
    x: int
    label: str


class Money(BaseModel):
    amount: Decimal
    currency: str


# Values details convert to JSON: never plain to the fast path, so the model decides.
converted_leaf = st.one_of(
    st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-3))])),
    st.datetimes(),
    st.dates(),
    st.times(),
    st.decimals(allow_nan=False),
    st.decimals(),  # NaN and infinities are text too
    st.uuids(),
    st.sampled_from([*Shade, *Rank, *Tag]),
    st.text(max_size=6).map(lambda t: PurePosixPath("/", t)),
    st.builds(Spot, st.integers(), st.text(max_size=4)),
    st.builds(
        Money,
        amount=st.decimals(allow_nan=False, allow_infinity=False, places=2),
        currency=st.just("EUR"),
    ),
    # Refused, naming the key. Big ints built by map(): a literal one breaks hypothesis's repr().
    st.sampled_from([4299, 4300, -4400]).map(lambda n: 10 ** abs(n) * (-1 if n < 0 else 1)),
    st.sampled_from([1j, b"raw", object()]),
)

texts = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=st.characters(codec="ascii"), max_size=12),
    st.sampled_from(
        ["", " ", "note.save", "a\x1fb", "x\x00", "zoë", "\ud800", "a" * 201, "b" * 1025]
    ),
)
json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
hashable_leaf = st.one_of(st.integers(), st.text(max_size=4), st.uuids(), st.dates(), st.none())
json_values = st.recursive(
    st.one_of(json_leaf, converted_leaf),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.text(max_size=5), children, max_size=3),
        st.tuples(children),  # not JSON to the fast path: the model decides
        st.sets(hashable_leaf, max_size=4),
        st.frozensets(st.tuples(hashable_leaf, hashable_leaf), max_size=3),
    ),
    max_leaves=8,
)


def _nested(levels: int) -> dict[str, Any]:
    value: Any = 1
    for _ in range(levels - 1):
        value = [value]
    return {"k": value}


timestamps = st.one_of(
    st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))])),
    st.datetimes(),  # naive: rejected
    st.sampled_from(["2026-01-01T00:00:00Z", 0, None]),
)
optional_text = st.one_of(st.none(), texts, st.integers(), st.uuids(), st.booleans())
fields_strategy = st.fixed_dictionaries(
    {"action": st.one_of(texts, st.integers(), st.none())},
    optional={
        "event_id": st.one_of(texts, st.none()),
        "timestamp": timestamps,
        "actor": optional_text,
        "resource_type": optional_text,
        "resource_id": optional_text,
        "correlation_id": optional_text,
        "operation": st.one_of(
            st.sampled_from(list(Operation)), texts, st.sampled_from(["read", "READ"])
        ),
        "outcome": st.one_of(st.sampled_from(list(Outcome)), st.sampled_from(["failure", "x"])),
        "critical": st.one_of(st.booleans(), st.sampled_from([0, 1, "true", None])),
        "details": st.one_of(
            st.dictionaries(st.text(max_size=5), json_values, max_size=4),
            st.dictionaries(st.integers(), st.integers(), max_size=2),
            st.just({"big": "x" * (LIMIT + 1)}),
            st.just([1, 2]),
            st.integers(28, 70).map(_nested),  # around both depth limits: 32 and 64
            st.builds(Spot, st.integers(), st.text(max_size=4)),  # no dict: not a JSON object
        ),
        "bogus": st.just(1),
    },
)


def _model_row(fields: dict[str, Any]) -> Row | None:
    try:
        entry = AuditEntry.model_validate(fields, context={"max_details_bytes": LIMIT})
    except ValueError:
        return None
    return entry_row(entry)


def _same_generated(fast: Row, model: Row, fields: dict[str, Any]) -> Row:
    # event_id and timestamp are generated when absent: compare the rest, and their form.
    replace: dict[str, Any] = {}
    if fields.get("event_id") is None and "event_id" not in fields:
        assert len(fast.event_id) == 36
        replace["event_id"] = model.event_id
    if "timestamp" not in fields:
        assert len(fast.timestamp) == len(model.timestamp) == 27
        assert fast.timestamp.endswith("Z")
        replace["timestamp"] = model.timestamp
    return fast._replace(**replace)


@settings(max_examples=600, deadline=None)
@given(fields_strategy)
def test_fast_path_agrees_with_the_model(fields: dict[str, Any]) -> None:
    expected = _model_row(fields)
    if expected is None:
        with pytest.raises(ValueError):  # noqa: PT011 - pydantic's or the engine's own
            validated_row(fields, LIMIT)
        return
    row, details = validated_row(fields, LIMIT)
    assert _same_generated(row, expected, fields) == expected
    assert isinstance(details, dict)
    # What redaction walks is the converted details: the very JSON that is stored.
    assert json.loads(row.details) == details


def test_converted_values_are_stored_as_the_model_stores_them() -> None:
    fields = {
        "action": "a",
        "resource_id": 42,
        "details": {
            "when": datetime(2026, 1, 1, 12, tzinfo=UTC),
            "on": date(2026, 1, 1),
            "at": time(12, 30),
            "amount": Decimal("0.10"),
            "id": UUID(int=7),
            "shade": Shade.PAIR,
            "path": PurePosixPath("/a/b"),
            "tags": {"b", "a"},
            "spot": Spot(1, "x"),
            "money": Money(amount=Decimal("1.50"), currency="EUR"),
        },
    }

    row, details = validated_row(fields, 65536)

    assert row == entry_row(AuditEntry.model_validate(fields))._replace(
        event_id=row.event_id, timestamp=row.timestamp
    )
    assert row.resource_id == "42"
    assert json.loads(row.details) == details


def test_plain_input_takes_the_fast_path() -> None:
    fields = {
        "action": "note.save",
        "actor": "alice",
        "operation": "update",
        "resource_type": "note",
        "resource_id": "42",
        "details": {"bytes": 812, "title": "Quarterly plan"},
        "critical": True,
        "timestamp": datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        "event_id": "evt-1",
    }
    row, details = plain_row(fields, LIMIT)
    assert row == entry_row(AuditEntry(**fields))
    assert details is fields["details"]


def test_generated_timestamps_are_the_stored_form_of_now() -> None:
    before = datetime.now(UTC)
    row, _ = plain_row({"action": "x"}, LIMIT)
    after = datetime.now(UTC)
    stamp = datetime.fromisoformat(row.timestamp.replace("Z", "+00:00"))
    assert before - timedelta(microseconds=1) <= stamp <= after
