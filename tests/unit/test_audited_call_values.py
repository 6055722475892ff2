"""@audited: values taken from the call (resource_id_arg, details_args) and what it can wrap.

A decorator that changes the call (click.pass_context, one injecting a session) on either side,
values checked before the function runs, and targets refused when decorated.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from audit_engine import AuditEntry, AuditService


def with_session(func: Callable[..., Any]) -> Callable[..., Any]:
    """An app's decorator that supplies the first parameter (a database session)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func("SESSION", *args, **kwargs)

    return wrapper


def _export_command(service: AuditService, *, audited_above: bool) -> click.Command:
    ran: list[str] = []

    def export_note(ctx: click.Context, note_id: str, target: str) -> None:
        ran.append(ctx.info_name or "")
        click.echo(f"exported {note_id}")

    audit = service.audited(
        "note.export", resource_id_arg="note_id", details_args=["target"], resource_type="note"
    )
    if audited_above:
        callback = audit(click.pass_context(export_note))
    else:
        callback = click.pass_context(audit(export_note))
    command = click.argument("note_id")(click.option("--to", "target", default="out")(callback))
    return click.command("export")(command)


@pytest.mark.parametrize("audited_above", [False, True], ids=["under", "above"])
def test_click_pass_context_on_either_side_keeps_the_values(
    service: AuditService, entries: Callable[[], list[AuditEntry]], audited_above: bool
) -> None:
    result = CliRunner().invoke(
        _export_command(service, audited_above=audited_above), ["n-42", "--to", "backup"]
    )
    assert result.exit_code == 0, result.output
    (entry,) = entries()
    assert (entry.resource_id, entry.details) == ("n-42", {"target": "backup"})


def test_above_an_injecting_decorator_keywords_are_taken(
    service: AuditService, entries: Callable[[], list[AuditEntry]]
) -> None:
    @service.audited("note.delete", resource_id_arg="note_id")
    @with_session
    def delete_note(session: str, note_id: str) -> str:
        return f"{session}:{note_id}"

    assert delete_note(note_id="n-7") == "SESSION:n-7"
    (entry,) = entries()
    assert entry.resource_id == "n-7"


def test_above_an_injecting_decorator_a_value_found_nowhere_raises_before_the_call(
    service: AuditService, entries: Callable[[], list[AuditEntry]]
) -> None:
    ran: list[str] = []

    @service.audited("note.delete", resource_id_arg="note_id", details_args=["note_id"])
    @with_session
    def delete_note(session: str, note_id: str) -> None:
        ran.append(note_id)

    with pytest.raises(TypeError) as caught:
        delete_note("n-7")
    message = str(caught.value)
    assert "delete_note()" in message
    assert "note_id=" in message
    assert "put @audited under it" in message
    assert ran == []  # not run: the entry would have lacked its resource id
    assert entries() == []


def test_a_plain_function_called_wrongly_is_still_its_own_type_error(
    service: AuditService, entries: Callable[[], list[AuditEntry]]
) -> None:
    # Not a wrapper: the call that does not bind raises Python's own TypeError, recorded.
    @service.audited("note.delete", resource_id_arg="note_id")
    def delete_note(note_id: str) -> None:
        pass

    with pytest.raises(TypeError, match="missing 1 required positional argument"):
        delete_note()
    (entry,) = entries()
    assert (entry.outcome, entry.resource_id, entry.details) == (
        "failure",
        None,
        {"error": "TypeError"},
    )


@pytest.mark.parametrize("kind", [classmethod, staticmethod])
def test_a_classmethod_or_staticmethod_object_is_refused_naming_the_order(
    service: AuditService, kind: type
) -> None:
    with pytest.raises(TypeError, match=rf"put @audited under @{kind.__name__}"):
        service.audited("k.call")(kind(lambda *args: None))


def test_under_classmethod_it_works(
    service: AuditService, entries: Callable[[], list[AuditEntry]]
) -> None:
    class Notes:
        @classmethod
        @service.audited("notes.count", resource_id_arg="folder")
        def count(cls, folder: str) -> int:
            return 3

    assert Notes.count("inbox") == 3
    (entry,) = entries()
    assert entry.resource_id == "inbox"


@pytest.mark.parametrize("target", [42, "export_note", None])
def test_a_non_callable_is_refused(service: AuditService, target: object) -> None:
    with pytest.raises(TypeError, match="decorates a function or a click command"):
        service.audited("note.export")(target)  # type: ignore[type-var]


@pytest.mark.parametrize(
    "value",
    [1.5, True, Path("notes/n-1"), "x" * 100_000, b"n-1"],
    ids=["float", "bool", "path", "too-long", "bytes"],
)
def test_a_resource_id_the_entry_cannot_hold_raises_before_the_function_runs(
    service: AuditService, entries: Callable[[], list[AuditEntry]], value: object
) -> None:
    ran: list[object] = []

    @service.audited("note.touch", resource_id_arg="note")
    def touch(note: object) -> str:
        ran.append(note)
        return "result"

    with pytest.raises((TypeError, ValueError), match=r"touch\(\).*'note'|'note'.*touch\(\)"):
        touch(value)
    assert ran == []
    assert entries() == []


