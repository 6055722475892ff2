"""Fuzzing record() with bad input in every AuditEntry field.

Each input is either rejected in the caller with a ``ValueError`` (pydantic's ``ValidationError``
or the engine's ``InvalidEntryError``), or accepted and read back by ``AuditStore`` exactly as it
was accepted (after redaction). Never does an accepted entry fail in the writer thread: after each
flush, nothing is dead-lettered and ``last_error`` is None. Inputs go in as keywords, as a
validated ``AuditEntry``, or smuggled into one by ``model_copy(update=...)`` (no validation).

One service and one database per test function; each example flushes and reads back its entry.
"""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit_engine import AuditEntry, AuditService, AuditSettings, AuditStore
from audit_engine.models import MAX_ACTION_LENGTH, MAX_IDENTIFIER_LENGTH, Operation, Outcome
from audit_engine.pipeline.policy import DEFAULT_REDACT_FIELDS

MAX_DETAILS_BYTES = 65536
FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- strategies ------------------------------------------------------------------------------------

SPECIAL_TEXT = [
    "",
    " ",
    "\t",
    "\u3000",
    "\x00",
    "a\x00b",
    "\x1f",
    "\x7f",
    "line\nbreak",
    "\r",
    "\x1b[31mred",
    "\x85",
    "\u2028",
    "\u2029",
    "\x9b",
    "\u202e",
    "\u2066",
    "a\u2069b",
    "\u200b",
    "\ufeff",
    "\ud800",
    "a\udfffb",
    "\U0001f600",
    "é",
    "e\u0301",
    "[REDACTED]",
    "' OR 1=1 --",
]

any_char_text = st.text(st.characters(exclude_categories=()), max_size=40)
# Printable ASCII: what record()'s fast path takes without building the model.
ascii_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)
text = st.one_of(
    any_char_text,
    st.text(max_size=40),
    ascii_text,
    ascii_text.map(lambda t: f" {t} "),
    st.sampled_from([" x", "x ", "  ", "a  b", "0", "null", "None", "true", "{}", "[]"]),
    st.sampled_from(SPECIAL_TEXT),
    st.integers(MAX_ACTION_LENGTH - 2, MAX_ACTION_LENGTH + 2).map(lambda n: "a" * n),
    st.integers(MAX_IDENTIFIER_LENGTH - 2, MAX_IDENTIFIER_LENGTH + 2).map(lambda n: "i" * n),
    st.integers(MAX_IDENTIFIER_LENGTH - 2, MAX_IDENTIFIER_LENGTH + 2).map(lambda n: "é" * n),
    st.just(200_000).map(lambda n: "z" * n),
)
wrong_type = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from([Decimal("1.5"), object(), Operation.READ, date(2024, 1, 1)]),
    st.uuids(),
)
field_value = st.one_of(text, wrong_type)

offsets = st.builds(
    timezone,
    st.timedeltas(
        min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)
    ),
)
# The whole range: an offset can push year 1 or 9999 out of it (see the last test).
datetimes = st.one_of(
    st.datetimes(timezones=st.one_of(st.none(), st.just(UTC), offsets, st.timezones())),
    st.sampled_from([datetime.min, datetime.max]).flatmap(
        lambda d: st.builds(d.replace, tzinfo=offsets)
    ),
)
timestamps = st.one_of(
    datetimes,
    datetimes.map(lambda d: d.isoformat()),
    st.integers(min_value=-(10**11), max_value=10**13),
    st.floats(),
    st.dates(),
    st.sampled_from(["now", "2024-13-01T00:00:00Z", "2024-01-01", "2024-01-01T00:00:00", ""]),
    field_value,
)


def _mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any], bad_in: int) -> Any:
    """``bad`` once in ``bad_in`` draws, else ``good`` (``one_of`` would weigh every branch of a
    nested ``one_of`` alike, and the few good values would hardly ever be drawn)."""
    return st.integers(1, bad_in).flatmap(lambda k: bad if k == 1 else good)


enum_like = _mostly(
    st.sampled_from([*Operation, *Outcome, *(o.value for o in (*Operation, *Outcome))]),
    st.one_of(
        st.sampled_from(["CREATE", " read", "delete\x00", "Success", "failure ", "0", ""]),
        field_value,
    ),
    bad_in=2,
)
booleans_ish = st.one_of(
    st.booleans(),
    st.sampled_from([0, 1, 2, -1, "yes", "no", "true", "False", "off", "on", "", "1", 1.0, 0.5]),
    field_value,
)


@dataclasses.dataclass(frozen=True)
class _Pair:
    n: int
    text: str


