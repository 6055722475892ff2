"""Steps for a notes tool whose click commands are audited with ``@audit.audited(...)``.

The tool runs its command the way a desktop or CLI tool embeds one: ``main(...,
standalone_mode=False)``, so an error reaches the tool itself (which shows it to the user)
instead of being turned into an exit status.
"""

from typing import Any

import click
from behave import given, then, when
from behave.runner import Context
from trail_backend import read_rows

_COLUMNS = ("action", "actor", "resource_id", "outcome", "details")


def _notes_tool(context: Context, command_name: str, action: str) -> click.Command:
    world = context.world
    audit = world.open_service()

    @click.command(command_name)
    @click.argument("note_id")
    @audit.audited(action, operation="read", resource_type="note", resource_id_arg="note_id")
    def export(note_id: str) -> None:
        """Export one note as Markdown."""
        if world.export_folder_read_only:
            raise PermissionError(f"cannot write export folder/{note_id}.md")
        if note_id in world.cancel_on:
            raise click.Abort()
        world.exported.append(note_id)

    return export


@given('the notes tool\'s "{command_name}" command is audited as "{action}"')
def given_audited_command(context: Context, command_name: str, action: str) -> None:
    world = context.world
    world.settings_values["level"] = "all"  # an export is a read: audited at level "all"
    world.export_folder_read_only = False
    world.cancel_on = set()
    world.exported = []
    world.seen_errors = []
    world.command = _notes_tool(context, command_name, action)


@given("the export folder cannot be written to")
def given_read_only_folder(context: Context) -> None:
    context.world.export_folder_read_only = True


def _run_export(context: Context, user: str, note: str) -> None:
    world = context.world
    with world.audit.context(actor=user):
        try:
            world.command.main([note], standalone_mode=False)
        except (Exception, click.Abort) as exc:  # what the tool would show its user
            world.seen_errors.append(exc)


@when('"{user}" exports note "{note}"')
def when_export(context: Context, user: str, note: str) -> None:
    _run_export(context, user, note)


@when('"{user}" starts exporting note "{note}" and cancels it')
def when_export_cancelled(context: Context, user: str, note: str) -> None:
    context.world.cancel_on.add(note)
    _run_export(context, user, note)


@then("the export finished without an error")
def then_no_error(context: Context) -> None:
    world = context.world
    assert world.seen_errors == [], f"the tool saw {world.seen_errors!r}"
    assert world.exported, "nothing was exported"


@then('the user sees the export\'s own error "{message}"')
def then_original_error(context: Context, message: str) -> None:
    (error,) = context.world.seen_errors
    assert type(error) is PermissionError, f"the tool saw {error!r}"
    assert str(error) == message, f"the tool saw {error!r}"
    # Raised by the command itself: the audit did not wrap it in an error of its own.
    assert error.__traceback__ is not None
    innermost = error.__traceback__
    while innermost.tb_next is not None:
        innermost = innermost.tb_next
    assert innermost.tb_frame.f_code.co_name == "export"


def _stored(context: Context) -> list[dict[str, Any]]:
    return read_rows(context.world.database, _COLUMNS)


@then("the stored command entries are, in order:")
def then_stored_entries(context: Context) -> None:
    found = [
        (r["action"], r["actor"], r["resource_id"], r["outcome"], r["details"].get("error", ""))
        for r in _stored(context)
    ]
    expected = [
        (row["action"], row["actor"], row["note"], row["outcome"], row["error"])
        for row in context.table
    ]
    assert found == expected, f"stored {found}, expected {expected}"


@then("no entry holds the text of an error message")
def then_no_messages(context: Context) -> None:
    for row in _stored(context):
        assert set(row["details"]) <= {"error"}, f"details hold more than the type: {row}"
