"""Steps for critical entries: privileged access that is always audited and committed at once."""

from typing import Any

from behave import then, when
from behave.runner import Context

from audit_engine import AuditWriteError


def _read_patient_record(world: Any, record_id: str, *, critical: bool) -> str | None:
    return world.record_labelled(
        f"patient_record.view {record_id}",
        action="patient_record.view",
        actor="admin",
        operation="read",
        resource_type="patient_record",
        resource_id=record_id,
        details={"reason": "break-glass access"},
        critical=critical,
    )


@when(
    'an administrator reads patient record "{record_id}" as a critical entry, '
    "another program looking right after"
)
def when_critical_read(context: Context, record_id: str) -> None:
    world = context.world
    event_id = _read_patient_record(world, record_id, critical=True)
    # No flush: whatever the other program sees now was committed before record() returned.
    world.seen_right_after = event_id is not None and world.committed(event_id)
    world.looked_at = event_id


@when('a clerk reads patient record "{record_id}" as an ordinary entry')
def when_ordinary_read(context: Context, record_id: str) -> None:
    _read_patient_record(context.world, record_id, critical=False)


@when('the tool records a create of note "{note_id}", another program looking right after')
def when_ordinary_create(context: Context, note_id: str) -> None:
    world = context.world
    event_id = world.record_labelled(
        f"note.create {note_id}",
        action="note.create",
        operation="create",
        resource_type="note",
        resource_id=note_id,
    )
    world.seen_right_after = event_id is not None and world.committed(event_id)
    world.looked_at = event_id


@then("recording returned an event id and the other program saw the entry committed")
def then_seen_at_once(context: Context) -> None:
    world = context.world
    assert world.looked_at, "recording returned no event id"
    assert world.seen_right_after, "the entry was not committed when record() returned"


@then("recording returned an event id but the other program did not see the entry yet")
def then_not_seen_yet(context: Context) -> None:
    world = context.world
    assert world.looked_at, "recording returned no event id"
    assert not world.seen_right_after, "the entry was committed before any flush"


@then("the other program now sees the entry committed")
def then_seen_now(context: Context) -> None:
    world = context.world
    assert world.committed(world.looked_at), "the entry is still not committed"


@when(
    'an administrator reads patient record "{record_id}" as a critical entry with event id '
    '"{event_id}"'
)
def when_critical_read_with_id(context: Context, record_id: str, event_id: str) -> None:
    world = context.world
    world.attempt(
        lambda: world.audit.record(
            action="patient_record.view",
            actor="admin",
            operation="read",
            resource_type="patient_record",
            resource_id=record_id,
            event_id=event_id,
            critical=True,
        )
    )


@then('that recording returned the event id "{event_id}"')
def then_returned_id(context: Context, event_id: str) -> None:
    world = context.world
    assert world.error is None, f"recording raised {world.error!r}"
    assert world.returned == event_id, world.returned
    assert world.committed(event_id)


@then('recording failed with an audit write error starting "{start}"')
def then_write_error(context: Context, start: str) -> None:
    error = context.world.error
    assert isinstance(error, AuditWriteError), repr(error)
    assert str(error).startswith(start), str(error)


@then('the dead-letter file holds the critical read of patient record "{record_id}"')
def then_critical_dead_lettered(context: Context, record_id: str) -> None:
    letters = context.world.dead_letters()
    assert [(d["entry"]["resource_id"], d["entry"]["critical"]) for d in letters] == [
        (record_id, True)
    ], letters
