"""Steps for blocks of work that name their user and request once (``audit.context()``) and for
maintenance runs with auditing switched off (``audit.disabled()``)."""

import contextvars
import threading
from typing import Any

from behave import then, when
from behave.runner import Context
from blocks import enter, leave
from trail_backend import read_rows

from audit_engine import DomainEvent, EventBus


def _save(world: Any, note_id: str, **fields: Any) -> str | None:
    return world.keep(
        world.audit.record(
            action="note.save",
            operation="update",
            resource_type="note",
            resource_id=note_id,
            **fields,
        )
    )


@when('the tool starts handling a request from "{actor}" with request id "{request_id}"')
def when_start_request(context: Context, actor: str, request_id: str) -> None:
    enter(context, context.world.audit.context(actor=actor, correlation_id=request_id))


@when("the tool finishes handling the request")
@when("the tool switches auditing back on")
def when_finish_block(context: Context) -> None:
    leave(context, "block of work")


@when("the tool switches auditing off for a maintenance run")
def when_disable(context: Context) -> None:
    enter(context, context.world.audit.disabled())


@when('the tool saves note "{note_id}" without naming anyone')
def when_save_unnamed(context: Context, note_id: str) -> None:
    _save(context.world, note_id)


@when('the tool saves note "{note_id}" on behalf of "{actor}"')
def when_save_named(context: Context, note_id: str, actor: str) -> None:
    _save(context.world, note_id, actor=actor)


@when('the tool records a critical entry "{action}"')
def when_record_critical(context: Context, action: str) -> None:
    context.world.keep(context.world.audit.record(action=action, critical=True))


@when('the tool\'s event bus announces that note "{note_id}" was shared')
def when_bus_announces(context: Context, note_id: str) -> None:
    bus = EventBus()
    context.world.audit.subscribe(bus)
    bus.emit(DomainEvent(event_type="note.share", resource_type="note", resource_id=note_id))


def _in_thread(context: Context, target: Any) -> None:
    worker = threading.Thread(target=target, name="background-save")
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "the background save did not finish within 30 s"


@when('a background thread saves note "{note_id}" without the request\'s context')
def when_thread_plain(context: Context, note_id: str) -> None:
    _in_thread(context, lambda: _save(context.world, note_id))


@when('a background thread saves note "{note_id}" with a copy of the request\'s context')
def when_thread_copied(context: Context, note_id: str) -> None:
    copied = contextvars.copy_context()
    _in_thread(context, lambda: copied.run(_save, context.world, note_id))


@then("the stored entries name, in order:")
def then_entries_name(context: Context) -> None:
    assert context.table is not None, "this step needs a | note | actor | request | table"
    rows = read_rows(context.world.database, ("resource_id", "actor", "correlation_id"))
    found = [(r["resource_id"], r["actor"] or "", r["correlation_id"] or "") for r in rows]
    expected = [(row["note"], row["actor"], row["request"]) for row in context.table]
    assert found == expected, f"stored {found}, expected {expected}"
