"""The stored form of an entry: :class:`Row`, the one tuple that travels past intake.

Rows are :class:`Row` tuples in the insert's column order; the hand-off queue holds them, the
writer and the dead-letter file take them, the storage appends them. Built by
:mod:`audit_engine.pipeline.intake` (the fast path) or :func:`entry_row` (from a model).
"""

from __future__ import annotations

import json
import sys
from typing import NamedTuple

from audit_engine.models import AuditEntry, format_timestamp

__all__ = ["Row", "entry_row", "row_entry", "storable_entry"]


class Row(NamedTuple):
    """An entry in its stored form (the column order of the insert, without id and hashes).

    Its fields are :data:`audit_engine.columns.STORED_COLUMNS`, with their types and
    nullability: written out so type checkers see them, held equal by tests/unit/test_columns.py.
    """

    event_id: str
    timestamp: str
    actor: str | None
    action: str
    operation: str
    outcome: str
    resource_type: str | None
    resource_id: str | None
    correlation_id: str | None
    details: str
    critical: int


_FIELD_NAMES = tuple(AuditEntry.model_fields)


def storable_entry(entry: AuditEntry, max_details_bytes: int | None = None) -> AuditEntry:
    """``entry`` if validation made it and nothing changed it since, else it validated again.

    ``model_copy(update=...)``, ``model_construct`` and ``object.__setattr__`` make entries no
    validation saw; one of those with a lone surrogate or a control character used to reach the
    writer. Raises the model's ``ValidationError`` (a ValueError naming the field).
    """
    if entry.is_intact():
        return entry  # the common case: one identity check per field
    values = entry.__dict__
    data = {name: values[name] for name in _FIELD_NAMES if name in values}
    limit = sys.maxsize if max_details_bytes is None else max_details_bytes
    return AuditEntry.model_validate(data, context={"max_details_bytes": limit})


def entry_row(entry: AuditEntry) -> Row:
    """The stored form of an entry (validated again first unless :func:`storable_entry` holds)."""
    entry = storable_entry(entry)
    return Row(
        entry.event_id,
        format_timestamp(entry.timestamp),
        entry.actor,
        entry.action,
        entry.operation.value,
        entry.outcome.value,
        entry.resource_type,
        entry.resource_id,
        entry.correlation_id,
        entry.details_json,
        1 if entry.critical else 0,
    )


def row_entry(row: Row) -> AuditEntry:
    """The model of a stored row (for the dead-letter file and custom scope keys)."""
    return AuditEntry.model_validate(
        {**row._asdict(), "details": json.loads(row.details), "critical": bool(row.critical)},
        context={"max_details_bytes": len(row.details.encode("utf-8"))},
    )
