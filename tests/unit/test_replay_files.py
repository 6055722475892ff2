"""Which files a replay touches, and how the dead-letter files are opened (review of issue 11:
D6, D13).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
from pathlib import Path

import pytest
from support import dead_letter_line, rows_of
from tamper import unguarded

from audit_engine import AuditEntry
from audit_engine.errors import AuditStoreError
from audit_engine.storage import deadletter
from audit_engine.storage import sqlite as store
from audit_engine.storage.replay import replay


def _snapshot(path: Path) -> tuple[bytes, int, int, int]:
    info = path.stat()
    return path.read_bytes(), info.st_ino, info.st_mode, info.st_mtime_ns


# -- D6: the database's own files, and files that are not dead-letter files ------------------------


@pytest.mark.parametrize("suffix", ["-wal", "-shm", "-journal"])
def test_replay_refuses_the_databases_own_files(
    db_path: Path, conn: sqlite3.Connection, suffix: str
) -> None:
    own = Path(f"{db_path}{suffix}")
    if not own.exists():
        # Even one that looks like dead letters.
        own.write_bytes(dead_letter_line(AuditEntry(action="a")))
    before = _snapshot(own)

    with pytest.raises(AuditStoreError) as raised:
        replay(own, conn)

    assert str(raised.value) == (
        f"{own} belongs to the audit database {db_path}, it is not a dead-letter file; "
        "nothing was changed"
    )
    assert _snapshot(own) == before
    assert not Path(f"{own}.lock").exists()


def test_replay_refuses_a_link_to_the_database(
    db_path: Path, conn: sqlite3.Connection, tmp_path: Path
) -> None:
    link = tmp_path / "other.jsonl"
    os.link(db_path, link)

    with pytest.raises(AuditStoreError, match=r"is an SQLite database, not a dead-letter file$"):
        replay(link, conn)


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\x01\x02\x03binary\xff\xfe\n",
        b"root:x:0:0:root:/root:/bin/bash\n" + dead_letter_line(AuditEntry(action="a")),
        b"\xef\xbb\xbf" + dead_letter_line(AuditEntry(action="a")),
        b"\n\n[1]\n",
    ],
)
def test_replay_refuses_a_file_that_does_not_start_with_a_dead_letter_line(
    conn: sqlite3.Connection, tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    path.chmod(0o644)
    before = _snapshot(path)

    with pytest.raises(AuditStoreError) as raised:
        replay(path, conn)

    assert str(raised.value) == (
        f'{path} is not a dead-letter file (its first line is not a {{"entry": ...}} object); '
        "nothing was changed"
    )
    assert _snapshot(path) == before
    assert conn.execute("SELECT count(*) FROM audit_entries").fetchone() == (0,)


def test_replay_refuses_a_fifo_without_waiting_for_a_writer(
    conn: sqlite3.Connection, tmp_path: Path
) -> None:
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)

    with pytest.raises(AuditStoreError, match=r"pipe\.jsonl is not a regular file; nothing was"):
        replay(fifo, conn)


def test_replay_refuses_a_symbolic_link(
    dl_path: Path, conn: sqlite3.Connection, tmp_path: Path
) -> None:
    target = tmp_path / "elsewhere.jsonl"
    target.write_bytes(dead_letter_line(AuditEntry(action="a")))
    dl_path.symlink_to(target)

    with pytest.raises(AuditStoreError) as raised:
        replay(dl_path, conn)

    assert str(raised.value) == f"{dl_path} is a symbolic link; nothing was changed"
    assert dl_path.is_symlink()
    assert conn.execute("SELECT count(*) FROM audit_entries").fetchone() == (0,)


def test_a_file_from_which_nothing_was_replayed_is_not_rewritten(
    dl_path: Path, conn: sqlite3.Connection
) -> None:
    conn.execute(
        "CREATE TRIGGER no BEFORE INSERT ON audit_entries BEGIN SELECT RAISE(ABORT, 'no'); END"
    )
    dl_path.write_bytes(dead_letter_line(AuditEntry(action="a")) + b'{"entry": {"act\n\n')
    dl_path.chmod(0o640)
    before = _snapshot(dl_path)

    report = replay(dl_path, conn)

    assert (report.replayed, report.already_present, report.kept) == (0, 0, 2)
    assert _snapshot(dl_path) == before


def test_replay_refuses_a_symbolic_link_to_the_database(
    db_path: Path, conn: sqlite3.Connection, tmp_path: Path
) -> None:
    link = tmp_path / "audit-link.db"
    link.symlink_to(db_path)

    with pytest.raises(AuditStoreError, match=r"is an SQLite database, not a dead-letter file$"):
        replay(link, conn)


# -- D13: dead-letter files are never opened through a link; a loose one is reported -------------


def test_an_append_refuses_a_symbolic_link_at_the_dead_letter_path(
    dl_path: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("victim\n")
    dl_path.symlink_to(victim)

    with pytest.raises(OSError, match="refusing to follow a symbolic link") as raised:
        deadletter.DeadLetterFile(dl_path).append(rows_of([AuditEntry(action="a")]), "x")

    assert raised.value.filename == str(dl_path)
    assert victim.read_text() == "victim\n"


def test_an_append_refuses_a_symbolic_link_at_the_lock_path(dl_path: Path, tmp_path: Path) -> None:
    Path(f"{dl_path}.lock").symlink_to(tmp_path / "created-by-lock")

    with pytest.raises(OSError, match="refusing to follow a symbolic link"):
        deadletter.DeadLetterFile(dl_path).append(rows_of([AuditEntry(action="a")]), "x")

    assert not (tmp_path / "created-by-lock").exists()
    assert not dl_path.exists()


def test_an_append_refuses_a_fifo_at_the_dead_letter_path(dl_path: Path) -> None:
    os.mkfifo(dl_path)

    with pytest.raises(OSError, match="not a regular file"):
        deadletter.DeadLetterFile(dl_path).append(rows_of([AuditEntry(action="a")]), "x")


def test_a_replay_refuses_a_symbolic_link_at_the_lock_path(
    dl_path: Path, conn: sqlite3.Connection, tmp_path: Path
) -> None:
    dl_path.write_bytes(dead_letter_line(AuditEntry(action="a")))
    Path(f"{dl_path}.lock").symlink_to(tmp_path / "created-by-lock")

    with pytest.raises(OSError, match="refusing to follow a symbolic link"):
        replay(dl_path, conn)

    assert not (tmp_path / "created-by-lock").exists()


def test_a_service_logs_what_it_cannot_dead_letter_through_a_planted_link(
    db_path: Path, dl_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from audit_engine import AuditService, AuditSettings

    AuditService(AuditSettings(database=db_path, cleanup_enabled=False)).close()
    with contextlib.closing(sqlite3.connect(db_path)) as plain:
        plain.execute(
            "CREATE TRIGGER t BEFORE INSERT ON audit_entries WHEN NEW.action = 'bad' "
            "BEGIN SELECT RAISE(ABORT, 'nope'); END"
        )
    victim = tmp_path / "victim.txt"
    victim.write_text("victim\n")
    dl_path.symlink_to(victim)

    with caplog.at_level(logging.CRITICAL, logger="audit_engine.writer"):
        service = AuditService(AuditSettings(database=db_path, cleanup_enabled=False))
        service.record(action="bad")
        assert service.close(10) is False

    stats = service.stats()
    assert (stats.dead_lettered, stats.logged_only) == (0, 1)
    assert stats.last_error == (
        f"dead-letter file not writable: [Errno {errno.ELOOP}] refusing to follow a symbolic "
        f"link: '{dl_path}'"
    )
    assert victim.read_text() == "victim\n"
    assert [r.getMessage()[:42] for r in caplog.records] == [deadletter.LOG_MESSAGE]


def test_an_existing_dead_letter_file_others_can_read_is_warned_about(
    db_path: Path, dl_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from audit_engine import AuditService, AuditSettings

    AuditService(AuditSettings(database=db_path, cleanup_enabled=False)).close()
    dl_path.touch()
    dl_path.chmod(0o644)
    expected = (
        f"the audit trail {db_path} can be read or written by other users "
        f"(audit.db.deadletter.jsonl has mode 0644); it holds sensitive data: chmod 600 {db_path}*"
    )

    with caplog.at_level(logging.WARNING, logger="audit_engine"):
        with AuditService(AuditSettings(database=db_path, cleanup_enabled=False)) as service:
            service.record(action="a")
        with AuditService(AuditSettings(database=db_path, cleanup_enabled=False)) as again:
            again.record(action="b")

    assert service.stats().warnings == [expected]
    assert again.stats().warnings == [expected]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [expected]  # logged once per process


def test_replay_refuses_a_directory_and_reports_an_unopenable_path(
    conn: sqlite3.Connection, tmp_path: Path
) -> None:
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    with pytest.raises(AuditStoreError, match=r"folder\.jsonl is not a regular file; nothing was"):
        replay(folder, conn)
    with pytest.raises(OSError, match="File name too long"):
        replay(tmp_path / ("x" * 300), conn)


def test_a_stored_row_whose_details_are_not_json_is_a_different_entry(
    dl_path: Path, conn: sqlite3.Connection
) -> None:
    entry = AuditEntry(action="a", event_id="e-1")
    store.write_batch(conn, rows_of([entry]))
    with unguarded(conn):  # a tool that wrote the file with the guard out of the way
        conn.execute("UPDATE audit_entries SET details = '{not json' WHERE event_id = 'e-1'")
    deadletter.DeadLetterFile(dl_path).append(rows_of([entry]), "x")

    report = replay(dl_path, conn)

    assert report.errors == ["line 1: event_id e-1 is already used by a different entry"]
