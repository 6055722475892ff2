"""From ``record()``'s arguments to the row that is queued and stored, in the caller's thread.

:class:`~audit_engine.models.AuditEntry` is the single source of truth for what is valid. Building
a pydantic model costs ~15 µs, though, most of the caller's cost, so keyword input that is plainly
valid — exact types, ASCII text, plain JSON details — takes a hand-written fast path that yields
the same row the model would. Anything else (coercions, non-ASCII text, details to convert such as
dates or sets, every error) goes through the model itself, so errors and edge cases are the
model's. A property test proves the two paths agree (tests/property/test_intake_equivalence.py).
An :class:`AuditEntry` passed in is used as it is only if validation made it and nothing changed
it since (:func:`storable_entry`); otherwise it is validated again.

Rows are :class:`Row` tuples in the insert's column order; the queue holds them, not models, which
also keeps 10 000 queued entries small.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

from audit_engine.details import plain_json, to_json_details
from audit_engine.errors import InvalidEntryError
from audit_engine.models import (
    MAX_ACTION_LENGTH,
    MAX_IDENTIFIER_LENGTH,
    AuditEntry,
    Operation,
    Outcome,
    format_timestamp,
    new_event_id,
)
from audit_engine.rows import Row, entry_row, storable_entry

_new_row = tuple.__new__
_stamp = new_event_id.stamp

_FIELDS = frozenset(AuditEntry.model_fields)
_OPERATIONS = {op.value: op.value for op in Operation} | {op: op.value for op in Operation}
_OUTCOMES = {o.value: o.value for o in Outcome} | {o: o.value for o in Outcome}
_encode_details = json.JSONEncoder(
    separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False
).encode


def _fast_encoder() -> Callable[[dict[str, Any]], str]:
    # JSONEncoder.encode builds a new C encoder on every call (~0.9 µs of the ~1.6): build it
    # once. Without the cycle check (markers=None), so only for details plain_json accepted,
    # which are acyclic (its depth limit). Same settings, so the same text as _encode_details.
    if c_make_encoder is None:  # pragma: no cover - CPython always has the C encoder
        return _encode_details
    make_chunks = c_make_encoder(None, None, encode_basestring, None, ":", ",", True, False, False)
    return lambda details: "".join(make_chunks(details, 0))


_encode_plain_details = _fast_encoder()


class _NotPlain(Exception):
    """The input is outside the fast path's subset: let the model decide."""


def _text(value: object, limit: int) -> str:
    # Plain means: an exact str of printable ASCII within the limit (so no control characters
    # and nothing that could fail UTF-8). Everything else is the model's to judge.
    if (
        type(value) is not str
        or len(value) > limit
        or not (value.isascii() and value.isprintable())
    ):
        raise _NotPlain
    return value


def _given_stamps(fields: dict[str, Any], event_id: object, stamp: object) -> tuple[str, str]:
    # An event id or a timestamp given (or one of them given as None: the model's to judge).
    if event_id is None:
        if "event_id" in fields:
            raise _NotPlain
        event_id = new_event_id()
    elif not _text(event_id, MAX_IDENTIFIER_LENGTH):
        raise _NotPlain
    if stamp is None:
        if "timestamp" in fields:
            raise _NotPlain
        return str(event_id), _stamp()[1]
    if type(stamp) is datetime and stamp.utcoffset() is not None:
        try:
            return str(event_id), format_timestamp(stamp)
        except OverflowError:  # an offset pushing year 1 or 9999 out of range
            raise _NotPlain from None
    raise _NotPlain