def test_details_args_that_cannot_be_stored_raise_before_the_function_runs(
    service: AuditService, entries: Callable[[], list[AuditEntry]]
) -> None:
    ran: list[object] = []

    @service.audited("note.touch", details_args=["options"])
    def touch(options: object) -> None:
        ran.append(options)

    with pytest.raises(ValueError, match=r"touch\(\) was not run: (?s:.*)details\.options"):
        touch(object())
    assert ran == []
    assert entries() == []


def test_taken_values_are_stored_as_record_would_store_them(
    service: AuditService, entries: Callable[[], list[AuditEntry]]
) -> None:
    @service.audited("note.touch", resource_id_arg="note", details_args=["when", "where"])
    def touch(note: int, when: date, where: Path) -> None:
        pass

    touch(12, date(2024, 5, 1), Path("notes/a"))
    (entry,) = entries()
    assert (entry.resource_id, entry.details) == (
        "12",
        {"when": "2024-05-01", "where": "notes/a"},
    )


# -- the whole entry, checked before the run ---------------------------------------------------


def test_a_bad_details_args_value_is_named_by_its_parameter(
    service: AuditService, entries: Callable[[], list[AuditEntry]]
) -> None:
    ran: list[object] = []

    @service.audited("note.save", resource_id_arg="note_id", details_args=["meta"])
    def save(note_id: str, meta: object) -> None:
        ran.append(meta)

    with pytest.raises(ValueError, match=r"parameter 'meta' \(details_args\)") as caught:
        save("n-1", meta=object())
    first_line = str(caught.value).splitlines()[0]
    assert first_line.startswith(
        "audited('note.save'): the value of parameter 'meta' (details_args) of "
        "test_a_bad_details_args_value_is_named_by_its_parameter.<locals>.save() cannot be "
        "recorded in details, so "
    )
    assert "resource_id" not in first_line
    assert "details.meta" in str(caught.value)
    assert ran == []
    assert entries() == []


def test_a_bad_resource_id_value_is_named_by_its_parameter(service: AuditService) -> None:
    @service.audited("note.save", resource_id_arg="note_id", details_args=["meta"])
    def save(note_id: str, meta: object) -> None:
        pass

    with pytest.raises(ValueError, match=r"parameter 'note_id' \(resource_id_arg\)") as caught:
        save("x" * 2000, meta={})
    assert (
        str(caught.value)
        .splitlines()[0]
        .startswith("audited('note.save'): the value of parameter 'note_id' (resource_id_arg) of ")
    )
    assert "the entry's resource_id, so " in str(caught.value)


def test_taken_values_too_large_with_the_context_s_details_are_refused_before_the_run(
    service: AuditService, entries: Callable[[], list[AuditEntry]]
) -> None:
    # Each part fits the service's max_details_bytes (64 KiB) alone; record() would merge them.
    ran: list[str] = []

    @service.audited("note.import", details_args=["body"], details={"source": "upload"})
    def import_note(body: str) -> str:
        ran.append(body)
        return "imported"

    with (
        service.context(request_headers="h" * 10_000),
        pytest.raises(ValueError, match="merged from") as caught,
    ):
        import_note("b" * 60_000)
    assert (
        str(caught.value)
        .splitlines()[0]
        .startswith(
            "audited('note.import'): the entry's details, merged from the context()'s details and "
            "the decorator's details and the values of 'body', cannot be recorded, so "
        )
    )
    assert "more than max_details_bytes=" in str(caught.value)
    assert ran == []
    assert entries() == []
    # Outside the block the same call fits: nothing lost, nothing left over from the block.
    assert import_note("b" * 60_000) == "imported"
    (entry,) = entries()
    assert entry.details == {"source": "upload", "body": "b" * 60_000}


def test_the_decorator_s_details_too_large_with_the_context_s_are_refused_before_the_run(
    service: AuditService, entries: Callable[[], list[AuditEntry]]
) -> None:
    ran: list[bool] = []

    @service.audited("note.import", details={"template": "t" * 40_000})
    def import_note() -> str:
        ran.append(True)
        return "imported"

    with (
        service.context(request_headers="h" * 40_000),
        pytest.raises(ValueError, match="merged from") as caught,
    ):
        import_note()
    assert "merged from the context()'s details and the decorator's details, cannot" in str(
        caught.value
    )
    assert ran == []
    assert entries() == []


def test_a_taken_value_replaces_the_context_s_value_under_its_name_as_record_merges(
    service: AuditService, entries: Callable[[], list[AuditEntry]]
) -> None:
    @service.audited("note.import", details_args=["body"])
    def import_note(body: str) -> str:
        return "imported"

    # The context's large "body" is replaced by the entry's own: the merged entry fits.
    with service.context(body="c" * 60_000, request="r" * 4_000):
        assert import_note("b" * 60_000) == "imported"
    (entry,) = entries()
    assert entry.details == {"body": "b" * 60_000, "request": "r" * 4_000}


def test_the_limit_checked_before_the_run_is_the_service_s(
    make_service: Callable[..., AuditService],
) -> None:
    service = make_service(async_writes=False, max_details_bytes=200_000)

    @service.audited("note.import", details_args=["body"])
    def import_note(body: str) -> str:
        return "imported"

    with service.context(request_headers="h" * 100_000):
        assert import_note("b" * 90_000) == "imported"
        with pytest.raises(ValueError, match="more than max_details_bytes=200000"):
            import_note("b" * 110_000)
