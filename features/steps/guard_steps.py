"""Steps for features/append_only_guard.feature: other tools writing to the audit tables.

A database tool is another program's plain connection (``sqlite3`` on a file, psycopg on a
URL: :func:`trail_backend.connect`), or sqlite-utils on a file, as a Datasette plugin or a
shell one-liner would use it. Whatever it tries runs in one transaction; what the database said
is kept for the Then steps.
"""

from __future__ import annotations

import uuid
from typing import Any

import sqlite_utils
from behave import then, when
from behave.runner import Context

# The columns of a row a tool inserts, as the engine stores them (docs/integrity.md).
_COLUMNS = (
    "id, event_id, timestamp, actor, action, operation, outcome, resource_type, resource_id, "
    "correlation_id, details, critical, prev_hash, hash"
)


def _attempt(context: Context, work: Any) -> None:
    world = context.world
    conn = world.connect(world.database)
    world.error = None
    try:
        with conn:
            work(conn)
    except Exception as exc:  # what the database said, checked by the Then step
        world.error = exc


@when('a database tool runs "{sql}" on the audit database')
def when_tool_runs(context: Context, sql: str) -> None:
    _attempt(context, lambda conn: conn.execute(sql))


@when('a database tool inserts an entry whose details are "{details}" on the audit database')
def when_tool_inserts(context: Context, details: str) -> None:
    def insert(conn: Any) -> None:
        newest = conn.execute(f"SELECT {_COLUMNS} FROM audit_entries ORDER BY id DESC").fetchone()
        row = list(newest)
        # A well-formed row in every other way: next id, linked to the newest, a hex hash.
        row[0], row[1], row[10] = newest[0] + 1, str(uuid.uuid4()), details
        row[12], row[13] = newest[13], "ab" * 32
        marks = ["?"] * len(row)
        marks[11] = "? <> 0"  # the flag as either backend keeps it
        conn.execute(
            f"INSERT INTO audit_entries ({_COLUMNS}) VALUES ({', '.join(marks)})",
            (*row[:11], int(bool(row[11])), *row[12:]),
        )

    _attempt(context, insert)


def _sqlite_utils(context: Context, work: Any) -> None:
    db = sqlite_utils.Database(context.world.database)
    context.world.error = None
    try:
        with db.conn:
            work(db["audit_entries"])
    except Exception as exc:  # what SQLite said, checked by the Then step
        context.world.error = exc
    finally:
        db.close()


@when('someone runs sqlite-utils to update entry {entry:d}\'s actor to "{actor}"')
def when_sqlite_utils_update(context: Context, entry: int, actor: str) -> None:
    _sqlite_utils(context, lambda table: table.update(entry, {"actor": actor}))


@when('someone runs sqlite-utils to insert an entry with operation "{operation}"')
def when_sqlite_utils_insert(context: Context, operation: str) -> None:
    def insert(table: Any) -> None:
        newest = dict(next(table.rows_where(order_by="id desc", limit=1)))
        newest.update(
            id=newest["id"] + 1,
            event_id=str(uuid.uuid4()),
            operation=operation,
            prev_hash=newest["hash"],
            hash="cd" * 32,
        )
        table.insert(newest)

    _sqlite_utils(context, insert)


@then('the database refuses it, saying "{message}"')
def then_refused(context: Context, message: str) -> None:
    error = context.world.error
    assert error is not None, "the database accepted the change"
    assert message in str(error), str(error)


@then("the database refuses the entry")
def then_refused_entry(context: Context) -> None:
    error = context.world.error
    assert error is not None, "the database accepted the malformed entry"
    assert "audit_entries" in str(error) or "json" in str(error).lower(), str(error)


@then("the audit trail still holds {count:d} entries and verifies against the published head")
def then_unchanged(context: Context, count: int) -> None:
    world = context.world
    assert len(world.audit_rows()) == count, world.audit_rows()
    report = world.verify_trail(world.published_head)
    assert report.ok, report
    assert report.rows_checked == count, report
