"""AuditEntry and AuditStats: defaults, validation, and the stored JSON form of details."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import time as real_time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from enum import Enum, IntEnum, StrEnum
from pathlib import PurePosixPath
from types import MappingProxyType, SimpleNamespace
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from audit_engine import models
from audit_engine.models import AuditEntry, AuditStats, Operation, Outcome

IDENTIFIER_FIELDS = ("event_id", "actor", "resource_type", "resource_id", "correlation_id")


def _only_error(exc: pytest.ExceptionInfo[ValidationError]) -> dict[str, Any]:
    errors = exc.value.errors()
    assert len(errors) == 1, errors
    return dict(errors[0])


def _clock(time_ns: Callable[[], int]) -> SimpleNamespace:
    """The ``time`` module as the id generator sees it, with a clock of the test's choosing."""
    return SimpleNamespace(time_ns=time_ns, strftime=real_time.strftime, gmtime=real_time.gmtime)


def _id_parts(event_id: str) -> tuple[int, int]:
    """(unix milliseconds, counter) of an event id: 12 counter bits in rand_a, 30 in rand_b."""
    hex_digits = event_id.replace("-", "")
    rand_a = int(hex_digits[13:16], 16)
    rand_b = int(hex_digits[16:32], 16) & ((1 << 62) - 1)
    return int(hex_digits[:12], 16), rand_a << 30 | rand_b >> 32


def _id_tag(event_id: str) -> str:
    """The per-process random tag: an id's last 8 hex digits."""
    return event_id[-8:]


# -- event_id ----------------------------------------------------------------------------------


def test_default_event_id_is_a_uuid7_string() -> None:
    event_id = AuditEntry(action="a").event_id

    parsed = uuid.UUID(event_id)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert str(parsed) == event_id  # canonical lower-case, hyphenated form


def test_event_id_carries_the_current_unix_milliseconds() -> None:
    generate = models._EventIdGenerator()  # a fresh one: the shared one may run ahead
    before_ms = datetime.now(UTC).timestamp() * 1000
    ms, _ = _id_parts(generate())
    after_ms = datetime.now(UTC).timestamp() * 1000

    assert int(before_ms) <= ms <= math.ceil(after_ms)


def test_default_event_ids_sort_in_creation_order_and_are_unique() -> None:
    ids = [AuditEntry(action="a").event_id for _ in range(10_000)]

    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_ids_within_one_millisecond_are_ordered_by_the_counter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frozen_ns = 1_700_000_000_123 * 1_000_000
    monkeypatch.setattr(models, "time", _clock(lambda: frozen_ns))
    generate = models._EventIdGenerator()

    # More than 65 536: the counter's cached upper bits change at least once on the way.
    ids = [generate() for _ in range(70_000)]

    parts = [_id_parts(i) for i in ids]
    assert {ms for ms, _ in parts} == {1_700_000_000_123}
    first = parts[0][1]
    assert [counter for _, counter in parts] == list(range(first, first + len(ids)))
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 7 and str(uuid.UUID(i)) == i for i in ids[::997])


def test_an_id_and_its_timestamp_come_from_one_reading_of_the_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 2023-11-14T22:13:20.123456Z, then one second and a microsecond later, then back a minute.
    clock = iter(
        ns * 1000 for ns in (1_700_000_000_123_456, 1_700_000_001_123_457, 1_699_999_941_000_001)
    )
    monkeypatch.setattr(models, "time", _clock(lambda: next(clock)))
    generate = models._EventIdGenerator()

    stamps = [generate.stamp() for _ in range(3)]

    assert [stamp for _, stamp in stamps] == [
        "2023-11-14T22:13:20.123456Z",
        "2023-11-14T22:13:21.123457Z",
        "2023-11-14T22:12:21.000001Z",  # the clock stepped back: the timestamp says so...
    ]
    assert [_id_parts(i)[0] for i, _ in stamps] == [
        1_700_000_000_123,
        1_700_000_001_123,
        1_700_000_001_123,  # ...while the id keeps the last millisecond, so ids stay ordered
    ]
    ids = [i for i, _ in stamps]
    assert ids == sorted(ids)


