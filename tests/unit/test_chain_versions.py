"""verify() reads which canonical form each range of rows uses (the audit_chain_versions table)."""

from __future__ import annotations

from pathlib import Path

from tamper import unguarded

from audit_engine import AuditEntry, AuditStore
from audit_engine.rows import entry_row
from audit_engine.storage import sqlite as store
from audit_engine.storage.sqlite.migrations import CHAIN_VERSIONS
from audit_engine.storage.sqlite.schema import chain_versions


def _trail(path: Path, count: int) -> None:
    conn = store.open_connection(path, create=True)
    try:
        rows = [entry_row(AuditEntry(event_id=f"e{n}", action="doc.save")) for n in range(count)]
        store.write_batch(conn, rows)
    finally:
        conn.close()


def test_a_file_made_today_is_all_chain_version_1_and_verifies(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    _trail(path, 3)

    conn = store.open_connection(path)
    try:
        assert chain_versions(conn) == [(1, "1")]
    finally:
        conn.close()
    with AuditStore(path) as audit_store:
        report = audit_store.verify()

    assert report.ok is True
    assert report.rows_checked == 3


def test_verify_reports_rows_of_a_chain_version_it_does_not_know(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    _trail(path, 3)
    conn = store.open_connection(path)
    with unguarded(conn):  # the guard refuses a version that starts at a row already written
        conn.execute(f"INSERT INTO {CHAIN_VERSIONS} (first_id, version) VALUES (3, '9')")
    conn.close()

    with AuditStore(path) as audit_store:
        report = audit_store.verify()

    assert report.ok is False
    assert report.first_bad_id == 3
    assert report.reason == (
        "rows from id 3 on are hashed with chain version '9', which this release cannot check "
        "(it knows versions 1 and 2): verify with the release that wrote them"
    )