def plain_row(fields: dict[str, Any], max_details_bytes: int) -> tuple[Row, dict[str, Any]]:
    """The row for plainly valid keyword input, and its details dict (for redaction).

    Raises :class:`_NotPlain` for anything else.
    """
    if not fields.keys() <= _FIELDS:
        raise _NotPlain
    get = fields.get
    action = get("action")
    if (
        type(action) is not str
        or not 0 < len(action) <= MAX_ACTION_LENGTH
        or not (action.isascii() and action.isprintable())
        or action.isspace()
    ):
        raise _NotPlain
    actor = get("actor")
    resource_type = get("resource_type")
    resource_id = get("resource_id")
    correlation_id = get("correlation_id")
    for value in (actor, resource_type, resource_id, correlation_id):
        # Plain: an exact str of printable ASCII within the limit (no control characters,
        # nothing that could fail UTF-8). Everything else is the model's to judge.
        if value is not None and (
            type(value) is not str
            or len(value) > MAX_IDENTIFIER_LENGTH
            or not (value.isascii() and value.isprintable())
        ):
            raise _NotPlain
    event_id = get("event_id")
    stamp = get("timestamp")
    if (
        event_id is None
        and stamp is None
        and "event_id" not in fields
        and "timestamp" not in fields
    ):
        event_id, timestamp = _stamp()  # the common case: both made here, from one clock reading
    else:
        event_id, timestamp = _given_stamps(fields, event_id, stamp)
    operation_in = get("operation", "execute")
    outcome_in = get("outcome", "success")
    critical = get("critical", False)
    if type(operation_in) not in (str, Operation) or type(outcome_in) not in (str, Outcome):
        raise _NotPlain
    operation = _OPERATIONS.get(operation_in)
    outcome = _OUTCOMES.get(outcome_in)
    if operation is None or outcome is None or type(critical) is not bool:
        raise _NotPlain
    details = fields.get("details", {})
    if type(details) is not dict or not plain_json(details, 0):
        raise _NotPlain
    try:
        text = _encode_plain_details(details) if details else "{}"
    except ValueError:  # an int too long for int -> str: the model names the key
        raise _NotPlain from None
    if text.isascii():
        size = len(text)
    else:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate
            raise _NotPlain from None
    if size > max_details_bytes:
        raise _NotPlain  # the model raises the size error
    if "\\u0000" in text:
        raise _NotPlain  # perhaps a NUL character, which the model refuses naming its place
    # tuple.__new__ directly: Row(...) goes through a generated Python __new__ (~0.2 µs more).
    row = _new_row(
        Row,
        (
            event_id,
            timestamp,
            actor,
            action,
            operation,
            outcome,
            resource_type,
            resource_id,
            correlation_id,
            text,
            1 if critical else 0,
        ),
    )
    return row, details


def validated_row(fields: dict[str, Any], max_details_bytes: int) -> tuple[Row, dict[str, Any]]:
    """The row for keyword input: the fast path, or the model (which raises for bad input)."""
    try:
        return plain_row(fields, max_details_bytes)
    except _NotPlain:
        entry = AuditEntry.model_validate(fields, context={"max_details_bytes": max_details_bytes})
        return entry_row(entry), entry.details


def with_details(row: Row, details: dict[str, Any]) -> Row:
    """``row`` with other details (a redacted copy), as storable text.

    Raises ValueError naming the key if they cannot be stored.
    """
    if not details:
        return row._replace(details="{}")
    try:
        text = _encode_details(details)
        if not text.isascii():
            text.encode("utf-8")  # a lone surrogate fails here, not in the writer
    except (TypeError, ValueError):
        # Not plain JSON: the dict of an AuditEntry changed in place after validation. Convert
        # it as validation does, which names what cannot be stored.
        text = _encode_details(to_json_details(details))
    return row._replace(details=text)


def check_entry_argument(entry: object, fields: dict[str, Any]) -> None:
    """``record()``'s positional argument: an :class:`AuditEntry`, and then no keywords."""
    if not isinstance(entry, AuditEntry):
        raise TypeError(
            f"record() takes an AuditEntry or keyword fields, got {type(entry).__name__}"
        )
    if fields:
        raise TypeError("record() takes an AuditEntry or keyword fields, not both")


def given_entry_row(
    entry: AuditEntry, fields: dict[str, Any], max_details_bytes: int
) -> tuple[Row, dict[str, Any]]:
    """The row of an :class:`AuditEntry` passed to ``record()`` (validated again if changed)."""
    check_entry_argument(entry, fields)
    entry = storable_entry(entry, max_details_bytes)  # model_copy() & co.
    size = entry.details_size()
    if size > max_details_bytes:
        raise InvalidEntryError(
            f"details is {size} bytes serialised, more than max_details_bytes={max_details_bytes}"
        )
    return entry_row(entry), entry.details