def test_ids_keep_increasing_when_the_clock_steps_back(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(ms * 1_000_000 for ms in (5_000, 4_000, 3_000, 5_000, 6_000))
    monkeypatch.setattr(models, "time", _clock(lambda: next(clock)))
    generate = models._EventIdGenerator()

    ids = [generate() for _ in range(5)]

    assert ids == sorted(ids)
    # The last millisecond seen is kept until the clock passes it; the counter orders the rest.
    assert [ms for ms, _ in map(_id_parts, ids)] == [5_000] * 4 + [6_000]


def test_two_generators_differ_in_tag_and_counter_start() -> None:
    # What separates processes writing into one file: a random tag and counter start each.
    one, two = models._EventIdGenerator()(), models._EventIdGenerator()()

    assert _id_tag(one) != _id_tag(two)
    assert _id_parts(one)[1] != _id_parts(two)[1]


def test_a_forked_child_makes_ids_with_a_fresh_tag() -> None:
    parent_id = models.new_event_id()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; its result comes back through the pipe
        try:
            os.write(write_end, models.new_event_id().encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child_id = pipe.read()
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert uuid.UUID(child_id).version == 7
    assert _id_tag(child_id) != _id_tag(parent_id)


# -- timestamp ---------------------------------------------------------------------------------


def test_default_timestamp_is_now_in_aware_utc() -> None:
    before = datetime.now(UTC)
    stamp = AuditEntry(action="a").timestamp
    after = datetime.now(UTC)

    assert stamp.tzinfo is not None
    assert stamp.utcoffset() == timedelta(0)
    assert before <= stamp <= after


@pytest.mark.parametrize(
    "naive",
    [datetime(2024, 1, 1, 12, 0), "2024-01-01T12:00:00"],
    ids=["datetime", "iso-string"],
)
def test_naive_timestamp_is_rejected_naming_timestamp(naive: object) -> None:
    with pytest.raises(ValidationError) as exc:
        AuditEntry(action="a", timestamp=naive)

    error = _only_error(exc)
    assert error["loc"] == ("timestamp",)
    assert error["msg"] == (
        "Value error, timestamp must be timezone-aware (got a naive datetime); use UTC"
    )


class _UnknownOffset(tzinfo):
    """A tzinfo that does not know its offset: such a datetime is effectively naive."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None


def test_timestamp_whose_tzinfo_has_no_offset_is_rejected() -> None:
    with pytest.raises(ValidationError, match="timestamp must be timezone-aware"):
        AuditEntry(action="a", timestamp=datetime(2024, 1, 1, tzinfo=_UnknownOffset()))


@pytest.mark.parametrize(
    "aware",
    [
        datetime(2024, 1, 1, 18, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2024, 1, 1, 8, 0, tzinfo=timezone(timedelta(hours=-5))),
        "2024-01-01T14:00:00+01:00",
        "2024-01-01T13:00:00Z",
    ],
)
def test_aware_timestamp_is_converted_to_utc(aware: object) -> None:
    stamp = AuditEntry(action="a", timestamp=aware).timestamp

    assert stamp == datetime(2024, 1, 1, 13, 0, tzinfo=UTC)
    assert stamp.utcoffset() == timedelta(0)
    assert stamp.hour == 13  # the wall-clock value changed, not only the offset


# -- action and identifiers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ("", "String should have at least 1 character"),
        ("   ", "Value error, action must not be blank"),
        ("\t\n", "Value error, action must not be blank"),
        ("x" * 201, "String should have at most 200 characters"),
    ],
    ids=["empty", "spaces", "whitespace", "201-chars"],
)
def test_bad_action_is_rejected(action: str, message: str) -> None:
    with pytest.raises(ValidationError) as exc:
        AuditEntry(action=action)

    error = _only_error(exc)
    assert error["loc"] == ("action",)
    assert error["msg"] == message


def test_action_of_200_chars_is_accepted() -> None:
    assert AuditEntry(action="x" * 200).action == "x" * 200


def test_action_is_required() -> None:
    with pytest.raises(ValidationError) as exc:
        AuditEntry()  # type: ignore[call-arg]

    assert _only_error(exc)["loc"] == ("action",)


@pytest.mark.parametrize("field", IDENTIFIER_FIELDS)
def test_identifiers_longer_than_1024_chars_are_rejected(field: str) -> None:
    assert getattr(AuditEntry(action="a", **{field: "i" * 1024}), field) == "i" * 1024

    with pytest.raises(ValidationError) as exc:
        AuditEntry(action="a", **{field: "i" * 1025})

    assert _only_error(exc)["loc"] == (field,)


def test_empty_event_id_is_rejected() -> None:
    with pytest.raises(ValidationError) as exc:
        AuditEntry(action="a", event_id="")

    assert _only_error(exc)["loc"] == ("event_id",)


@pytest.mark.parametrize("field", ["action", *IDENTIFIER_FIELDS])
def test_lone_surrogate_is_rejected_naming_the_field(field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        AuditEntry(**{"action": "a", field: "bad \ud800 text"})

    error = _only_error(exc)
    assert error["loc"] == (field,)
    assert field in str(exc.value)


@pytest.mark.parametrize(
    ("details", "place"),
    [
        ({"note": "bad \udfff"}, "details.note"),
        ({"bad \ud800 key": 1}, "details"),
        ({"nested": [{"deep": "\ud83d"}]}, "details.nested[0].deep"),
    ],
    ids=["value", "key", "nested"],
)
def test_lone_surrogate_in_details_is_rejected(details: dict[str, Any], place: str) -> None:
    with pytest.raises(ValidationError) as exc:
        AuditEntry(action="a", details=details)

    assert _only_error(exc)["msg"] == (
        f"Value error, {place} contains characters that cannot be encoded as UTF-8"
    )


def test_non_ascii_text_is_accepted() -> None:
    entry = AuditEntry(action="dokument.öffnen", actor="zoë 🦊", details={"ключ": "値"})

    assert entry.actor == "zoë 🦊"
    assert entry.details == {"ключ": "値"}


# -- operation and outcome ---------------------------------------------------------------------


def test_operation_and_outcome_defaults() -> None:
    entry = AuditEntry(action="a")

    assert entry.operation is Operation.EXECUTE
    assert entry.outcome is Outcome.SUCCESS
    assert entry.critical is False
    assert entry.details == {}
    assert (entry.actor, entry.resource_type, entry.resource_id, entry.correlation_id) == (
        None,
        None,
        None,
        None,
    )


def test_enum_values() -> None:
    assert [op.value for op in Operation] == ["create", "read", "update", "delete", "execute"]
    assert [o.value for o in Outcome] == ["success", "failure"]


@pytest.mark.parametrize("operation", list(Operation))
def test_operation_accepts_enum_and_string(operation: Operation) -> None:
    assert AuditEntry(action="a", operation=operation).operation is operation
    assert AuditEntry(action="a", operation=operation.value).operation is operation


@pytest.mark.parametrize("outcome", list(Outcome))
def test_outcome_accepts_enum_and_string(outcome: Outcome) -> None:
    assert AuditEntry(action="a", outcome=outcome.value).outcome is outcome


@pytest.mark.parametrize(("field", "value"), [("operation", "destroy"), ("outcome", "maybe")])
def test_unknown_enum_value_is_rejected(field: str, value: str) -> None:
    with pytest.raises(ValidationError) as exc:
        AuditEntry(action="a", **{field: value})

    error = _only_error(exc)
    assert error["loc"] == (field,)
    assert error["type"] == "enum"


# -- details -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("details", "message"),
    [
        ({"ratio": math.nan}, "details.ratio is nan"),
        ({"ratio": math.inf}, "details.ratio is inf"),
        ({"nested": {"values": [1.0, -math.inf]}}, "details.nested.values[1] is -inf"),
    ],
    ids=["nan", "inf", "nested-minus-inf"],
)
def test_details_with_nan_or_infinity_is_rejected(details: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as exc:
        AuditEntry(action="a", details=details)

    assert _only_error(exc)["msg"] == f"Value error, {message}, which JSON cannot hold"


ACCEPTED = (
    "JSON values, datetime/date/time, Decimal, UUID, Enum, Path, tuple, set, frozenset, "
    "dataclasses and pydantic models"
)


@pytest.mark.parametrize(
    ("details", "message"),
    [
        ({1: "one"}, "details has a key that is not a string: 1"),
        ({"k": {(1, 2): "pair"}}, "details.k has a key that is not a string: (1, 2)"),
        ({"thing": object()}, "details.thing has type object"),
        ({"raw": b"\x00"}, "details.raw has type bytes"),
        ({"z": [1, {"c": 1j}]}, "details.z[1].c has type complex"),
        ({"odd key": {1j}}, "details['odd key'][] has type complex"),
    ],
    ids=["int-key", "tuple-key", "object", "bytes", "nested-complex", "in-a-set"],
)
def test_details_that_cannot_be_converted_are_rejected_naming_the_place(
    details: dict[Any, Any], message: str
) -> None:
    with pytest.raises(ValidationError) as exc:
        AuditEntry(action="a", details=details)

    error = _only_error(exc)
    if "not a string" in message:
        assert error["msg"] == f"Value error, {message}"
    else:
        assert error["msg"] == (
            f"Value error, {message}, which details cannot hold (they take {ACCEPTED})"
        )


@pytest.mark.parametrize("details", [["not", "a", "dict"], "text", 3, None])
def test_details_must_be_a_dict(details: object) -> None:
    with pytest.raises(ValidationError) as exc:
        AuditEntry(action="a", details=details)

    assert _only_error(exc)["msg"] == (
        f"Value error, details must be a JSON object (a dict or a mapping), "
        f"got {type(details).__name__}"
    )


def test_details_json_is_compact_and_key_sorted_at_every_depth() -> None:
    entry = AuditEntry(
        action="a",
        details={"b": 1, "a": {"z": [1, 2.5, None, True], "c": "é"}, "A": "upper"},
    )

    assert entry.details_json == '{"A":"upper","a":{"c":"é","z":[1,2.5,null,true]},"b":1}'
    assert entry.details_size() == len(entry.details_json.encode("utf-8"))
    assert entry.details_size() == len(entry.details_json) + 1  # "é" is two bytes in UTF-8


def test_empty_details_serialise_to_an_empty_object() -> None:
    entry = AuditEntry(action="a")

    assert entry.details_json == "{}"
    assert entry.details_size() == 2


def _details_of_size(size: int) -> dict[str, str]:
    details = {"k": "x" * (size - len('{"k":""}'))}
    assert len(models.dump_details(details).encode()) == size
    return details


def test_details_at_the_default_limit_is_accepted_and_one_byte_more_is_not() -> None:
    limit = models.DEFAULT_MAX_DETAILS_BYTES
    assert limit == 65536

    assert AuditEntry(action="a", details=_details_of_size(limit)).details_size() == limit
    with pytest.raises(ValidationError) as exc:
        AuditEntry(action="a", details=_details_of_size(limit + 1))

    assert _only_error(exc)["msg"] == (
        "Value error, details is 65537 bytes serialised, more than max_details_bytes=65536"
    )


@pytest.mark.parametrize(("size", "accepted"), [(99, True), (100, True), (101, False)])
def test_details_limit_comes_from_the_validation_context(size: int, accepted: bool) -> None:
    data = {"action": "a", "details": _details_of_size(size)}
    context = {"max_details_bytes": 100}

    if accepted:
        assert AuditEntry.model_validate(data, context=context).details_size() == size
    else:
        with pytest.raises(ValidationError) as exc:
            AuditEntry.model_validate(data, context=context)
        assert _only_error(exc)["msg"] == (
            f"Value error, details is {size} bytes serialised, more than max_details_bytes=100"
        )


def test_context_can_raise_the_limit_above_the_default() -> None:
    data = {"action": "a", "details": _details_of_size(70_000)}

    entry = AuditEntry.model_validate(data, context={"max_details_bytes": 100_000})

    assert entry.details_size() == 70_000


def test_details_limit_counts_utf8_bytes_not_characters() -> None:
    details = {"k": "é" * 50}  # 50 characters, 100 bytes, 108 bytes serialised

    with pytest.raises(ValidationError, match="details is 108 bytes serialised"):
        AuditEntry.model_validate(
            {"action": "a", "details": details}, context={"max_details_bytes": 107}
        )


def test_details_json_follows_details_on_model_copy() -> None:
    entry = AuditEntry(action="a", details={"old": 1})

    copy = entry.model_copy(update={"details": {"new": 2}})

    assert copy.details_json == '{"new":2}'


# -- values details accept, converted to JSON (item 17) -----------------------------------------


class Colour(Enum):
    RED = "red"
    PAIR = (1, 2)


class Level(IntEnum):
    HIGH = 3


class Kind(StrEnum):
    NOTE = "note"


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    at: date


class Invoice(BaseModel):
    total: Decimal
    issued: datetime


WHEN = datetime(2026, 12, 1, 11, 0, 5, 120, tzinfo=timezone(timedelta(hours=1)))


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        (WHEN, '"2026-12-01T11:00:05.000120+01:00"'),
        (datetime(2026, 12, 1, 11, 0, tzinfo=UTC), '"2026-12-01T11:00:00+00:00"'),
        (datetime(2026, 12, 1, 11, 0), '"2026-12-01T11:00:00"'),
        (date(2026, 12, 1), '"2026-12-01"'),
        (time(9, 30, 1), '"09:30:01"'),
        (Decimal("1.10"), '"1.10"'),
        (Decimal("1E+3"), '"1E+3"'),
        (uuid.UUID(int=42), '"00000000-0000-0000-0000-00000000002a"'),
        (Colour.RED, '"red"'),
        (Colour.PAIR, "[1,2]"),
        (Level.HIGH, "3"),
        (Kind.NOTE, '"note"'),
        (PurePosixPath("/srv/notes/7.md"), '"/srv/notes/7.md"'),
        ((1, "a"), '[1,"a"]'),
        ({"b", "a", "c"}, '["a","b","c"]'),
        (frozenset({10, 9, "9"}), '["9",10,9]'),  # by JSON text: '"9"' < '10' < '9'
        ({(2, 1), (1, 2)}, "[[1,2],[2,1]]"),
        (Point(1, date(2026, 1, 2)), '{"at":"2026-01-02","x":1}'),
        (
            Invoice(total=Decimal("9.90"), issued=datetime(2026, 1, 1, tzinfo=UTC)),
            '{"issued":"2026-01-01T00:00:00Z","total":"9.90"}',  # pydantic's JSON form
        ),
        (OrderedDict([("b", 1), ("a", 2)]), '{"a":2,"b":1}'),
        (MappingProxyType({"k": (1,)}), '{"k":[1]}'),
        ([{"s": {3, 1}}], '[{"s":[1,3]}]'),
    ],
    ids=lambda v: type(v).__name__,
)
def test_details_values_an_app_has_at_hand_are_stored_as_json(value: object, stored: str) -> None:
    entry = AuditEntry(action="a", details={"v": value})

    assert entry.details_json == f'{{"v":{stored}}}'
    assert entry.details == {"v": json.loads(stored)}  # what is redacted and read back


def test_converted_details_keep_their_keys_and_enum_keys_become_text() -> None:
    entry = AuditEntry(action="a", details={Kind.NOTE: 1, "plain": {Kind.NOTE: 2}})

    assert entry.details_json == '{"note":1,"plain":{"note":2}}'
    assert [type(k) for k in entry.details] == [str, str]


def test_a_set_is_stored_in_the_same_order_whatever_its_iteration_order() -> None:
    # Different insertion orders give different iteration orders for colliding hashes.
    words = [f"w{i}" for i in range(50)]
    texts = {
        AuditEntry(action="a", details={"s": set(order)}).details_json
        for order in (words, words[::-1], sorted(words, key=hash))
    }

    assert len(texts) == 1


def test_subclasses_of_json_types_are_stored_as_their_plain_value() -> None:
    class Loud(str):
        def __str__(self) -> str:
            return "LOUD"

    class Count(int):
        def __repr__(self) -> str:
            return "many"

    class Ratio(float):
        pass

    entry = AuditEntry(action="a", details={"s": Loud("quiet"), "n": Count(3), "r": Ratio(0.5)})

    assert entry.details_json == '{"n":3,"r":0.5,"s":"quiet"}'


def test_a_dataclass_class_itself_is_not_a_value() -> None:
    with pytest.raises(ValidationError, match=r"details\.cls has type type"):
        AuditEntry(action="a", details={"cls": Point})


def test_a_pydantic_model_that_cannot_be_serialised_is_rejected_naming_the_place() -> None:
    class Holder(BaseModel):
        model_config = {"arbitrary_types_allowed": True}
        thing: object

    with pytest.raises(ValidationError) as exc:
        AuditEntry(action="a", details={"h": Holder(thing=object())})

    assert _only_error(exc)["msg"].startswith("Value error, details.h has no JSON form: ")


# -- how deep details may nest (item 11) --------------------------------------------------------


def _nested(levels: int, as_dict: bool) -> dict[str, Any]:
    """``details`` with ``levels`` containers on the deepest path (the details object included)."""
    value: Any = "bottom"
    for _ in range(levels - 1):
        value = {"k": value} if as_dict else [value]
    return {"k": value}


@pytest.mark.parametrize("as_dict", [True, False], ids=["dicts", "lists"])
def test_details_nested_64_levels_are_accepted_and_65_are_not(as_dict: bool) -> None:
    assert models.MAX_DETAILS_DEPTH == 64

    entry = AuditEntry(action="a", details=_nested(64, as_dict))
    assert entry.details == _nested(64, as_dict)

    with pytest.raises(ValidationError) as exc:
        AuditEntry(action="a", details=_nested(65, as_dict))
    assert _only_error(exc)["msg"] == (
        "Value error, details is nested more than 64 levels deep (MAX_DETAILS_DEPTH=64)"
    )


@pytest.mark.parametrize("as_dict", [True, False], ids=["dicts", "lists"])
def test_details_nested_5000_deep_are_a_clean_value_error(as_dict: bool) -> None:
    # Was a RecursionError (pydantic's own, or json.dumps's) instead of an error naming details.
    with pytest.raises(ValidationError, match="details is nested more than 64 levels deep"):
        AuditEntry(action="a", details=_nested(5000, as_dict))


def test_a_set_at_level_65_is_too_deep() -> None:
    details = _nested(64, as_dict=False)
    inner = details["k"]
    while isinstance(inner[0], list):
        inner = inner[0]
    inner[0] = frozenset({1})

    with pytest.raises(ValidationError, match="details is nested more than 64 levels deep"):
        AuditEntry(action="a", details=details)


def test_validating_something_that_is_not_a_mapping_is_pydantics_error() -> None:
    with pytest.raises(ValidationError) as exc:
        AuditEntry.model_validate(["action", "a"])

    assert _only_error(exc)["type"] == "model_type"


def test_details_that_contain_themselves_are_a_clean_value_error() -> None:
    details: dict[str, Any] = {"a": 1}
    details["self"] = details

    with pytest.raises(ValidationError, match="details is nested more than 64 levels deep"):
        AuditEntry(action="a", details=details)


# -- integers too long for text (item 15) -------------------------------------------------------


def test_an_int_with_more_digits_than_python_converts_is_rejected_naming_the_key() -> None:
    with pytest.raises(ValidationError) as exc:
        AuditEntry(action="a", details={"n": [10**5000]})

    assert _only_error(exc)["msg"] == (
        "Value error, details.n[0] is an integer with more than 4300 digits, which Python does "
        "not convert to text (sys.set_int_max_str_digits)"
    )


def test_an_int_of_4300_digits_is_stored_exactly() -> None:
    big = 10**4299 + 7

    entry = AuditEntry(action="a", details={"n": big})

    assert entry.details_json == f'{{"n":{big}}}'


# -- identifiers given as numbers, and the characters identifiers refuse (items 10, 17) --------


@pytest.mark.parametrize("field", ["actor", "resource_id", "correlation_id"])
@pytest.mark.parametrize(
    ("value", "stored"),
    [(42, "42"), (-7, "-7"), (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001")],
    ids=["int", "negative", "uuid"],
)
def test_ids_given_as_an_int_or_uuid_are_stored_as_text(
    field: str, value: object, stored: str
) -> None:
    assert getattr(AuditEntry(action="a", **{field: value}), field) == stored


@pytest.mark.parametrize("field", ["actor", "resource_id", "correlation_id"])
def test_a_bool_is_not_an_id(field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        AuditEntry(action="a", **{field: True})

    assert _only_error(exc)["loc"] == (field,)


REFUSED_IN_IDENTIFIERS = [
    "\x00",
    "\x1b",
    "\x7f",
    "\x80",
    "\x85",
    "\x9b",
    "\x9f",
    "\u2028",
    "\u2029",
    "\u202a",
    "\u202b",
    "\u202c",
    "\u202d",
    "\u202e",
    "\u2066",
    "\u2067",
    "\u2068",
    "\u2069",
]


@pytest.mark.parametrize("field", ["action", *IDENTIFIER_FIELDS])
@pytest.mark.parametrize("char", REFUSED_IN_IDENTIFIERS, ids=lambda c: f"U+{ord(c):04X}")
def test_identifiers_refuse_controls_line_separators_and_bidi_overrides(
    field: str, char: str
) -> None:
    with pytest.raises(ValidationError) as exc:
        AuditEntry(**{"action": "a", field: f"ok{char}ok"})

    assert _only_error(exc)["msg"] == f"Value error, {field} must not contain control characters"


@pytest.mark.parametrize("char", ["\xa0", "\u200b", "\u200e", "\u2027", "\u202f", "\u2065"])
def test_neighbouring_characters_are_still_accepted_in_identifiers(char: str) -> None:
    assert AuditEntry(action="a", actor=f"ok{char}ok").actor == f"ok{char}ok"


# -- entries made without validation (item 6) ---------------------------------------------------


def test_a_validated_entry_is_intact_and_so_is_a_plain_copy() -> None:
    entry = AuditEntry(action="a", actor="alice", details={"k": [1]})

    assert entry.is_intact()
    assert entry.model_copy().is_intact()
    assert entry.model_copy(deep=True).is_intact()


def test_entries_made_without_validation_are_not_intact() -> None:
    entry = AuditEntry(action="a")
    changed = AuditEntry(action="a")
    object.__setattr__(changed, "actor", "\x00")

    assert not entry.model_copy(update={"actor": "\ud800"}).is_intact()
    assert not AuditEntry.model_construct(action="a").is_intact()
    assert not changed.is_intact()


def test_intactness_is_not_part_of_an_entrys_value() -> None:
    entry = AuditEntry(action="a", actor="alice", event_id="e-1", timestamp=WHEN)

    copy = entry.model_copy(update={"actor": "alice"})

    assert copy == entry


def test_a_model_copy_with_details_that_are_not_json_yet_serialises_them_on_demand() -> None:
    entry = AuditEntry(action="a")

    copy = entry.model_copy(update={"details": {"when": date(2026, 1, 1)}})

    with pytest.raises(TypeError):
        _ = copy.details_json  # record() validates such a copy again, converting the date


def test_a_pickled_entry_comes_back_equal_and_intact() -> None:
    entry = AuditEntry(action="a", details={"k": [1, {"s": "x"}]})

    again = pickle.loads(pickle.dumps(entry))

    assert again == entry
    assert again.is_intact()
    assert again.details_json == entry.details_json


def test_model_construct_details_json_is_made_from_its_details() -> None:
    assert AuditEntry.model_construct(action="a", details={"b": 1}).details_json == '{"b":1}'
    assert AuditEntry.model_construct(action="a").details_json == "{}"


def test_with_details_checks_and_converts_the_new_details() -> None:
    entry = AuditEntry(action="a", details={"k": 1})

    copy = entry.with_details({"when": date(2026, 1, 1), "s": {2, 1}})

    assert copy.details == {"when": "2026-01-01", "s": [1, 2]}
    assert copy.details_json == '{"s":[1,2],"when":"2026-01-01"}'
    assert copy.is_intact()
    with pytest.raises(ValueError, match=r"details\.bad has type complex"):
        entry.with_details({"bad": 1j})


def test_with_details_of_an_entry_made_without_validation_stays_unchecked() -> None:
    loose = AuditEntry.model_construct(action="a", actor="\x00")

    assert not loose.with_details({"k": 1}).is_intact()


# -- model config ------------------------------------------------------------------------------


def test_extra_fields_are_forbidden() -> None:
    with pytest.raises(ValidationError) as exc:
        AuditEntry(action="a", user="alice")

    error = _only_error(exc)
    assert error["loc"] == ("user",)
    assert error["type"] == "extra_forbidden"


@pytest.mark.parametrize(("field", "value"), [("action", "b"), ("details", {}), ("critical", True)])
def test_entry_is_frozen(field: str, value: object) -> None:
    entry = AuditEntry(action="a", details={"k": 1})

    with pytest.raises(ValidationError) as exc:
        setattr(entry, field, value)

    assert _only_error(exc)["type"] == "frozen_instance"
    assert entry.action == "a"
    assert entry.details == {"k": 1}


def test_entries_with_the_same_fields_are_equal() -> None:
    fields: dict[str, Any] = {
        "event_id": "e-1",
        "timestamp": datetime(2024, 1, 1, tzinfo=UTC),
        "action": "a",
        "details": {"k": [1, 2]},
    }

    assert AuditEntry(**fields) == AuditEntry(**fields)
    assert AuditEntry(**fields) != AuditEntry(**{**fields, "details": {"k": [2, 1]}})


# -- AuditStats --------------------------------------------------------------------------------

STATS_FIELDS = {
    "accepted": 5,
    "written": 4,
    "dropped": 1,
    "batches": 2,
    "queue_depth": 0,
    "max_queue_depth": 3,
    "retries": 0,
    "dead_lettered": 0,
    "writer_alive": True,
    "last_error": None,
    "filtered_by_level": 6,
    "excluded": 1,
    "sampled_out": 2,
    "deduplicated": 3,
    "longest_batch_s": 0.25,
    "cleanup_runs": 2,
    "rows_purged": 40,
    "logged_only": 0,
    "warnings": [],
}


# The checkpoint counters: 0 for a service that signs no checkpoints.
# Counters added after the first release: they default to 0, so older code building AuditStats
# keeps working.
CHECKPOINT_STATS = {
    "checkpoints": 3,
    "checkpoint_failures": 1,
    "checkpoint_callback_failures": 2,
    "skipped_disabled": 5,
}


def test_audit_stats_fields() -> None:
    stats = AuditStats(**STATS_FIELDS, **CHECKPOINT_STATS)

    assert list(AuditStats.model_fields) == [*STATS_FIELDS, *CHECKPOINT_STATS]
    assert stats.model_dump() == {**STATS_FIELDS, **CHECKPOINT_STATS}
    assert all(field.description for field in AuditStats.model_fields.values())
    assert AuditStats(**STATS_FIELDS).model_dump() == {
        **STATS_FIELDS,
        **dict.fromkeys(CHECKPOINT_STATS, 0),
    }


@pytest.mark.parametrize("missing", list(STATS_FIELDS))
def test_audit_stats_fields_are_required(missing: str) -> None:
    values = {k: v for k, v in STATS_FIELDS.items() if k != missing}

    with pytest.raises(ValidationError) as exc:
        AuditStats(**values)

    assert _only_error(exc)["loc"] == (missing,)


def test_audit_stats_is_frozen() -> None:
    stats = AuditStats(**STATS_FIELDS)

    with pytest.raises(ValidationError):
        stats.written = 99  # type: ignore[misc]
    assert stats.written == 4


def test_an_invalid_entry_error_never_shows_the_values_given() -> None:
    # Apps log these errors; a value may be a secret the policy would have redacted.
    with pytest.raises(ValidationError) as too_big:
        AuditEntry(action="a", details={"x": "y" * 70_000, "password": "hunter2-plain"})
    with pytest.raises(ValidationError) as too_long:
        AuditEntry(action="a", actor="token-" + "s" * 10_000)
    for raised in (too_big, too_long):
        assert "hunter2" not in str(raised.value)
        assert "token-" not in str(raised.value)
        assert "input_value" not in str(raised.value)
    assert "max_details_bytes" in str(too_big.value)
    assert "actor" in str(too_long.value)
