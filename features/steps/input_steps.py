"""Steps for entries that fail validation in the caller's thread."""

from datetime import datetime
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