# Built by map(): a literal 4300-digit int would break the strategies' repr().
big_ints = st.sampled_from([(2, 63), (-2, 63), (2, 64), (10, 100), (10, 4299), (-10, 4300)]).map(
    lambda t: t[0] ** t[1] + (-1 if t[0] < 0 else 1)
)
json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    big_ints,
    st.floats(),  # NaN, infinities, -0.0, subnormals
    any_char_text,
    st.sampled_from(SPECIAL_TEXT),
    st.binary(max_size=6),
    st.sampled_from([Decimal("1.1"), (), frozenset(), datetime(2024, 1, 1, tzinfo=UTC), 1j]),
    st.sampled_from([Operation.READ, Path("/tmp/x"), uuid.UUID(int=3), _Pair(1, "b")]),
    st.builds(_Pair, st.integers(), any_char_text),
)
redact_keys = st.sampled_from(
    [*DEFAULT_REDACT_FIELDS, "Password", "API-KEY", "Set-Cookie", "passWORD", "x-token"]
)
keys = st.one_of(
    any_char_text,
    redact_keys,
    st.sampled_from(SPECIAL_TEXT),
    st.integers(),
    st.none(),
    st.booleans(),
    st.tuples(st.integers()),
    st.floats(),
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.sets(st.integers() | st.text(max_size=3), max_size=3),
        st.dictionaries(keys, children, max_size=4),
        st.dictionaries(st.text(max_size=5), children, max_size=4),
    )


def _nested(depth: int, as_dict: bool) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"k": value} if as_dict else [value]
    return value


