"""What a tracked ORM change becomes: an entry's fields, its field diff in JSON-safe values.

Used by :mod:`audit_engine.integrations.sqlalchemy`. Everything here runs inside the
application's flush, so it reads only what the session already holds (``state.dict``, the
attributes' history) except in :func:`stored_values`, which asks the database — through the
flush's connection, right before the row's UPDATE or DELETE — for the old values SQLAlchemy did
not keep.
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
from sqlalchemy.engine import Connection
from sqlalchemy.orm import InstanceState, Mapper, ORMExecuteState

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


def updated(
    state: InstanceState[Any],
    keys: Iterable[str],
    old: Mapping[str, Any],
    generated: Collection[str] = (),
) -> Diff:
    """[old, new] for every tracked field whose value changed; empty when none did.

    ``old`` holds the values :func:`stored_values` fetched for fields set without being loaded
    first (SQLAlchemy keeps no old value for those) and the values ``generated`` fields (see
    :func:`generated_fields`) had before the UPDATE; a generated field is shown when both its
    old and its new value are known.
    """
    diff: Diff = {}
    attrs = state.attrs
    loaded = state.dict
    for key in keys:
        history = attrs[key].history
        if history.added:
            new = json_value(history.added[0])
            before = json_value(history.deleted[0] if history.deleted else old.get(key))
        elif key in generated and key in old and key in loaded:
            new = json_value(loaded[key])  # set by the UPDATE itself, put back by SQLAlchemy
            before = json_value(old[key])
        else:
            continue
        if before != new:
            diff[key] = [before, new]
    return diff


def deleted(state: InstanceState[Any], keys: Iterable[str], old: Mapping[str, Any]) -> Diff:
    """[old, None] for every tracked field whose value is known (loaded, or fetched by
    :func:`stored_values` before the DELETE)."""
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
    while not loaded (expired after a commit, or deferred) — by the application, or by the
    flush itself (a foreign key set through a relationship) — whose history has no old value.
    Called right before the row's UPDATE, when the flush has set every column it will write.
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


def generated_fields(
    mapper: Mapper[Any], state: InstanceState[Any], keys: Collection[str]
) -> list[str]:
    """The tracked fields an UPDATE sets without the application setting them: a column with
    ``onupdate=`` or ``server_onupdate=``, or the mapper's version counter."""
    attrs = state.attrs
    found = []
    for key in keys:
        column = _column(mapper, key)
        if column is None or attrs[key].history.added:
            continue
        if (
            getattr(column, "onupdate", None) is not None
            or getattr(column, "server_onupdate", None) is not None
            or column is mapper.version_id_col
        ):
            found.append(key)
    return found


def computed_in_python(mapper: Mapper[Any], key: str) -> bool:
    """Whether the UPDATE's value for ``key`` is made in Python (a scalar or callable
    ``onupdate=``, the version counter), so SQLAlchemy puts it back on the object."""
    column = _column(mapper, key)
    if column is None:
        return False
    if column is mapper.version_id_col:
        return True
    default = getattr(column, "onupdate", None)
    return default is not None and bool(
        getattr(default, "is_scalar", False) or getattr(default, "is_callable", False)
    )


def _column(mapper: Mapper[Any], key: str) -> Any:
    prop = mapper.attrs.get(key)
    columns = getattr(prop, "columns", None)
    return columns[0] if columns else None


def stored_values(
    connection: Connection, state: InstanceState[Any], keys: list[str]
) -> dict[str, Any]:
    """The stored values of ``keys`` for ``state``'s row, read through the flush's connection
    before its UPDATE or DELETE (one SELECT by primary key); empty if the row is gone."""
    mapper: Mapper[Any] = state.mapper
    assert state.key is not None  # only persistent objects have old values
    columns = [_column(mapper, key) for key in keys]
    statement = (
        select(*columns)
        # The join of every table of a joined-inheritance class: its columns live in several.
        .select_from(mapper.persist_selectable)
        .where(
            *(
                column == value
                for column, value in zip(mapper.primary_key, state.key[1], strict=True)
            )
        )
    )
    row = connection.execute(statement).first()
    return {} if row is None else dict(zip(keys, row, strict=True))


def row_count(result: Any, params: Any) -> tuple[int | None, Any]:
    """(how many rows a bulk statement wrote, the result to give the caller).

    A list of parameter sets (executemany): one row each. Otherwise the driver's count; when it
    reports none (-1) and the statement returns rows (RETURNING), the rows are the count: they
    are read into memory here and the caller gets a result of its own over them. None when
    the driver does not say (never -1 in the trail).
    """
    if isinstance(params, list):
        return len(params), result
    rows = getattr(result, "rowcount", None)
    if (rows is None or rows < 0) and getattr(result, "returns_rows", True):
        frozen = result.freeze()
        return len(frozen.data), frozen()
    return (None if rows is None or rows < 0 else rows), result


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
