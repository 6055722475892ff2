"""What ``details`` accept, and the one JSON form each value is stored (and hashed) as.

Applications hold dates, decimals, UUIDs, enums, paths, sets, dataclasses and pydantic models;
``to_json_details`` turns them into plain JSON values, in the caller's thread, with one fixed rule
per type, because the hash chain covers the stored text: the same details must always give the
same text. Anything else is refused with a ``ValueError`` naming the value's place
(``details.key``, ``details.key[0]``).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping
from datetime import date, time
from decimal import Decimal
from enum import Enum
from pathlib import PurePath
from typing import Any
from uuid import UUID

from pydantic import BaseModel

MAX_DETAILS_DEPTH = 64
"""How deeply ``details`` may nest: the details object itself is level 1."""

ACCEPTED = (
    "JSON values, datetime/date/time, Decimal, UUID, Enum, Path, tuple, set, frozenset, "
    "dataclasses and pydantic models"
)

_INFINITIES = (float("inf"), float("-inf"))
_dump_item = json.JSONEncoder(
    separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False
).encode


# Plain details nest at most this deep; deeper ones are walked by to_json_details.
_PLAIN_DEPTH = 32


def plain_json(value: object, depth: int) -> bool:
    """Whether ``value`` is plain JSON already: exact types, finite floats, str keys, shallow.

    Such details need no conversion (record()'s fast path, and the model's shortcut). Their
    text may still fail UTF-8 (a lone surrogate) or int -> str (a huge int): the callers check.
    """
    # Written as loops over exact types: this runs for every record() with details.
    kind = type(value)
    if kind is dict:
        if depth >= _PLAIN_DEPTH:
            return False
        for key, item in value.items():  # type: ignore[attr-defined]
            if type(key) is not str:
                return False
            t = type(item)
            if t is str or t is int or t is bool or item is None:
                continue
            if t is float:
                if item != item or item in _INFINITIES:
                    return False
                continue
            if not plain_json(item, depth + 1):
                return False
        return True
    if kind is list:
        if depth >= _PLAIN_DEPTH:
            return False
        return all(plain_json(item, depth + 1) for item in value)  # type: ignore[attr-defined]
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is float:
        return value == value and value not in _INFINITIES
    return False


class _TooDeep(Exception):
    """Raised at the level past the limit; reported once, as a ValueError, at the top."""


def to_json_details(value: object, field: str = "details") -> dict[str, Any]:
    """``value`` (the ``details`` given) as a dict of plain JSON values.

    Raises ValueError naming the place at fault (``details.key``); never RecursionError: the
    depth is bounded. ``field`` names the field in errors (a DomainEvent's ``payload``).
    """
    try:
        converted = _convert(value, field, 1)
    except _TooDeep:
        raise ValueError(
            f"{field} is nested more than {MAX_DETAILS_DEPTH} levels deep "
            f"(MAX_DETAILS_DEPTH={MAX_DETAILS_DEPTH})"
        ) from None
    if type(converted) is not dict:
        raise ValueError(
            f"{field} must be a JSON object (a dict or a mapping), got {type(value).__name__}"
        )
    return converted


def _first(pair: tuple[str, Any]) -> str:
    return pair[0]


def _child(where: str, key: str) -> str:
    return f"{where}.{key}" if key.isidentifier() else f"{where}[{key!r}]"


def _text(value: str, where: str) -> str:
    # Either backend must store every entry record() accepted: PostgreSQL's text and jsonb hold
    # no U+0000 (SQLite would), so neither does an entry.
    if "\x00" in value:
        raise ValueError(
            f"{where} contains the NUL character (U+0000), which a PostgreSQL trail cannot store"
        )
    # SQLite stores UTF-8: a lone surrogate would only fail later, when the details are written.
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"{where} contains characters that cannot be encoded as UTF-8"
            ) from None
    # An exact str: a str subclass could serialise differently from its text.
    return value if type(value) is str else str.__str__(value)


def _convert(value: Any, where: str, depth: int) -> Any:
    kind = type(value)
    if kind is str:
        return _text(value, where)
    if kind is bool or value is None:
        return value
    if kind is int:
        # An int of at most 3 * limit bits has fewer than `limit` digits (8**n < 10**n): it
        # converts to text. Only a longer one is tried (json.dumps would fail on it unnamed).
        limit = sys.get_int_max_str_digits()
        if limit and value.bit_length() > 3 * limit:
            try:
                repr(value)
            except ValueError:
                raise ValueError(
                    f"{where} is an integer with more than {limit} digits, which Python does "
                    "not convert to text (sys.set_int_max_str_digits)"
                ) from None
        return value
    if kind is float:
        if value != value or value in _INFINITIES:
            raise ValueError(f"{where} is {value!r}, which JSON cannot hold")
        return value
    if kind is dict or isinstance(value, Mapping):
        if depth > MAX_DETAILS_DEPTH:
            raise _TooDeep
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where} has a key that is not a string: {key!r}")
            key = _text(key.value if isinstance(key, Enum) else key, where)
            out[key] = _convert(item, _child(where, key), depth + 1)
        return out
    if kind is list or kind is tuple or isinstance(value, list | tuple):
        if depth > MAX_DETAILS_DEPTH:
            raise _TooDeep
        return [_convert(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    if isinstance(value, set | frozenset):
        if depth > MAX_DETAILS_DEPTH:
            raise _TooDeep
        # Set order varies from run to run (string hashing): sorted by their JSON text instead.
        items = [_convert(item, f"{where}[]", depth + 1) for item in value]
        return [item for _, item in sorted(((_dump_item(i), i) for i in items), key=_first)]
    if isinstance(value, Enum):
        return _convert(value.value, where, depth)
    # Subclasses (not enums) as their plain value: the exact type's own conversion, because a
    # subclass may override __str__ or __int__.
    if isinstance(value, str):
        return _text(str.__str__(value), where)
    if isinstance(value, int):
        return _convert(int.__int__(value), where, depth)
    if isinstance(value, float):
        return _convert(float.__float__(value), where, depth)
    if isinstance(value, date | time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)  # exact: 1.10 stays "1.10"
    if isinstance(value, UUID | PurePath):
        return str(value)
    if isinstance(value, BaseModel):
        try:
            dumped = value.model_dump(mode="json")
        except ValueError as exc:  # pydantic cannot serialise one of its fields
            raise ValueError(f"{where} has no JSON form: {exc}") from None
        return _convert(dumped, where, depth)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return _convert(fields, where, depth)
    raise ValueError(
        f"{where} has type {kind.__name__}, which details cannot hold (they take {ACCEPTED})"
    )