json_values = st.recursive(json_leaf, _containers, max_leaves=25)
details = st.one_of(
    st.dictionaries(st.one_of(redact_keys, st.text(max_size=8), keys), json_values, max_size=6),
    st.dictionaries(st.text(max_size=8), json_values, max_size=6),
    st.tuples(st.integers(0, 400), st.booleans()).map(lambda t: {"deep": _nested(*t)}),
    st.integers(MAX_DETAILS_BYTES - 12, MAX_DETAILS_BYTES - 6).map(lambda n: {"b": "x" * n}),
    st.integers(MAX_DETAILS_BYTES - 12, MAX_DETAILS_BYTES - 6).map(lambda n: {"b": "é" * (n // 2)}),
    json_values,  # not even a mapping
)

FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "event_id": field_value,
    "timestamp": timestamps,
    "actor": field_value,
    "action": field_value,
    "operation": enum_like,
    "outcome": enum_like,
    "resource_type": field_value,
    "resource_id": field_value,
    "correlation_id": field_value,
    "details": details,
    "critical": booleans_ish,
}
VALID = {
    "action": st.sampled_from(["doc.save", "user.login", "x"]),
    "operation": st.sampled_from(list(Operation)),
    "outcome": st.sampled_from(list(Outcome)),
}


# -- the harness -----------------------------------------------------------------------------------


class _Recorder:
    """One service on one database; ``check(fields)`` records them and checks the outcome."""

    def __init__(self, service: AuditService, db_path: Path) -> None:
        self.service = service
        self.store = AuditStore(db_path, create=True)
        self.last_id = 0
        self.seen_ids: set[str] = set()
        self.unique = itertools.count()
        self.accepted = 0
        self.rejected = 0

    def _unique_event_id(self, fields: dict[str, Any]) -> None:
        # A repeated event_id is a legitimate write failure (UNIQUE), not what is fuzzed here.
        value = fields.get("event_id")
        if isinstance(value, bytes):  # pydantic may take bytes as text
            value = value.decode("utf-8", errors="replace")
            if value not in self.seen_ids:
                return
        if not isinstance(value, str):
            return
        original = value
        while value in self.seen_ids:
            value = f"{next(self.unique)}:{original}"
        fields["event_id"] = value

    def check(self, fields: dict[str, Any], how: str) -> None:
        self._unique_event_id(fields)
        service = self.service
        as_model = how != "keywords"
        if how == "copy":
            # A validated entry with the fields put in by model_copy(), which does not validate:
            # record() must judge them as if they had been given to the model.
            base = AuditEntry(action="fuzz.copy")
            fields = {
                **base.__dict__,
                **{k: v for k, v in fields.items() if k in AuditEntry.model_fields},
            }
        before = datetime.now(UTC)
        try:
            if how == "model":
                passed = AuditEntry(**fields)
                event_id = service.record(passed)
            elif how == "copy":
                event_id = service.record(base.model_copy(update=fields))
            else:
                event_id = service.record(**fields)
        except ValueError:
            self.rejected += 1
            assert service.stats().accepted == self.accepted  # nothing reached the writer
            return
        after = datetime.now(UTC)
        assert event_id is not None  # level "all", no sampling, no scope: accepted or raised
        self.accepted += 1
        self.seen_ids.add(event_id)
        assert service.flush(10) is True
        stats = service.stats()
        assert (stats.dead_lettered, stats.last_error) == (0, None), stats
        assert stats.written == stats.accepted == self.accepted
        rows = self.store.entries_after(self.last_id, limit=5)
        assert len(rows) == 1
        self.last_id, stored = rows[0]
        assert stored.event_id == event_id

        # What record() accepted: the validated entry, redacted.
        if how == "model":
            accepted = passed
        else:
            context = {"max_details_bytes": service.settings.max_details_bytes}
            accepted = AuditEntry.model_validate(fields, context=context)
        expected = service.policy.redact(accepted).model_dump()
        got = stored.model_dump()
        if "event_id" not in fields and not as_model:
            expected["event_id"] = event_id  # generated inside record()
        if "timestamp" not in fields and not as_model:
            slack = timedelta(milliseconds=1)  # clock rounding only
            assert before - slack <= got["timestamp"] <= after + slack
            expected["timestamp"] = got["timestamp"]
        assert got == expected
        assert stored.details_json == service.policy.redact(accepted).details_json

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[_Recorder]:
    db_path = tmp_path / "fuzz.db"
    service = AuditService(
        AuditSettings(
            database=db_path,
            level="all",
            cleanup_enabled=False,
            buffer_flush_interval=3600,  # each example's flush() commits its entry
            max_details_bytes=MAX_DETAILS_BYTES,
        )
    )
    rec = _Recorder(service, db_path)
    try:
        yield rec
        assert service.close(10) is True
        stats = service.stats()
        assert (stats.dead_lettered, stats.last_error) == (0, None)
        with AuditStore(db_path) as audit_store:
            report = audit_store.verify()
        assert report.ok, report
        assert report.rows_checked == rec.accepted
    finally:
        rec.close()
        service.close(10)


def _entry_dicts(fuzzed: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    """Entries with the ``fuzzed`` fields drawn from bad input, the others valid (or absent)."""
    required = {name: FIELDS[name] for name in fuzzed}
    optional: dict[str, st.SearchStrategy[Any]] = {
        name: strategy for name, strategy in VALID.items() if name not in fuzzed
    }
    if "action" not in fuzzed:
        required.setdefault("action", VALID["action"])
        optional.pop("action", None)
    return st.fixed_dictionaries(required, optional=optional)


def _run(recorder: _Recorder, strategy: st.SearchStrategy[dict[str, Any]]) -> None:
    @FUZZ
    @given(fields=strategy, how=st.sampled_from(["keywords", "model", "copy"]))
    def fuzz(fields: dict[str, Any], how: str) -> None:
        recorder.check(dict(fields), how)

    fuzz()
    # Both outcomes must have happened, or the strategies test nothing.
    assert recorder.accepted > 0
    assert recorder.rejected > 0


# -- tests -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field", ["event_id", "actor", "action", "resource_type", "resource_id", "correlation_id"]
)
def test_text_fields_are_rejected_in_the_caller_or_stored_as_given(
    recorder: _Recorder, field: str
) -> None:
    _run(recorder, _entry_dicts((field,)))


def test_timestamps_are_rejected_in_the_caller_or_stored_as_utc(recorder: _Recorder) -> None:
    _run(recorder, _entry_dicts(("timestamp",)))


@pytest.mark.parametrize("field", ["operation", "outcome", "critical"])
def test_operation_outcome_and_critical_take_only_their_values(
    recorder: _Recorder, field: str
) -> None:
    _run(recorder, _entry_dicts((field,)))


def test_odd_details_are_rejected_in_the_caller_or_stored_as_json(recorder: _Recorder) -> None:
    _run(recorder, _entry_dicts(("details",)))


def test_every_field_at_once(recorder: _Recorder) -> None:
    plain = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=12)
    good: dict[str, st.SearchStrategy[Any]] = {
        "event_id": st.uuids().map(str),
        "timestamp": st.datetimes(timezones=st.just(UTC), min_value=datetime(2000, 1, 1)),
        "actor": plain,
        "action": plain.filter(str.strip),
        "resource_type": plain,
        "resource_id": plain,
        "correlation_id": plain,
        "details": st.dictionaries(plain, st.integers() | plain, max_size=3),
        "critical": st.booleans(),
        **VALID,
    }
    # Each field mostly valid, so that some entries pass and others fail for one or more reasons.
    either = {name: _mostly(good[name], bad, bad_in=12) for name, bad in FIELDS.items()}
    everything = st.fixed_dictionaries({}, optional=either)
    names = st.sampled_from(["entry", "bogus", "id", "hash"])
    extra = st.dictionaries(names, json_leaf, max_size=1)
    _run(recorder, st.builds(lambda a, b: {**a, **b}, everything, extra))


# -- the edges of the datetime range ---------------------------------------------------------------

_EDGE_TIMESTAMPS: list[Callable[[], Any]] = [
    lambda: datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))),
    lambda: datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-5))),
    lambda: "0001-01-01T00:00:00+05:00",
]


@pytest.mark.parametrize("make", _EDGE_TIMESTAMPS, ids=["year1+05", "year9999-05", "iso-text"])
@pytest.mark.parametrize("as_model", [False, True], ids=["fields", "model"])
def test_a_timestamp_out_of_range_in_utc_is_rejected_as_invalid(
    recorder: _Recorder, make: Callable[[], Any], as_model: bool
) -> None:
    # Found by this fuzzing: astimezone(UTC) raised OverflowError (not a ValueError), which
    # also escaped `audit-engine record --stdin` as a traceback.
    if as_model:
        with pytest.raises(ValueError, match="timestamp"):
            AuditEntry(action="edge", timestamp=make())
    else:
        with pytest.raises(ValueError, match="timestamp"):
            recorder.service.record(action="edge", timestamp=make())
    assert recorder.service.stats().accepted == 0
