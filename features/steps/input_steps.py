"""Steps for entries that fail validation in the caller's thread."""

import json
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

from behave import then, when
from behave.runner import Context

from audit_engine import AuditEntry

_LARGE_DETAILS = {"body": "x" * 2000}


def _bad_entry(problem: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The record() arguments for each kind of bad entry, as (positional, keyword)."""
    base: dict[str, Any] = {"action": "note.save", "actor": "alice", "operation": "update"}
    if problem == "an empty action":
        return (), {**base, "action": ""}
    if problem == "a blank action":
        return (), {**base, "action": "   "}
    if problem == "a timestamp without a time zone":
        return (), {**base, "timestamp": datetime(2024, 5, 1, 12, 0, 0)}  # naive on purpose
    if problem == "details larger than 1024 bytes":
        return (), {**base, "details": _LARGE_DETAILS}
    if problem == "a prepared entry whose details exceed 1024 bytes":
        # Valid on its own (the model's own limit is larger): only the service's setting refuses it.
        return (AuditEntry(**base, details=_LARGE_DETAILS),), {}
    if problem == "an unknown operation":
        return (), {**base, "operation": "teleport"}
    if problem == "a control character slipped into a copied entry":
        # model_copy() does not validate: record() must, or the writer meets it later.
        return (AuditEntry(**base).model_copy(update={"actor": "eve\x1b[2J"}),), {}
    if problem == "a lone surrogate slipped into a copied entry":
        return (AuditEntry(**base).model_copy(update={"actor": "\ud800"}),), {}
    if problem == "a right-to-left override in the resource id":
        return (), {**base, "resource_id": "note-\u202e7"}
    if problem == "details nested 5000 levels deep":
        deep: Any = "bottom"
        for _ in range(5000):
            deep = [deep]
        return (), {**base, "details": {"deep": deep}}
    if problem == "a 5000-digit number in details":
        return (), {**base, "details": {"count": 10**4999}}
    if problem == "a value details cannot hold":
        return (), {**base, "details": {"blob": object()}}
    raise AssertionError(f"no example for {problem!r}")


@when("the tool tries to record an entry with {problem}")
def when_record_bad(context: Context, problem: str) -> None:
    world = context.world
    args, kwargs = _bad_entry(problem)
    world.attempt(lambda: world.keep(world.audit.record(*args, **kwargs)))


@then('recording fails in the tool\'s own thread with an error that names "{field}"')
def then_refused(context: Context, field: str) -> None:
    world = context.world
    assert isinstance(world.error, ValueError), f"expected a ValueError, got {world.error!r}"
    assert field in str(world.error), f"{field!r} is not named in {world.error}"
    assert world.accepted == [], "the bad entry was accepted"


class NoteState(Enum):
    DRAFT = "draft"


@when("the tool records a note save whose details hold a date, a decimal, a set and an enum")
def when_record_rich_details(context: Context) -> None:
    world = context.world
    details = {
        "on": date(2026, 12, 1),
        "amount": Decimal("12.50"),
        "tags": {"b", "a"},
        "state": NoteState.DRAFT,
    }
    world.keep(world.audit.record(action="note.save", resource_id=42, details=details))


@then("the stored details read {text}")
def then_stored_details(context: Context, text: str) -> None:
    rows = context.world.audit_rows()
    assert len(rows) == 1, rows
    stored = rows[0]["details"]
    assert json.dumps(stored, separators=(",", ":"), sort_keys=True) == text, stored


@then('the stored resource id is "{resource_id}"')
def then_stored_resource_id(context: Context, resource_id: str) -> None:
    assert context.world.audit_rows()[0]["resource_id"] == resource_id
