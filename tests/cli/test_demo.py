"""The ``demo`` command (CliRunner and ``python -m``) and the run_demo() behind it."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

import audit_engine
from audit_engine import AuditStore, Operation
from audit_engine.cli import main
from audit_engine.demo import DemoReport, run_demo

SUMMARY = re.compile(
    r"accepted (\d+), filtered (\d+), written (\d+) in (\d+) batches, dead-lettered (\d+)"
)
ROWS = re.compile(r"rows in the file: (\d+) \((.*)\)")


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
        latest = store.query(limit=5, newest_first=True)
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


@pytest.mark.parametrize(
    ("make_path", "message"),
    [
        (_missing_directory, "cannot create the audit database {path}: no such directory"),
        (_not_sqlite, "{path} is not a usable audit database: file is not a database"),
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
        assert report.latest == store.query(limit=5, newest_first=True)
        assert store.count() == report.rows_in_file
        for operation, count in report.by_operation.items():
            assert store.count(operation=operation) == count


def test_demo_records_exactly_one_critical_restricted_read(report: DemoReport) -> None:
    with AuditStore(report.database) as store:
        entries = store.query()

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
        entries = store.query()

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
