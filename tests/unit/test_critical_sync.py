"""A critical entry with critical_sync returns only once committed; else it raises (issue 11, 1)."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from audit_engine import AuditService, AuditWriteError
from audit_engine.storage import deadletter
from audit_engine.storage.sqlite import append

MakeService = Callable[..., AuditService]
UNIQUE_FAILED = "UNIQUE constraint failed: audit_entries.event_id"


def _dead_letter_ids(db_path: Path) -> list[str]:
    path = deadletter.path_for(db_path)
    return [e.event_id for _, e, _ in deadletter.read(path) if e is not None]


def test_a_critical_entry_with_a_duplicate_event_id_raises_and_is_dead_lettered(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service()
    service.record(event_id="evt-1", action="doc.read")
    assert service.flush(10)

    with pytest.raises(AuditWriteError) as raised:
        service.record(event_id="evt-1", action="doc.read", actor="root", critical=True)

    assert str(raised.value) == (
        f"critical entry evt-1 was not committed: IntegrityError: {UNIQUE_FAILED}; it is in the "
        f"dead-letter file {deadletter.path_for(db_path)}"
    )
    assert _dead_letter_ids(db_path) == ["evt-1"]
    assert service.stats().dead_lettered == 1
    assert service.writer is not None
    assert service.writer._aside.watching == 0  # nothing left behind


def test_a_critical_entry_the_database_refuses_raises_with_the_reason(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service()
    assert service.flush(10)
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        conn.execute(
            "CREATE TRIGGER no_root BEFORE INSERT ON audit_entries WHEN NEW.actor = 'root' "
            "BEGIN SELECT RAISE(ABORT, 'root may not be audited here'); END"
        )
        conn.commit()

    with pytest.raises(AuditWriteError, match=r": IntegrityError: root may not be audited here;"):
        service.record(event_id="evt-2", action="doc.read", actor="root", critical=True)
    ok = service.record(action="doc.read", actor="alice", critical=True)

    assert _dead_letter_ids(db_path) == ["evt-2"]
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("SELECT event_id FROM audit_entries").fetchall() == [(ok,)]


def test_a_critical_entry_that_only_reached_the_log_raises_and_close_is_false(
    make_service: MakeService, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    deadletter.path_for(db_path).mkdir()  # the dead-letter file cannot be written
    service = make_service()
    service.record(event_id="evt-3", action="doc.read")
    with (
        caplog.at_level(logging.CRITICAL, logger="audit_engine.writer"),
        pytest.raises(AuditWriteError) as raised,
    ):
        service.record(event_id="evt-3", action="doc.read", critical=True)

    message = str(raised.value)
    assert message.startswith(
        f"critical entry evt-3 was not committed: IntegrityError: {UNIQUE_FAILED}; the "
        "dead-letter file could not be written either ([Errno 21] Is a directory: "
    )
    assert message.endswith("): it is only in the log, at CRITICAL")
    assert len([m for m in caplog.messages if m.startswith("audit entry LOST to disk")]) == 1
    stats = service.stats()
    assert (stats.dead_lettered, stats.logged_only) == (0, 1)
    assert service.close(10) is False


def test_a_committed_critical_entry_returns_its_id(make_service: MakeService) -> None:
    service = make_service(buffer_flush_interval=3600)
    event_id = service.record(action="doc.read", critical=True)
    assert event_id is not None
    assert service.stats().written == 1
    assert service.writer is not None
    assert service.writer._aside.watching == 0


def test_a_critical_entry_is_not_blamed_for_another_entry_of_its_batch(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service(buffer_flush_interval=3600)
    service.record(event_id="evt-4", action="doc.read")
    assert service.flush(10)
    service.record(event_id="evt-4", action="doc.read")  # queued: fails in the next batch

    event_id = service.record(action="doc.read", actor="root", critical=True)

    assert event_id is not None
    assert _dead_letter_ids(db_path) == ["evt-4"]
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        stored = [row[0] for row in conn.execute("SELECT event_id FROM audit_entries ORDER BY id")]
    assert stored == ["evt-4", event_id]


def test_a_critical_entry_on_a_read_only_database_raises_with_the_reason(
    make_service: MakeService, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    # Tests run as root, for whom a 0444 file is still writable: the refusal SQLite gives for a
    # read-only file, raised where the writer commits.
    def refuse(*args: object) -> object:
        exc = sqlite3.OperationalError("attempt to write a readonly database")
        exc.sqlite_errorcode = sqlite3.SQLITE_READONLY  # type: ignore[attr-defined]
        raise exc

    service = make_service()
    assert service.flush(10)
    monkeypatch.setattr(append, "commit_batch", refuse)

    with pytest.raises(AuditWriteError) as raised:
        service.record(event_id="evt-5", action="doc.read", critical=True)

    assert str(raised.value) == (
        "critical entry evt-5 was not committed: OperationalError: attempt to write a readonly "
        f"database; it is in the dead-letter file {deadletter.path_for(db_path)}"
    )
    assert _dead_letter_ids(db_path) == ["evt-5"]
