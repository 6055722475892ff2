"""The ``demo`` command (CliRunner and ``python -m``) and the run_demo() behind it."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

import audit_engine
from audit_engine import AuditService, AuditSettings, AuditStore, Operation
from audit_engine.cli import demo as demo_module
from audit_engine.cli import main
from audit_engine.cli.demo import DemoReport, is_demo_database, prepare_database, run_demo
from audit_engine.errors import AuditStoreError
from audit_engine.settings import mask_url

SUMMARY = re.compile(
    r"accepted (\d+), filtered (\d+), written (\d+) in (\d+) batches, dead-lettered (\d+)"
)
ROWS = re.compile(r"rows in the trail: (\d+) \((.*)\)")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(autouse=True)
def _audit_every_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """Most checks count every event: level=all. The default-policy test unsets it."""
    monkeypatch.setenv("AUDIT_TRAIL_LEVEL", "all")


def _row_count(database: Path) -> int:
    with AuditStore(database) as store:
        return store.count()


# -- the command -------------------------------------------------------------------------------


def test_demo_with_the_default_policy_filters_reads(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AUDIT_TRAIL_LEVEL")
    database = tmp_path / "d.db"

    result = runner.invoke(main, ["demo", "--db", str(database), "--events", "300"])

    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Audited 300 events into {database}\n")
    summary = SUMMARY.search(result.output)
    assert summary is not None
    accepted, filtered, written, batches, dead_lettered = map(int, summary.groups())
    # The default level (writes_only) filters the reads; every event is accepted or filtered.
    assert accepted + filtered == 300
    assert filtered > 0
    assert (written, dead_lettered) == (accepted, 0)
    assert 1 <= batches <= accepted
    rows = ROWS.search(result.output)
    assert rows is not None
    assert int(rows.group(1)) == accepted
    per_operation = dict(part.split(" ") for part in rows.group(2).split(", "))
    assert set(per_operation) <= {op.value for op in Operation}
    assert sum(map(int, per_operation.values())) == accepted
    assert per_operation["read"] == "1"  # only the critical privileged read
    assert _row_count(database) == accepted


def test_demo_with_level_all_audits_every_event(runner: CliRunner, tmp_path: Path) -> None:
    database = tmp_path / "d.db"

    result = runner.invoke(main, ["demo", "--db", str(database), "--events", "300"])

    assert result.exit_code == 0, result.output
    summary = SUMMARY.search(result.output)
    assert summary is not None
    assert tuple(map(int, summary.groups()))[:3] == (300, 0, 300)
    assert _row_count(database) == 300


def test_demo_lists_the_latest_entries(runner: CliRunner, tmp_path: Path) -> None:
    database = tmp_path / "d.db"

    result = runner.invoke(main, ["demo", "--db", str(database), "--events", "20"])

    assert result.exit_code == 0, result.output
    listed = result.output.split("  latest entries:\n")[1].splitlines()
    with AuditStore(database) as store:
        latest = list(store.query(limit=5, newest_first=True))
    assert len(listed) == len(latest) == 5
    for line, entry in zip(listed, latest, strict=True):
        assert entry.action in line
        assert f"{entry.resource_type}/{entry.resource_id}" in line


def test_demo_writes_to_audit_demo_db_by_default(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    result = runner.invoke(main, ["demo", "--events", "5"])

    assert result.exit_code == 0, result.output
    assert result.output.startswith("Audited 5 events into audit-demo.db\n")
    assert _row_count(tmp_path / "audit-demo.db") == 5


@pytest.mark.parametrize("events", ["0", "-3"])
def test_demo_needs_at_least_one_event(runner: CliRunner, tmp_path: Path, events: str) -> None:
    database = tmp_path / "d.db"

    result = runner.invoke(main, ["demo", "--db", str(database), "--events", events])

    assert result.exit_code == 2
    assert f"Error: Invalid value for '--events': {events} is not in the range x>=1." in (
        result.output
    )
    assert not database.exists()


def test_demo_refuses_a_directory_as_database(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["demo", "--db", str(tmp_path), "--events", "3"])

    assert result.exit_code == 2
    assert f"Error: Invalid value for '--db': File '{tmp_path}' is a directory." in result.output


def _missing_directory(tmp_path: Path) -> Path:
    return tmp_path / "missing-dir" / "d.db"


def _not_sqlite(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("not a database\n" * 100)
    return path


_REFUSED = (
    "{path} was not made by the demo: it writes simulated entries only to a new file or to one "
    "an earlier demo made; choose another --db"
)


@pytest.mark.parametrize(
    ("make_path", "message"),
    [
        (_missing_directory, "cannot create the audit database {path}: no such directory"),
        (_not_sqlite, _REFUSED),
    ],
    ids=["missing-directory", "not-sqlite"],
)
def test_library_errors_become_one_error_line_and_exit_1(
    runner: CliRunner, tmp_path: Path, make_path: Callable[[Path], Path], message: str
) -> None:
    path = make_path(tmp_path)

    result = runner.invoke(main, ["demo", "--db", str(path), "--events", "3"])

    assert result.exit_code == 1
    assert result.output == f"Error: {message.format(path=path)}\n"


# -- the demo never writes into a real trail (issue 11 item 19) --------------------------------


def _real_trail(tmp_path: Path) -> Path:
    """A trail an application wrote: two entries, then closed (WAL checkpointed)."""
    path = tmp_path / "prod.db"
    settings = AuditSettings(database=path, level="all", cleanup_enabled=False)
    with AuditService(settings) as audit:
        audit.record(action="invoice.approve", actor="erin")
        audit.record(action="invoice.pay", actor="erin")
    return path


def _empty_sqlite(tmp_path: Path) -> Path:
    path = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
    return path


def _empty_file(tmp_path: Path) -> Path:
    path = tmp_path / "empty.db"
    path.touch()
    return path


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("make_path", [_real_trail, _empty_sqlite, _empty_file, _not_sqlite])
@pytest.mark.parametrize("how", ["demo --db", "global --db", "AUDIT_TRAIL_DATABASE"])
def test_demo_refuses_a_file_it_did_not_make_and_leaves_it_as_it_was(
    runner: CliRunner, tmp_path: Path, make_path: Callable[[Path], Path], how: str
) -> None:
    path = make_path(tmp_path)
    before = _files(tmp_path)
    argv, env = {
        "demo --db": (["demo", "--db", str(path)], {}),
        "global --db": (["--db", str(path), "demo"], {}),
        "AUDIT_TRAIL_DATABASE": (["demo"], {"AUDIT_TRAIL_DATABASE": str(path)}),
    }[how]

    result = runner.invoke(main, [*argv, "--events", "5"], env=env)

    assert (result.exit_code, result.output) == (1, f"Error: {_REFUSED.format(path=path)}\n")
    assert _files(tmp_path) == before  # byte for byte, and no -wal, -shm or dead-letter file


def test_the_refused_trail_still_verifies_with_its_own_entries(
    runner: CliRunner, tmp_path: Path
) -> None:
    path = _real_trail(tmp_path)

    runner.invoke(main, ["--db", str(path), "demo", "--events", "5"])

    with AuditStore(path) as store:
        assert [e.action for e in store.query()] == ["invoice.approve", "invoice.pay"]
        assert store.verify().ok


def test_demo_reuses_the_file_an_earlier_demo_made(runner: CliRunner, tmp_path: Path) -> None:
    database = tmp_path / "d.db"

    first = runner.invoke(main, ["demo", "--db", str(database), "--events", "10"])
    second = runner.invoke(main, ["demo", "--db", str(database), "--events", "10"])

    assert (first.exit_code, second.exit_code) == (0, 0), second.output
    assert "rows in the trail: 20 (" in second.output
    assert "verify: ok, 20 rows chained" in second.output
    assert is_demo_database(database)
    assert stat.S_IMODE(database.stat().st_mode) == 0o600


def test_demo_run_twice_in_a_real_process_reuses_its_default_file(tmp_path: Path) -> None:
    """What `python3 dev.py demo` does twice: the second run writes to the first run's file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_TRAIL_")}
    command = [sys.executable, "-m", "audit_engine", "demo", "--events", "20"]

    runs = [
        subprocess.run(
            command, capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env, check=False
        )
        for _ in range(2)
    ]

    assert [(run.returncode, run.stderr) for run in runs] == [(0, ""), (0, "")]
    assert all(run.stdout.startswith("Audited 20 events into audit-demo.db\n") for run in runs)
    assert "verify: ok, " in runs[1].stdout
    assert is_demo_database(tmp_path / "audit-demo.db")


