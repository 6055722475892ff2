"""What a tracked ORM change becomes: an entry's fields, its field diff in JSON-safe values.

Used by :mod:`audit_engine.integrations.sqlalchemy`. Everything here runs inside the
application's flush, so it reads only what the session already holds (``state.dict``, the
attributes' history) except in :func:`unknown_old_values`, which asks the database — before
the flush changes it — for the old values SQLAlchemy did not keep.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection, Iterable, Mapping
from datetime import date, time
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

from sqlalchemy import bindparam, select
from sqlalchemy.orm import InstanceState, Mapper, ORMExecuteState, Session

# A field's change: [old, new] (None for a side that does not exist).
Diff = dict[str, list[Any]]

_MISSING = object()


def json_value(value: Any) -> Any:
    """``value`` as the JSON value the diff stores: one fixed rule per type.

    datetime/date/time -> ISO 8601 text; Decimal -> its exact text ("1.10"); UUID -> text;
    an Enum -> its value; bytes -> {"bytes": size, "sha256": hex digest} (the content itself
    is not copied into the trail); NaN and infinities -> their text; dicts, lists, tuples and
    sets (JSON columns) item by item; anything else -> ``str(value)``.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, date | time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, Enum):
        return json_value(value.value)
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    if isinstance(value, Mapping):
        return {str(key): json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(item) for item in value]
    if isinstance(value, set | frozenset):
        # Set order varies between runs: sorted by JSON text, so equal sets read the same.
        return sorted((json_value(item) for item in value), key=_json_text)
    return str(value)


def _json_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def resource_id(state: InstanceState[Any]) -> str:
    """The primary key as text: the value itself for one column (``"7"``), a JSON array for a
    composite key (``'[7,"en"]'``), in the mapper's primary key order."""
    if state.key is not None:
        identity: Iterable[Any] = state.key[1]
    else:  # a row just inserted: its identity is set when the flush ends
        identity = state.mapper.primary_key_from_instance(state.obj())
    values = [json_value(value) for value in identity]
    if len(values) == 1:
        only = values[0]
        return only if isinstance(only, str) else _json_text(only)
    return _json_text(values)


def created(state: InstanceState[Any], keys: Iterable[str]) -> Diff:
    """[None, new] for every tracked field the new object holds (a value the database made and
    SQLAlchemy did not fetch back, a server default, is not there to show)."""
    loaded = state.dict
    return {key: [None, json_value(loaded[key])] for key in keys if key in loaded}


def updated(state: InstanceState[Any], keys: Iterable[str], old: Mapping[str, Any]) -> Diff:
    """[old, new] for every tracked field whose value changed; empty when none did.

    ``old`` holds the values :func:`unknown_old_values` fetched for fields set without being
    loaded first (SQLAlchemy keeps no old value for those).
    """
    diff: Diff = {}
    attrs = state.attrs
    for key in keys:
        history = attrs[key].history
        if not history.added:
            continue
        new = json_value(history.added[0])
        before = json_value(history.deleted[0] if history.deleted else old.get(key))
        if before != new:
            diff[key] = [before, new]
    return diff


def deleted(state: InstanceState[Any], keys: Iterable[str], old: Mapping[str, Any]) -> Diff:
    """[old, None] for every tracked field whose value is known (loaded, or fetched by
    :func:`unknown_old_values` before the flush)."""
    loaded = state.dict
    diff: Diff = {}
    for key in keys:
        value = loaded.get(key, old.get(key, _MISSING))
        if value is not _MISSING:
            diff[key] = [json_value(value), None]
    return diff


def unknown_fields(state: InstanceState[Any], keys: Collection[str], deleting: bool) -> list[str]:
    """The tracked fields whose old value the diff needs and the session does not hold.

    For an object being deleted: fields not loaded. For an object being updated: fields set
    while not loaded (expired after a commit, or deferred), whose history has no old value.
    """
    if deleting:
        return [key for key in keys if key in state.unloaded]
    attrs = state.attrs
    unknown = []
    for key in keys:
        history = attrs[key].history
        if history.added and not history.deleted:
            unknown.append(key)
    return unknown


def unknown_old_values(
    session: Session, state: InstanceState[Any], keys: list[str]
) -> dict[str, Any]:
    """The stored values of ``keys`` for ``state``'s row, read before the flush changes them
    (one SELECT by primary key, autoflush off); empty if the row is gone."""
    mapper: Mapper[Any] = state.mapper
    assert state.key is not None  # only persistent objects have old values
    cls = mapper.class_
    statement = select(*(getattr(cls, key) for key in keys)).where(
        *(column == value for column, value in zip(mapper.primary_key, state.key[1], strict=True))
    )
    with session.no_autoflush:
        row = session.execute(statement).first()
    return {} if row is None else dict(zip(keys, row, strict=True))


def table_name(mapper: Mapper[Any]) -> str:
    """The name of the table the class's own columns live in (its resource type)."""
    return str(getattr(mapper.local_table, "name", mapper.class_.__name__))


def statement_text(state: ORMExecuteState, mapper: Mapper[Any], dialect: Any) -> str:
    """The statement's SQL in ``dialect``'s form, with its placeholders (never its values).

    A list of parameter sets (an ORM bulk insert, or an update by primary key) is compiled as
    the per-row statement SQLAlchemy emits: the ORM statement alone would not compile (insert)
    or would read as an update of every row.
    """
    params = state.parameters
    if isinstance(params, list) and params:
        table: Any = mapper.local_table
        columns = [column_key(mapper, key) for key in params[0]]
        if state.is_insert:
            return str(table.insert().compile(dialect=dialect, column_keys=columns))
        if state.is_update:
            keys = [c.key for c in mapper.primary_key]
            by_key = table.update().where(
                *(c == bindparam(f"{c.key}_pk") for c in mapper.primary_key)
            )
            settable = [c for c in columns if c not in keys]
            return str(by_key.compile(dialect=dialect, column_keys=settable))
    statement: Any = state.statement
    return str(statement.compile(dialect=dialect))


def column_key(mapper: Mapper[Any], attribute: str) -> str:
    prop = mapper.attrs.get(attribute)
    columns = getattr(prop, "columns", None)
    return str(columns[0].key) if columns else attribute
