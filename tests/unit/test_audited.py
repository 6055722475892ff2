"""@audit.audited: one entry per call, how the call ended, the exception untouched, click commands.

``AuditService.audited`` delegates to ``audit_engine.pipeline.audited.audited``.
"""

from __future__ import annotations

import inspect
import logging
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import click
import pytest
from click.testing import CliRunner

from audit_engine import AuditEntry, AuditService, AuditServiceClosed
from audit_engine.pipeline.audited import audited


class ExportError(Exception):
    pass


def test_a_call_that_returns_records_one_success(
    service: AuditService, entries: Callable[[], list[AuditEntry]]
) -> None:
    @service.audited("note.export", resource_type="note", operation="create", actor="alice")
    def export_note(note_id: int) -> str:
        return f"note {note_id}"

    assert export_note(7) == "note 7"
    (entry,) = entries()
    assert (entry.action, entry.outcome, entry.resource_type, entry.actor) == (
        "note.export",
        "success",
        "note",
        "alice",
    )
    assert entry.operation == "create"
    assert entry.details == {}


def test_a_call_that_raises_records_a_failure_with_the_type_only_and_reraises_it(
    service: AuditService, entries: Callable[[], list[AuditEntry]]
) -> None:
    raised = ExportError("token=s3cret in /home/alice/notes")

    @service.audited("note.export", details={"format": "pdf"})
    def export_note() -> None:
        raise raised

    with pytest.raises(ExportError) as caught:
        export_note()
    assert caught.value is raised
    # The traceback still ends in the function's own raise.
    innermost = traceback.extract_tb(caught.value.__traceback__)[-1]
    assert (innermost.name, innermost.line) == ("export_note", "raise raised")
    (entry,) = entries()
    assert entry.outcome == "failure"
    assert entry.details == {"format": "pdf", "error": "ExportError"}
    assert "s3cret" not in str(entry.model_dump())


def test_wraps_keeps_the_name_docstring_and_signature(service: AuditService) -> None:
    def export_note(note_id: int, *, fmt: str = "md") -> str:
        """Export one note."""
        return fmt

    wrapped = service.audited("note.export")(export_note)
    assert wrapped.__name__ == "export_note"
    assert wrapped.__doc__ == "Export one note."
    assert inspect.signature(wrapped) == inspect.signature(export_note)


def test_resource_id_and_details_are_taken_from_the_call_arguments(
    service: AuditService, entries: Callable[[], list[AuditEntry]]
) -> None:
    @service.audited(
        "note.export",
        resource_type="note",
        resource_id_arg="note_id",
        details_args="fmt",
    )
    def export_note(note_id: int, fmt: str = "md", password: str = "") -> None:
        pass

    export_note(41)
    export_note(fmt="pdf", note_id=42, password="hunter2")
    first, second = entries()
    assert (first.resource_id, first.details) == ("41", {"fmt": "md"})  # a default counts
    assert (second.resource_id, second.details) == ("42", {"fmt": "pdf"})