def test_run_demo_refuses_a_real_trail(tmp_path: Path) -> None:
    path = _real_trail(tmp_path)
    before = path.read_bytes()

    with pytest.raises(AuditStoreError) as caught:
        run_demo(path, 5)

    assert str(caught.value) == _REFUSED.format(path=path)
    assert path.read_bytes() == before


def test_prepare_database_reports_a_file_it_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(AuditStoreError) as caught:
        prepare_database(tmp_path)

    assert str(caught.value) == f"cannot read {tmp_path}: Is a directory"


def test_prepare_database_reports_a_file_it_cannot_create(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(demo_module.os, "open", refuse)

    with pytest.raises(AuditStoreError) as caught:
        prepare_database(tmp_path / "d.db")

    assert (
        str(caught.value) == f"cannot create the audit database {tmp_path / 'd.db'}: "
        "Permission denied"
    )
    assert not (tmp_path / "d.db").exists()


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(main, ["--version"], prog_name="audit-engine")

    assert result.exit_code == 0
    assert result.output == f"audit-engine, version {audit_engine.__version__}\n"


def test_help_lists_the_demo_command(runner: CliRunner) -> None:
    result = runner.invoke(main, ["--help"])

    assert result.exit_code == 0
    assert re.search(r"^\s+demo\s+Run a simulated desktop tool", result.output, re.MULTILINE)


def test_python_dash_m_runs_the_demo(tmp_path: Path) -> None:
    database = tmp_path / "d.db"

    completed = subprocess.run(
        [sys.executable, "-m", "audit_engine", "demo", "--events", "50", "--db", str(database)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith(f"Audited 50 events into {database}\n")
    assert "accepted 50, filtered 0, written 50 in" in completed.stdout
    assert completed.stderr == ""
    assert _row_count(database) == 50


def test_python_dash_m_uses_the_command_name(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "audit_engine", "demo", "--events", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )

    assert completed.returncode == 2
    assert completed.stderr.startswith("Usage: audit-engine demo [OPTIONS]\n")


# -- run_demo ----------------------------------------------------------------------------------


@pytest.fixture
def report(tmp_path: Path) -> DemoReport:
    return run_demo(tmp_path / "demo.db", 200)


def test_report_counts_are_consistent(report: DemoReport) -> None:
    assert report.events_emitted == 200
    assert report.accepted == report.written == report.rows_in_file == 200
    assert report.dead_lettered == 0
    assert 1 <= report.batches <= 200
    assert sum(report.by_operation.values()) == 200
    assert set(report.by_operation) <= {op.value for op in Operation}
    assert all(count > 0 for count in report.by_operation.values())


def test_report_timings_are_plausible(report: DemoReport) -> None:
    assert 0 < report.record_p50_us <= report.record_p99_us
    assert report.elapsed_s > 0
    assert report.events_per_s == pytest.approx(200 / report.elapsed_s)


def test_report_matches_the_file(report: DemoReport) -> None:
    with AuditStore(report.database) as store:
        assert report.latest == list(store.query(limit=5, newest_first=True))
        assert store.count() == report.rows_in_file
        for operation, count in report.by_operation.items():
            assert store.count(operation=operation) == count


def test_demo_records_exactly_one_critical_restricted_read(report: DemoReport) -> None:
    with AuditStore(report.database) as store:
        entries = list(store.query())

    critical = [e for e in entries if e.critical]
    assert len(critical) == 1
    [entry] = critical
    assert entry.action == "note.open_restricted"
    assert entry.operation is Operation.READ
    assert entries.index(entry) == 100  # the middle event
    assert entry.resource_type == "note"
    assert entry.actor in {"alice", "bob", "carol", "dave"}
    assert "size_bytes" in entry.details  # non-entry event fields land in details


def test_demo_entries_carry_correlation_ids_per_session(report: DemoReport) -> None:
    with AuditStore(report.database) as store:
        entries = list(store.query())

    assert [e.correlation_id for e in entries] == [f"session-{n // 50}" for n in range(200)]


def test_same_seed_gives_the_same_trail(tmp_path: Path) -> None:
    first = run_demo(tmp_path / "a.db", 30, seed=3)
    second = run_demo(tmp_path / "b.db", 30, seed=3)

    def fingerprint(path: Path) -> list[tuple[object, ...]]:
        with AuditStore(path) as store:
            return [
                (e.action, e.actor, e.operation, e.outcome, e.resource_id, e.details)
                for e in store.query()
            ]

    assert fingerprint(first.database) == fingerprint(second.database)
    assert first.by_operation == second.by_operation


def test_on_progress_is_called_once_per_event(tmp_path: Path) -> None:
    calls: list[int] = []

    run_demo(tmp_path / "p.db", 25, on_progress=calls.append)

    assert calls == [1] * 25


@pytest.mark.parametrize("events", [0, -1])
def test_run_demo_needs_at_least_one_event(tmp_path: Path, events: int) -> None:
    database = tmp_path / "never.db"

    with pytest.raises(ValueError, match=rf"^events must be at least 1 \(got {events}\)$"):
        run_demo(database, events)

    assert not database.exists()


# -- a PostgreSQL database ---------------------------------------------------------------------


def _with_password(url: str) -> str:
    # The test server trusts local connections: the password only shows whether it leaks.
    return url.replace("postgresql://postgres@", "postgresql://postgres:s3cret-pw@", 1)


def test_demo_on_a_url_creates_a_marked_trail_and_appends_on_a_second_run(
    runner: CliRunner, pg_schema_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))  # the URL's dead-letter default
    url = _with_password(pg_schema_url)

    first = runner.invoke(main, ["demo", "--db", url, "--events", "20"])
    second = runner.invoke(main, ["--db", url, "demo", "--events", "20"])

    assert (first.exit_code, second.exit_code) == (0, 0), first.output + second.output
    assert first.output.startswith(f"Audited 20 events into {mask_url(url)}\n")
    assert "s3cret-pw" not in first.output + second.output
    assert ROWS.search(first.output)[1] == "20"  # type: ignore[index]
    assert ROWS.search(second.output)[1] == "40"  # type: ignore[index]
    assert "verify: ok, 40 rows chained" in second.output


def test_demo_refuses_a_url_holding_a_trail_it_did_not_make(
    runner: CliRunner, pg_schema_url: str
) -> None:
    settings = AuditSettings(database=pg_schema_url, cleanup_enabled=False)
    with AuditService(settings) as audit:
        audit.record(action="real.entry")

    result = runner.invoke(main, ["--db", pg_schema_url, "demo", "--events", "5"])

    assert result.exit_code == 1, result.output
    assert result.output == (
        f"Error: {mask_url(pg_schema_url)} holds an audit trail the demo did not make: it "
        "writes simulated entries only to a database without one, or to a trail an earlier "
        "demo made; choose another --db\n"
    )
    with AuditStore(pg_schema_url) as store:
        assert [entry.action for entry in store.query()] == ["real.entry"]
