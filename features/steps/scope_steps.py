"""Steps for units of work (``with audit.scope(): ...``) in which repeated entries count once."""

from typing import Any

from behave import then, when
from behave.runner import Context
from blocks import enter, leave, open_blocks


def _start(context: Context, **kwargs: Any) -> None:
    enter(context, context.world.audit.scope(**kwargs))


def _save_note(world: Any, note_id: str, actor: str = "alice", **fields: Any) -> str | None:
    return world.record_labelled(
        f"save {note_id}",
        action="note.save",
        actor=actor,
        operation="update",
        resource_type="note",
        resource_id=note_id,
        **fields,
    )


@when("the tool starts a unit of work")
@when("the tool starts a unit of work inside it")
def when_start_scope(context: Context) -> None:
    _start(context)


@when("the tool starts a fresh unit of work inside it")
def when_start_fresh_scope(context: Context) -> None:
    assert open_blocks(context), "there is no unit of work to start a fresh one in"
    _start(context, fresh=True)


@when("the tool starts a unit of work in which any save of the same note counts as a repeat")
def when_start_keyed_scope(context: Context) -> None:
    _start(context, key=lambda entry: (entry.action, entry.resource_type, entry.resource_id))


@when("the tool ends the unit of work")
def when_end_scope(context: Context) -> None:
    leave(context, "unit of work")


@when('the tool saves note "{note_id}"')
def when_save(context: Context, note_id: str) -> None:
    _save_note(context.world, note_id)


@when('"{actor}" saves note "{note_id}"')
def when_actor_saves(context: Context, actor: str, note_id: str) -> None:
    _save_note(context.world, note_id, actor=actor)


@when('the tool saves note "{note_id}" as a critical entry')
def when_save_critical(context: Context, note_id: str) -> None:
    _save_note(context.world, note_id, critical=True)


@when('the tool tries to save note "{note_id}"')
def when_try_save(context: Context, note_id: str) -> None:
    world = context.world
    world.attempt(lambda: _save_note(world, note_id))


@then("the saves returned, in order: {outcomes}")
def then_saves_returned(context: Context, outcomes: str) -> None:
    expected = [outcome.strip() for outcome in outcomes.split(",")]
    assert all(outcome in {"an event id", "nothing"} for outcome in expected), expected
    found = ["nothing" if result is None else "an event id" for _, result in context.world.labelled]
    assert found == expected, f"the saves returned {found}, expected {expected}"


@then('the audit database holds the save of note "{note_id}" once')
@then('the audit database holds the save of note "{note_id}" {count:d} times')
def then_saves_stored(context: Context, note_id: str, count: int = 1) -> None:
    rows = context.world.audit_rows()
    saves = [row for row in rows if (row["action"], row["resource_id"]) == ("note.save", note_id)]
    assert len(saves) == count, f"note {note_id} was saved {len(saves)} times, expected {count}"
    # Every stored save is one that record() reported as accepted.
    accepted = set(context.world.accepted)
    assert all(row["event_id"] in accepted for row in saves), "a stored save was never accepted"
