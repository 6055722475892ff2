"""Steps for writing the audit entry through the tool's own connection and transaction."""

import sqlite3

from behave import given, then, when
from behave.runner import Context

from audit_engine import AuditSettings

BOUND = "an audit service bound to that connection"
PER_ENTRY = "that connection passed with each entry"


def _note_body(context: Context, note_id: int) -> str:
    conn = sqlite3.connect(context.world.notes_path, timeout=10)
    try:
        row = conn.execute("SELECT body FROM notes WHERE id = ?", (note_id,)).fetchone()
    finally:
        conn.close()
    assert row is not None, f"note {note_id} is gone"
    return str(row[0])


@given('the tool keeps its notes in a SQLite database where note {note_id:d} reads "{body}"')
def given_notes(context: Context, note_id: int, body: str) -> None:
    world = context.world
    world.notes_path = world.root / "notes.db"
    conn = world.connect(world.notes_path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    conn.execute("INSERT INTO notes (id, body) VALUES (?, ?)", (note_id, body))
    conn.commit()
    world.notes = conn


@given("the tool audits through {how}")
def given_audit_through(context: Context, how: str) -> None:
    world = context.world
    assert how in (BOUND, PER_ENTRY), f"unknown way to audit: {how}"
    world.per_entry_connection = how == PER_ENTRY
    if world.per_entry_connection:
        # The service has its own audit database; each entry names the tool's connection.
        world.open_service()
    else:
        world.open_service(
            AuditSettings(database=world.root / "unused-audit.db"), connection=world.notes
        )


@when('the tool saves note {note_id:d} as "{body}" and records "{action}" in one transaction')
def when_save_and_record(context: Context, note_id: int, body: str, action: str) -> None:
    world = context.world
    conn = world.notes
    conn.execute("UPDATE notes SET body = ? WHERE id = ?", (body, note_id))
    extra = {"connection": conn} if world.per_entry_connection else {}
    world.keep(
        world.audit.record(
            action=action,
            actor="alice",
            operation="update",
            resource_type="note",
            resource_id=str(note_id),
            **extra,
        )
    )
    assert conn.in_transaction, "the tool's transaction was committed behind its back"


@when("the tool commits the transaction")
def when_commit(context: Context) -> None:
    context.world.notes.commit()


@when("the tool rolls the transaction back")
def when_rollback(context: Context) -> None:
    context.world.notes.rollback()


@then('another program still sees note {note_id:d} as "{body}" and no audit entry')
def then_not_yet_visible(context: Context, note_id: int, body: str) -> None:
    assert _note_body(context, note_id) == body
    assert context.world.audit_rows(context.world.notes_path) == []


@then('another program sees note {note_id:d} as "{body}"')
def then_note_body(context: Context, note_id: int, body: str) -> None:
    found = _note_body(context, note_id)
    assert found == body, f"note {note_id} reads {found!r}, expected {body!r}"


@then('the notes database holds one audit entry "{action}" for note {note_id:d}')
def then_one_entry(context: Context, action: str, note_id: int) -> None:
    rows = context.world.audit_rows(context.world.notes_path)
    assert len(rows) == 1, f"expected one audit entry, found {rows}"
    assert (rows[0]["action"], rows[0]["resource_id"]) == (action, str(note_id)), rows[0]
    assert rows[0]["event_id"] == context.world.accepted[-1]


@then("the notes database holds no audit entries")
def then_no_notes_entries(context: Context) -> None:
    rows = context.world.audit_rows(context.world.notes_path)
    assert rows == [], f"expected no audit entries, found {rows}"
    assert context.world.accepted, "the tool recorded nothing to roll back"
