"""``audit-engine copy SOURCE DEST``: both ways between SQLite and a real PostgreSQL server.

The command runs under a group of the CLI's own class with the CLI's global options, as it does
once registered: the group is where library errors become ``Error: ...`` with exit code 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from tamper import tamper

from audit_engine import AuditEntry, AuditStore, AuditStoreError
from audit_engine.cli import main
from audit_engine.cli.copy import copy
from audit_engine.rows import entry_row
from audit_engine.storage import backends, dialect

Database = Path | str

# The CLI's group class and global options (--db, --version), holding only this command.
GROUP = type(main)(name="audit-engine", params=main.params, commands={"copy": copy})
T0 = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)


def _run(*args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(GROUP, list(args), prog_name="audit-engine")
    assert result.exit_code == code, f"exit code {result.exit_code}\n{result.output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output
    return result


def _entries(count: int, prefix: str = "note") -> list[AuditEntry]:
    return [
        AuditEntry(
            action=f"{prefix}.edit",
            actor=f"user-{i % 2}",
            operation="update",
            resource_type="note",
            resource_id=f"n{i}",
            timestamp=T0 + timedelta(minutes=i),
            details={"i": i, "text": "é"} if i % 2 else {},
            critical=i == 0,
        )
        for i in range(count)
    ]


def _write(database: Database, entries: Sequence[AuditEntry]) -> None:
    conn = backends.open_trail(database, create=True)
    try:
        dialect.write_rows(conn, [entry_row(entry) for entry in entries])
    finally:
        conn.close()


def _trail(database: Database) -> tuple[list[AuditEntry], str]:
    """The entries of ``database`` and its verified head as ID:HASH."""
    with AuditStore(database) as store:
        report = store.verify()
        entries = list(store.query())
    assert report.ok, report
    assert report.head is not None
    return entries, f"{report.head.id}:{report.head.hash}"


@pytest.fixture(params=["sqlite-to-pg", "pg-to-sqlite"])
def ends(request: pytest.FixtureRequest, tmp_path: Path, pg_url: str) -> tuple[Database, Database]:
    file = tmp_path / "desktop.db"
    return (file, pg_url) if request.param == "sqlite-to-pg" else (pg_url, file)


def test_copy_ships_a_trail_and_prints_both_heads(ends: tuple[Database, Database]) -> None:
    source, dest = ends
    entries = _entries(7)
    _write(source, entries)
    _, source_head = _trail(source)

    result = _run("copy", str(source), str(dest), "--batch-size", "3")

    copied, dest_head = _trail(dest)
    assert copied == entries
    assert result.output == (
        f"Copied 7 entries from {source} to {dest} (0 already present) in 3 batches; "
        f"source head {source_head}; destination head {dest_head}; "
        "destination verified (7 rows)\n"
    )


def test_copy_run_twice_copies_nothing_twice(ends: tuple[Database, Database]) -> None:
    source, dest = ends
    entries = _entries(4)
    _write(source, entries)
    _run("copy", str(source), str(dest))

    result = _run("copy", str(source), str(dest))

    assert result.output.startswith(
        f"Copied 0 entries from {source} to {dest} (4 already present) in 1 batch; "
    )
    assert _trail(dest)[0] == entries


def test_copy_appends_to_a_destination_with_entries_of_its_own(tmp_path: Path) -> None:
    source, dest = tmp_path / "laptop.db", tmp_path / "team.db"
    own, shipped = _entries(2, prefix="team"), _entries(3)
    _write(dest, own)
    _write(source, shipped)

    _run("copy", str(source), str(dest))

    assert _trail(dest)[0] == own + shipped


def test_copy_ignores_the_global_db(tmp_path: Path) -> None:
    source, dest, other = tmp_path / "a.db", tmp_path / "b.db", tmp_path / "other.db"
    _write(source, _entries(2))

    _run("--db", str(other), "copy", str(source), str(dest))

    assert not other.exists()
    assert len(_trail(dest)[0]) == 2


def test_copy_refuses_a_tampered_source_and_copies_nothing(tmp_path: Path, pg_url: str) -> None:
    source = tmp_path / "desktop.db"
    _write(source, _entries(3))
    tamper(source, "UPDATE audit_entries SET actor = 'mallory' WHERE id = 2")
    with AuditStore(source) as store:
        reason = store.verify().reason

    result = _run("copy", str(source), pg_url, code=1)

    assert result.output == (
        f"Error: the source {source} does not verify: chain broken at row 2: {reason}; "
        "nothing was copied\n"
    )
    with pytest.raises(AuditStoreError, match="no audit trail at"):  # nothing was created
        AuditStore(pg_url)


def test_copy_reports_a_conflicting_event_id(tmp_path: Path) -> None:
    source, dest = tmp_path / "a.db", tmp_path / "b.db"
    entries = _entries(3)
    _write(dest, [entries[1].model_copy(update={"actor": "someone-else"})])
    _write(source, entries)

    result = _run("copy", str(source), str(dest), code=1)

    assert result.output == (
        f"Error: event_id {entries[1].event_id} is already used by a different entry in {dest} "
        "(row 1); 0 entries were copied before it, none of its batch\n"
    )


def test_copy_of_a_missing_source_says_so(tmp_path: Path) -> None:
    source, dest = tmp_path / "missing.db", tmp_path / "b.db"

    result = _run("copy", str(source), str(dest), code=1)

    assert result.output == f"Error: no audit database at {source}\n"
    assert not dest.exists()


def test_copy_refuses_a_batch_size_of_zero(tmp_path: Path) -> None:
    result = _run(
        "copy", str(tmp_path / "a.db"), str(tmp_path / "b.db"), "--batch-size", "0", code=2
    )

    assert "Invalid value for '--batch-size': 0 is not in the range x>=1." in result.output
