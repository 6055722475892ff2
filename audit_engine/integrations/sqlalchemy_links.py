"""The rows of ``relationship(secondary=...)`` association tables a flush wrote, as entries.

A many-to-many change (``note.tags.append(tag)``, ``.remove()``, a new collection, a deleted
parent whose links go with it) inserts or deletes rows of the association table without any
mapper event: SQLAlchemy writes them from the relationship's history. :func:`link_rows` reads
that same history at ``after_flush`` — the session still holds its pre-flush state then — and
returns one change per row, each row once even when both sides of a ``back_populates`` pair show
it (the rule SQLAlchemy itself follows: one row per pair of objects and table).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy.orm import InstanceState, Mapper, Session, attributes
from sqlalchemy.orm.base import PASSIVE_NO_INITIALIZE
from sqlalchemy.orm.relationships import RelationshipProperty

from audit_engine.integrations.sqlalchemy_changes import json_value

# (the mapper whose flush wrote the row, record()'s fields)
Link = tuple[Mapper[Any], dict[str, Any]]


def link_rows(session: Session, tracked: Callable[[Mapper[Any]], bool]) -> list[Link]:
    """One change per association row the flush inserted or deleted, for every many-to-many
    relationship with a class ``tracked`` on either side."""
    seen: set[tuple[str, str, tuple[tuple[str, Any], ...]]] = set()
    found: list[Link] = []
    for state, deleting in _flushed_states(session):
        mapper: Mapper[Any] = state.mapper
        for prop in mapper.relationships:
            if prop.secondary is None or prop.viewonly:
                continue
            if not (tracked(mapper) or tracked(prop.mapper)):
                continue
            history = attributes.get_state_history(state, prop.key, PASSIVE_NO_INITIALIZE)
            if deleting:
                # The parent's delete removes every link it had (the ones SQLAlchemy loaded
                # for it; with passive_deletes the database does it: not captured).
                changes = [("delete", child) for child in history.non_added()]
            else:
                changes = [("create", child) for child in history.added]
                changes += [("delete", child) for child in history.deleted]
            for operation, child in changes:
                row = _row(session, state, prop, child)
                if row is None:
                    continue
                table = str(getattr(prop.secondary, "name", "association"))
                key = (operation, table, tuple(sorted(row.items(), key=lambda kv: kv[0])))
                if key in seen:
                    continue
                seen.add(key)
                found.append((mapper, _fields(prop, table, operation, row)))
    return found


def _flushed_states(session: Session) -> Iterator[tuple[InstanceState[Any], bool]]:
    for obj in list(session.new) + list(session.dirty):
        yield attributes.instance_state(obj), False
    for obj in session.deleted:
        yield attributes.instance_state(obj), True


def _row(
    session: Session, state: InstanceState[Any], prop: RelationshipProperty[Any], child: Any
) -> dict[str, Any] | None:
    """The association row of ``state`` and ``child`` (column key -> value), or None when
    SQLAlchemy writes none (no child, or a child outside the session)."""
    if child is None:
        return None
    child_state: InstanceState[Any] = attributes.instance_state(child)
    if child_state.session_id != session.hash_key:
        return None
    row: dict[str, Any] = {}
    for pairs, side_state, side_mapper in (
        (prop.synchronize_pairs, state, prop.parent),
        (prop.secondary_synchronize_pairs or [], child_state, prop.mapper),
    ):
        for source, column in pairs:
            key = side_mapper.get_property_by_column(source).key
            row[str(column.key)] = side_state.dict.get(key)
    return row


def _fields(
    prop: RelationshipProperty[Any], table: str, operation: str, row: dict[str, Any]
) -> dict[str, Any]:
    secondary: Any = prop.secondary
    order = [c.key for c in secondary.columns if c.key in row]
    named = [c.key for c in secondary.primary_key if c.key in row]
    whole = len(named) == len(secondary.primary_key)
    values = [json_value(row[key]) for key in (named if whole else order)]
    return {
        "action": f"{table}.{operation}",
        "operation": operation,
        "resource_type": table,
        "resource_id": json.dumps(values, sort_keys=True, separators=(",", ":")),
        "details": {
            key: [None, json_value(row[key])]
            if operation == "create"
            else [json_value(row[key]), None]
            for key in order
        },
    }
