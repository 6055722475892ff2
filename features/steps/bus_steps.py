"""Steps for a tool that publishes domain events on an EventBus the audit service listens to."""

from behave import given, then, when
from behave.runner import Context
from pydantic import ValidationError

from audit_engine import AuditEntry, DomainEvent, EventBus, EventDispatchError, Operation


class NoteEvent(DomainEvent):
    """What the notes tool publishes when a note changes."""

    actor: str
    operation: Operation = Operation.UPDATE
    resource_type: str = "note"
    resource_id: str
    words: int


class ListenerBroke(RuntimeError):
    """The failure of a listener that is not the audit."""


def _bus(context: Context) -> EventBus:
    world = context.world
    if getattr(world, "bus", None) is None:
        world.bus = EventBus()
    return world.bus


@given("a listener that fails on every event listens to the tool's event bus first")
def given_failing_listener(context: Context) -> None:
    def broken_listener(event: DomainEvent) -> None:
        raise ListenerBroke(f"cannot handle {event.event_type}")

    _bus(context).subscribe(NoteEvent, broken_listener)
    context.world.broken_listener = broken_listener


@given("the audit service listens to the tool's event bus")
def given_audit_listens(context: Context) -> None:
    context.world.audit.subscribe(_bus(context))


@given('the audit service listens to the tool\'s event bus, skipping "{skipped}" events')
def given_audit_listens_skipping(context: Context, skipped: str) -> None:
    def mapper(event: DomainEvent) -> AuditEntry | None:
        return None if event.event_type == skipped else event.to_audit_entry()

    context.world.audit.subscribe(_bus(context), mapper)


@when("the tool emits these note events:")
def when_emit(context: Context) -> None:
    bus = _bus(context)
    context.world.emit_errors = []
    context.world.emitted = len(context.table.rows)
    for row in context.table:
        event = NoteEvent(
            event_type=row["event"],
            actor=row["actor"],
            resource_id=row["note"],
            words=int(row["words"]),
        )
        try:
            bus.emit(event)
        except EventDispatchError as exc:
            context.world.emit_errors.append(exc)


@then("the tool is told the failing listener broke on each event")
def then_listener_failures(context: Context) -> None:
    world = context.world
    errors = world.emit_errors
    assert len(errors) == world.emitted, f"{world.emitted} events, {len(errors)} failures"
    for error in errors:
        assert [handler for handler, _ in error.failures] == [world.broken_listener], error
        assert isinstance(error.failures[0][1], ListenerBroke)


@then("the audit database holds these audit entries in order:")
def then_entries_in_order(context: Context) -> None:
    rows = context.world.audit_rows()
    found = [
        (r["action"], r["actor"], r["resource_type"], r["resource_id"], r["details"].get("words"))
        for r in rows
    ]
    expected = [
        (
            row["action"],
            row["actor"],
            row["resource type"],
            row["resource id"],
            int(row["words"]),
        )
        for row in context.table
    ]
    assert found == expected, f"stored {found}, expected {expected}"


@when('the tool emits a plain domain event "{event_type}" in which "{actor}" updates note "{note}"')
def when_emit_plain(context: Context, event_type: str, actor: str, note: str) -> None:
    event = DomainEvent(
        event_type=event_type,
        actor=actor,
        operation="update",
        resource_type="note",
        resource_id=note,
    )
    _bus(context).emit(event)


@then(
    'the audit database holds one entry: "{action}" by "{actor}", operation "{operation}", '
    'on note "{note}"'
)
def then_one_entry(context: Context, action: str, actor: str, operation: str, note: str) -> None:
    rows = context.world.audit_rows()
    found = [
        (r["action"], r["actor"], r["operation"], r["resource_type"], r["resource_id"])
        for r in rows
    ]
    assert found == [(action, actor, operation, "note", note)], found


@when('the tool builds a plain domain event with the unknown field "{field}"')
def when_build_with_unknown_field(context: Context, field: str) -> None:
    world = context.world
    world.attempt(lambda: _bus(context).emit(DomainEvent(event_type="note.save", **{field: "x"})))


@then('building the event fails in the tool\'s own thread naming "{field}"')
def then_event_refused(context: Context, field: str) -> None:
    error = context.world.error
    assert isinstance(error, ValidationError), f"expected a ValidationError, got {error!r}"
    assert [e["loc"] for e in error.errors()] == [(field,)], error.errors()
    assert "Extra inputs are not permitted" in str(error)
