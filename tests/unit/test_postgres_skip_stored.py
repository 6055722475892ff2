"""After a failure whose outcome is unknown, the PostgreSQL batch write leaves out what is stored
already — by value, never by event_id alone: a different entry under a stored event_id is refused
by the server (and set aside by the writer), not skipped."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from audit_engine import AuditEntry, AuditStore
from audit_engine.rows import entry_row
from audit_engine.storage.postgres import append, connect, schema


@pytest.fixture
def conn(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    AuditStore(pg_url, create=True).close()
    connection = connect(pg_url)
    yield connection
    connection.close()


def _row(event_id: str, action: str = "note.save") -> Any:
    return entry_row(AuditEntry(event_id=event_id, action=action, details={"n": 1e16}))


def test_rows_stored_by_a_lost_acknowledgement_are_left_out(
    conn: psycopg.Connection[Any], pg_url: str
) -> None:
    key = schema.table_oid(conn)
    first, second = _row("evt-1"), _row("evt-2")
    append.write_batch(conn, [first], key)

    tail = append.write_batch(conn, [first, second], key, skip_stored=True)

    assert tail[0] == 2
    with AuditStore(pg_url) as store:
        assert [entry.event_id for entry in store.query()] == ["evt-1", "evt-2"]
        assert store.verify().ok


def test_a_different_entry_under_a_stored_event_id_is_refused_not_skipped(
    conn: psycopg.Connection[Any], pg_url: str
) -> None:
    key = schema.table_oid(conn)
    append.write_batch(conn, [_row("evt-1")], key)
    impostor = _row("evt-1", action="note.delete")

    with pytest.raises(psycopg.errors.UniqueViolation):
        append.write_batch(conn, [_row("evt-2"), impostor], key, skip_stored=True)

    with AuditStore(pg_url) as store:  # nothing of that batch was kept
        assert [entry.action for entry in store.query()] == ["note.save"]
