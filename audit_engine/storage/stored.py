"""Reading stored rows back (:func:`parse_row`), and the read API's argument checks.

Shared by both backends' :class:`~audit_engine.storage.store.AuditStore`: a row comes back as a
dict of its stored text (timestamps as the engine's fixed-width UTC text, ``details`` as the
text the chain hashed), whatever the database.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from audit_engine.columns import STORED_COLUMNS
from audit_engine.errors import AuditStoreError
from audit_engine.models import AuditEntry, format_timestamp
from audit_engine.storage.chain import ChainHead

__all__ = ["as_dicts", "as_utc", "checked_head", "checked_limit", "parse_row"]

_COLUMNS = STORED_COLUMNS
_READ_CONTEXT = {"max_details_bytes": sys.maxsize}  # stored rows were checked when recorded


def parse_row(row: dict[str, Any]) -> AuditEntry:
    """Turn a stored row back into an :class:`AuditEntry`.

    A row the engine cannot read (another tool wrote it) raises :class:`AuditStoreError`
    naming the row id, never an anonymous JSON or validation error.
    """
    data = {name: row[name] for name in _COLUMNS}
    try:
        data["details"] = json.loads(data["details"])
    except (TypeError, ValueError) as exc:
        raise AuditStoreError(
            f"row {row['id']} cannot be read: its details are not JSON ({exc})"
        ) from None
    data["critical"] = bool(data["critical"])
    try:
        return AuditEntry.model_validate(data, context=_READ_CONTEXT)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise AuditStoreError(
            f"row {row['id']} cannot be read: it is not a valid entry ({_first_error(exc)})"
        ) from None


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return f"{where}: {first['msg']}" if where else str(first["msg"])
    return str(exc)  # pragma: no cover - model validators raise pydantic's error


def as_utc(value: datetime | str, name: str) -> str:
    """The stored form of a ``since``/``until`` bound; an ISO-8601 string without an offset is
    UTC (stored timestamps are UTC), a naive datetime is refused (it may mean local time).
    """
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise AuditStoreError(
                f"{name} must be an ISO-8601 date or time, e.g. 2026-01-31T12:00:00Z "
                f"(got {value!r})"
            ) from None
        return format_timestamp(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))
    if not isinstance(value, datetime):
        raise TypeError(
            f"{name} must be a datetime or an ISO-8601 string (got {type(value).__name__})"
        )
    if value.tzinfo is None:
        raise AuditStoreError(f"{name} must be timezone-aware (got a naive datetime)")
    return format_timestamp(value)


_MAX_LIMIT = 2**63 - 1  # SQLite's largest integer


def checked_limit(limit: object) -> int:
    """``limit`` as SQLite takes it; a ``TypeError`` or ``ValueError`` naming it otherwise."""
    if not isinstance(limit, int) or isinstance(limit, bool):
        raise TypeError(f"limit must be an int (got {type(limit).__name__})")
    if limit < 0:
        raise ValueError(f"limit must be zero or more (got {limit})")
    if limit > _MAX_LIMIT:
        raise ValueError(f"limit must be at most {_MAX_LIMIT} (got {limit})")
    return limit


def checked_head(head: object) -> ChainHead | None:
    """A ``ChainHead`` only: a published ``ID:HASH`` string is parsed by the caller."""
    if head is None or isinstance(head, ChainHead):
        return head
    raise TypeError(
        f"expected_head must be a ChainHead (as head() returns) or None, got "
        f"{type(head).__name__}; ChainHead(id=ID, hash=HASH) makes one from a published ID:HASH"
    )


def as_dicts(cursor: Iterable[Any], description: Any) -> list[dict[str, Any]]:
    names = [column[0] for column in description]
    return [dict(zip(names, row, strict=True)) for row in cursor]