def test_a_call_that_does_not_bind_is_the_function_s_own_type_error(
    service: AuditService, entries: Callable[[], list[AuditEntry]]
) -> None:
    @service.audited("note.export", resource_id_arg="note_id")
    def export_note(note_id: int) -> None:
        pass

    with pytest.raises(TypeError, match="note_id"):
        export_note()  # type: ignore[call-arg]
    (entry,) = entries()
    assert (entry.outcome, entry.resource_id, entry.details) == (
        "failure",
        None,
        {"error": "TypeError"},
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"resource_id_arg": "noteid"},
            "audited(resource_id_arg='noteid'): "
            "test_bad_decorations_fail_when_applied.<locals>.export_note() has no parameter "
            "'noteid' (its parameters: note_id, args, options)",
        ),
        (
            {"details_args": ["args"]},
            "audited(details_args='args'): *args of "
            "test_bad_decorations_fail_when_applied.<locals>.export_note() is a variadic "
            "parameter, which cannot be used: name one of its named parameters (note_id)",
        ),
        (
            {"resource_id_arg": "args"},
            "audited(resource_id_arg='args'): *args of "
            "test_bad_decorations_fail_when_applied.<locals>.export_note() is a variadic "
            "parameter, which cannot be used: name one of its named parameters (note_id)",
        ),
        (
            {"resource_id_arg": "options"},
            "audited(resource_id_arg='options'): **options of "
            "test_bad_decorations_fail_when_applied.<locals>.export_note() is a variadic "
            "parameter, which cannot be used: name one of its named parameters (note_id)",
        ),
    ],
)
def test_bad_decorations_fail_when_applied(
    service: AuditService, options: dict[str, Any], message: str
) -> None:
    def export_note(note_id: int, *args: Any, **options: Any) -> None:
        pass

    decorate = service.audited("note.export", **options)
    with pytest.raises(TypeError) as caught:
        decorate(export_note)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"outcome": "success"}, "audited() cannot fix outcome: it is set for each call"),
        ({"timestamp": None}, "audited() cannot fix timestamp"),
        ({"resource": "note"}, "audited() got unknown field(s) resource; it takes actor, "),
        (
            {"resource_id": "1", "resource_id_arg": "note_id"},
            "audited() takes resource_id or resource_id_arg, not both",
        ),
    ],
)
def test_fields_a_decoration_cannot_fix_are_refused(
    service: AuditService, fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(TypeError) as caught:
        service.audited("note.export", **fields)
    assert str(caught.value).startswith(message)


def test_field_values_are_checked_as_record_checks_them(service: AuditService) -> None:
    with pytest.raises(ValueError, match="operation"):
        service.audited("note.export", operation="export")
    with pytest.raises(ValueError, match="action"):
        service.audited("  ")


def test_coroutine_and_generator_functions_are_refused(service: AuditService) -> None:
    async def export_async() -> None:
        pass

    def export_lines() -> Iterator[str]:
        yield "line"

    decorate = service.audited("note.export")
    with pytest.raises(TypeError, match=r"cannot wrap the coroutine function .*export_async"):
        decorate(export_async)
    with pytest.raises(TypeError, match=r"cannot wrap the generator function .*export_lines"):
        decorate(export_lines)


@pytest.mark.parametrize(
    ("exc", "outcome", "details"),
    [
        (SystemExit(0), "success", {}),
        (SystemExit(None), "success", {}),
        (SystemExit(2), "failure", {"error": "SystemExit", "exit_code": 2}),
        (SystemExit("cannot export"), "failure", {"error": "SystemExit", "exit_code": 1}),
        # Python exits with 1 and 0: the stored exit_code is that int, not a JSON boolean.
        (SystemExit(True), "failure", {"error": "SystemExit", "exit_code": 1}),
        (SystemExit(False), "success", {}),
        (KeyboardInterrupt(), "failure", {"error": "KeyboardInterrupt"}),
    ],
    ids=[
        "exit-0",
        "exit-none",
        "exit-2",
        "exit-message",
        "exit-true",
        "exit-false",
        "keyboard-interrupt",
    ],
)
def test_exits_and_interrupts(
    service: AuditService,
    entries: Callable[[], list[AuditEntry]],
    exc: BaseException,
    outcome: str,
    details: dict[str, Any],
) -> None:
    @service.audited("note.export")
    def export_note() -> None:
        raise exc

    with pytest.raises(type(exc)) as caught:
        export_note()
    assert caught.value is exc
    (entry,) = entries()
    assert (entry.outcome, entry.details) == (outcome, details)
    # True == 1: the types tell an exit_code of 1 from one stored as true.
    assert {k: type(v) for k, v in entry.details.items()} == {
        k: type(v) for k, v in details.items()
    }


def test_a_failed_recording_after_a_failure_is_logged_and_the_original_propagates(
    service: AuditService, caplog: pytest.LogCaptureFixture
) -> None:
    @service.audited("note.export")
    def export_note() -> None:
        raise ExportError("disk full")

    service.close()
    with (
        caplog.at_level(logging.ERROR, logger="audit_engine.audited"),
        pytest.raises(ExportError, match="disk full"),
    ):
        export_note()
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert record.getMessage() == (
        "could not record the failure of 'note.export' (ExportError); "
        "the original exception propagates"
    )
    assert record.exc_info is not None
    assert record.exc_info[0] is AuditServiceClosed


def test_a_failed_recording_after_success_propagates(service: AuditService) -> None:
    ran = []

    @service.audited("note.export")
    def export_note() -> None:
        ran.append(True)

    service.close()
    with pytest.raises(AuditServiceClosed):
        export_note()
    assert ran == [True]  # the function ran; only its audit failed, loudly


def test_the_service_context_applies_and_decoration_fields_win(
    service: AuditService, entries: Callable[[], list[AuditEntry]]
) -> None:
    @service.audited("note.export", resource_type="note")
    def export_note() -> None:
        pass

    with service.context(actor="alice", resource_type="notebook", request="r-1"):
        export_note()
    (entry,) = entries()
    assert (entry.actor, entry.resource_type) == ("alice", "note")
    assert entry.details == {"request": "r-1"}


# -- click commands ----------------------------------------------------------------------------


def _export_command(service: AuditService) -> click.Command:
    @click.command()
    @click.argument("note_id")
    @click.option("--fail", type=click.Choice(["none", "error", "abort", "interrupt", "exit2"]))
    @click.option("--exit0", is_flag=True)
    @click.pass_context
    @service.audited("note.export", resource_type="note", resource_id_arg="note_id")
    def export(ctx: click.Context, note_id: str, fail: str | None, exit0: bool) -> None:
        """Export a note."""
        if exit0:
            ctx.exit(0)
        if fail == "error":
            raise ExportError("cannot write")
        if fail == "abort":
            raise click.Abort()
        if fail == "interrupt":
            raise KeyboardInterrupt
        if fail == "exit2":
            ctx.exit(2)
        click.echo(f"exported {note_id}")

    return export


@pytest.mark.parametrize(
    ("args", "exit_code", "outcome", "details"),
    [
        (["n1"], 0, "success", {}),
        (["n1", "--exit0"], 0, "success", {}),
        (["n1", "--fail", "error"], 1, "failure", {"error": "ExportError"}),
        (["n1", "--fail", "abort"], 1, "failure", {"error": "Abort"}),
        (["n1", "--fail", "interrupt"], 1, "failure", {"error": "KeyboardInterrupt"}),
        (["n1", "--fail", "exit2"], 2, "failure", {"error": "Exit", "exit_code": 2}),
    ],
    ids=["success", "ctx-exit-0", "error", "abort", "interrupt", "ctx-exit-2"],
)
def test_a_click_command_under_cli_runner(
    service: AuditService,
    entries: Callable[[], list[AuditEntry]],
    args: list[str],
    exit_code: int,
    outcome: str,
    details: dict[str, Any],
) -> None:
    result = CliRunner().invoke(_export_command(service), args)
    assert result.exit_code == exit_code, result.output
    (entry,) = entries()
    assert (entry.outcome, entry.resource_id, entry.details) == (outcome, "n1", details)


def test_a_click_command_given_directly_has_its_callback_wrapped(
    service: AuditService, entries: Callable[[], list[AuditEntry]]
) -> None:
    @click.command()
    @click.argument("note_id")
    def export(note_id: str) -> None:
        """Export a note."""
        raise ExportError(note_id)

    command = service.audited("note.export", resource_id_arg="note_id")(export)
    assert command is export
    assert command.callback is not None
    assert command.callback.__name__ == "export"
    with pytest.raises(ExportError):
        command.main(["n2"], standalone_mode=False)
    (entry,) = entries()
    assert (entry.outcome, entry.resource_id, entry.details) == (
        "failure",
        "n2",
        {"error": "ExportError"},
    )
    # A bad parameter name is found in the command's callback, when the decorator is applied.
    with pytest.raises(TypeError, match="has no parameter 'id'"):
        service.audited("note.export", resource_id_arg="id")(export)


def test_the_method_is_the_module_s_function(
    service: AuditService, entries: Callable[[], list[AuditEntry]]
) -> None:
    def export_note(note_id: str) -> None:
        pass

    audited(service, "note.export", resource_id_arg="note_id")(export_note)("n3")
    (entry,) = entries()
    assert (entry.action, entry.resource_id) == ("note.export", "n3")
    with pytest.raises(TypeError, match="has no parameter 'id'"):
        audited(service, "note.export", resource_id_arg="id")(export_note)
