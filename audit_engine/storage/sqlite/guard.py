"""The append-only guard kept in place: the triggers a tool took away are created again on open.

A tool that rebuilds a table (``sqlite-utils transform``, Datasette's edit-schema) drops its
triggers with the old table, and a ``DROP TRIGGER`` takes one away; nothing else would ever put
them back. :func:`missing` finds that with one ``sqlite_master`` query, and :func:`recreate`
creates the guard again from the very statements the migration step ran
(:data:`.migrations.V5_GUARD_TRIGGERS`); ``schema.keep_guard`` does both when a trail is opened.

**Later steps.** A step that must change rows of a guarded table, or the guard itself, drops the
triggers in its way and creates them again in the same migration transaction, so no other
connection ever sees the tables unguarded::

    for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'audit_guard_%'"
    ).fetchall():
        conn.execute(f'DROP TRIGGER "{name}"')
    ... the step's own UPDATEs, ALTERs or table rebuild ...
    ... CREATE TRIGGER again: the step's own frozen copy of the guard, as it stands then ...

(a table rebuild drops its triggers with the old table anyway). The step recreates them from its
own literal text, never by calling the version 5 step: a released step is never edited, and the
guard of version 5 names the operations and outcomes as they were then. Such a step also makes
:data:`GUARD` the guard it leaves, so that opening a trail expects, and recreates, that one.
"""

from __future__ import annotations

import re
import sqlite3

from audit_engine.storage.sqlite import migrations

_NAMED = re.compile(r'CREATE TRIGGER "(\w+)" BEFORE [A-Z ]+? ON "(\w+)"')


def _named(statement: str) -> tuple[str, str]:
    found = _NAMED.match(statement)
    assert found is not None, statement  # the step's own literal DDL
    return found[1], found[2]


# The guard of the current schema version: trigger name -> (table, statement), in creation order.
GUARD: dict[str, tuple[str, str]] = {
    name: (table, statement)
    for statement in migrations.V5_GUARD_TRIGGERS
    for name, table in [_named(statement)]
}


def _schema(conn: sqlite3.Connection) -> tuple[set[str], set[str]]:
    tables: set[str] = set()
    triggers: set[str] = set()
    for kind, name in conn.execute(
        "SELECT type, name FROM sqlite_master WHERE type IN ('table', 'trigger')"
    ):
        (tables if kind == "table" else triggers).add(name)
    return tables, triggers


def missing(conn: sqlite3.Connection) -> list[str]:
    """The guard's triggers absent from ``conn``'s audit tables, in creation order (a table that
    is gone altogether is not counted: verify reports that)."""
    tables, triggers = _schema(conn)
    return [name for name, (table, _) in GUARD.items() if table in tables and name not in triggers]


def recreate(conn: sqlite3.Connection) -> None:
    """Create the whole guard again in the caller's transaction. What is left of it is dropped
    first: SQLite runs the newest BEFORE trigger of an event first, so the order is the step's
    again (a row refused for two reasons gets the same message as before)."""
    tables, triggers = _schema(conn)
    for name in GUARD.keys() & triggers:
        conn.execute(f'DROP TRIGGER "{name}"')
    if migrations.V5_PURGE_MARKER not in tables:
        conn.execute(migrations.V5_MARKER_TABLE)
    for table, statement in GUARD.values():
        if table in tables:
            conn.execute(statement)
