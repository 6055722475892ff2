"""``tail`` (with and without -f) and ``export`` (stdout, files, ranges, offline verification)."""

from __future__ import annotations

import csv
import io
import json
import os
import queue
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import IO, TYPE_CHECKING

import pytest

from audit_engine.cli import commands as cli_module
from audit_engine.storage.exported import verify_exported_lines

if TYPE_CHECKING:
    from conftest import Cli, Trail


ENTRY_FIELDS = [
    "event_id",
    "timestamp",
    "actor",
    "action",
    "operation",
    "outcome",
    "resource_type",
    "resource_id",
    "correlation_id",
    "details",
    "critical",
]
EXPORT_CSV_HEADER = (
    "id,event_id,timestamp,actor,action,operation,outcome,resource_type,resource_id,"
    "correlation_id,details,critical,prev_hash,hash"
)
TABLE_HEADER = ["time (UTC)", "actor", "action", "operation", "outcome", "resource", "correlation"]


def _jsonl_actions(output: str) -> list[str]:
    return [json.loads(line)["action"] for line in output.splitlines()]


# -- tail --------------------------------------------------------------------------------------


def test_tail_prints_the_newest_entries_oldest_first(cli: Cli, notes: Trail) -> None:
    table = cli.run("tail", "-n", "2")
    jsonl = cli.run("tail", "--lines", "3", "--format", "jsonl")

    lines = table.output.splitlines()
    assert lines[0].split() == ["time", "(UTC)", *TABLE_HEADER[1:]]
    assert [line.split()[3] for line in lines[1:]] == ["note.delete", "user.login"]
    assert "entries)" not in table.output  # no footer while tailing
    assert _jsonl_actions(jsonl.output) == ["note.open", "note.delete", "user.login"]


def test_tail_prints_ten_by_default(cli: Cli, trail: Trail) -> None:
    trail.record(*({"action": f"step.{n}"} for n in range(12)))

    result = cli.run("tail", "--format", "jsonl")

    assert _jsonl_actions(result.output) == [f"step.{n}" for n in range(2, 12)]


def test_tail_of_an_empty_trail_prints_the_header_only(cli: Cli, trail: Trail) -> None:
    trail.init()

    assert cli.run("tail").output.split() == ["time", "(UTC)", *TABLE_HEADER[1:]]
    assert cli.run("tail", "--format", "jsonl").output == ""


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["-n", "0"], "Error: Invalid value for '-n' / '--lines': 0 is not in the range x>=1.\n"),
        (
            ["-f", "--interval", "0.01"],
            "Error: Invalid value for '--interval': 0.01 is not in the range 0.05<=x<=3600.0.\n",
        ),
        (
            ["--format", "csv"],
            "Error: Invalid value for '--format': 'csv' is not one of 'table', 'jsonl'.\n",
        ),
        (
            # time.sleep() overflowed: a traceback.
            ["-f", "--interval", "1e300"],
            "Error: Invalid value for '--interval': 1e+300 is not in the range 0.05<=x<=3600.0.\n",
        ),
        (
            ["-f", "--interval", "nan"],
            "Error: Invalid value for '--interval': 'nan' is not a number of seconds\n",
        ),
        (
            # Issue 11 item 12: an OverflowError traceback.
            ["-n", "9223372036854775808"],
            "Error: Invalid value for '-n' / '--lines': 9223372036854775808 is more than the "
            "database can count (at most 9223372036854775807)\n",
        ),
    ],
)
def test_tail_usage_errors(cli: Cli, notes: Trail, options: list[str], message: str) -> None:
    assert cli.run("tail", *options, code=2).output.endswith(message)


def test_tail_follow_prints_new_rows_without_a_second_header(
    cli: Cli, notes: Trail, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process: the poll's sleep is replaced; the third poll is 'interrupted' (Ctrl-C)."""
    polls: list[float] = []

    def poll(interval: float) -> None:
        polls.append(interval)
        if len(polls) == 1:
            notes.record({"action": "late.one", "actor": "dave"}, {"action": "late.two"})
        elif len(polls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "time", SimpleNamespace(sleep=poll))

    result = cli.run("tail", "-n", "1", "-f", "--interval", "0.5")

    lines = result.output.splitlines()
    assert lines[0].split() == ["time", "(UTC)", *TABLE_HEADER[1:]]
    assert [line.split()[3] for line in lines[1:]] == ["user.login", "late.one", "late.two"]
    assert polls == [0.5, 0.5, 0.5]


def test_tail_follow_rows_line_up_with_the_header(
    cli: Cli, trail: Trail, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11 item 20: each poll's rows were padded to their own widths, not the header's."""
    trail.record({"action": "a", "actor": "al"})
    late = [
        {"action": "note.quite-long-action", "actor": "bartholomew", "resource_type": "note",
         "resource_id": "n-123456", "correlation_id": "req-1", "critical": True},
        {"action": "x" * 40, "actor": "y" * 30, "correlation_id": "z" * 30},
    ]  # fmt: skip
    polls: list[float] = []

    def poll(interval: float) -> None:
        polls.append(interval)
        if len(polls) == 1:
            trail.record(*late)
        elif len(polls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "time", SimpleNamespace(sleep=poll))

    header, first, *followed = cli.run("tail", "-f").output.splitlines()

    starts = [header.index(title) for title in TABLE_HEADER[1:]]
    for line in (first, *followed):
        # Each column starts where its title does, after two spaces.
        assert [line[start - 2 : start] for start in starts] == ["  "] * len(starts), line
        assert line[starts[0] - 3] != " ", line
    assert followed[0].split() == [
        *followed[0].split()[:2],
        *("bartholomew", "note.quite-long-action", "execute", "success", "note/n-123456"),
        *("req-1", "critical"),
    ]
    assert followed[1].split()[2:] == [
        *("y" * 11 + "…", "x" * 23 + "…", "execute", "success", "-/-", "z" * 15 + "…")
    ]


def _read_lines(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


def test_tail_follow_in_a_real_process_until_interrupted(trail: Trail, db_path: Path) -> None:
    trail.record({"action": "before.1"}, {"action": "before.2"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_TRAIL_")}
    env["PYTHONUTF8"] = "1"
    command = [sys.executable, "-m", "audit_engine", "--db", str(db_path), "tail", "-f"]
    proc = subprocess.Popen(
        [*command, "--interval", "0.1", "--format", "jsonl"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    assert proc.stderr is not None
    reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True)
    reader.start()
    try:
        initial = [json.loads(lines.get(timeout=20))["action"] for _ in range(2)]
        trail.record({"action": "after.1"}, {"action": "after.2", "actor": "zoë"})
        followed = [json.loads(lines.get(timeout=20)) for _ in range(2)]

        proc.send_signal(signal.SIGINT)
        returncode = proc.wait(timeout=20)
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        reader.join(timeout=10)
        proc.stdout.close()
        proc.stderr.close()

    assert initial == ["before.1", "before.2"]
    assert [line["action"] for line in followed] == ["after.1", "after.2"]
    assert followed[1]["actor"] == "zoë"
    assert returncode == 0, stderr
    assert "Traceback" not in stderr
    assert stderr == ""
    assert lines.empty()


# -- export ------------------------------------------------------------------------------------


def test_export_jsonl_to_stdout_keeps_ids_and_hashes_and_verifies(cli: Cli, notes: Trail) -> None:
    result = cli.run("export")

    records = [json.loads(line) for line in result.output.splitlines()]
    assert [r["id"] for r in records] == [1, 2, 3, 4]
    assert [list(r) for r in records] == [["id", *ENTRY_FIELDS, "prev_hash", "hash"]] * 4
    assert records[0]["details"] == {"title": "plan", "tags": ["q3"]}
    assert records[-1]["hash"] == notes.head().hash
    report = verify_exported_lines(result.output.splitlines())
    assert (report.ok, report.rows_checked) == (True, 4)


def test_export_csv_to_stdout_has_a_header_row(cli: Cli, notes: Trail) -> None:
    result = cli.run("export", "--format", "csv")

    lines = result.output.splitlines()
    assert lines[0] == EXPORT_CSV_HEADER
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [r["id"] for r in rows] == ["1", "2", "3", "4"]
    assert rows[3]["hash"] == notes.head().hash
    assert json.loads(rows[0]["details"]) == {"tags": ["q3"], "title": "plan"}


def test_export_csv_and_query_csv_render_values_alike(cli: Cli, notes: Trail) -> None:
    """Issue 11 item 20: export wrote critical as 0/1, query as true/false."""
    exported = list(csv.DictReader(io.StringIO(cli.run("export", "--format", "csv").output)))
    queried = list(csv.DictReader(io.StringIO(cli.run("query", "--format", "csv").output)))

    assert [row["critical"] for row in exported] == ["false", "false", "true", "false"]
    for mine, theirs in zip(exported, queried, strict=True):
        assert {name: mine[name] for name in ENTRY_FIELDS} == theirs


def test_export_and_query_escape_line_separators_alike(cli: Cli, trail: Trail) -> None:
    """Issue 11 item 20: only export escaped U+2028; a query line split for line readers."""
    trail.record({"action": "note.save", "details": {"body": "one\u2028two\u2029three"}})

    queried = cli.run("query", "--format", "jsonl").output
    exported = cli.run("export").output

    for text in (queried, exported):
        assert len(text.splitlines()) == 1
        assert "\\u2028" in text
        assert json.loads(text)["details"] == {"body": "one\u2028two\u2029three"}
    assert verify_exported_lines(exported.splitlines()).ok


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_creates_its_file_readable_by_the_owner_only(
    cli: Cli, notes: Trail, tmp_path: Path, fmt: str
) -> None:
    """Issue 11 item 23: --output was created 0644."""
    target = tmp_path / f"trail.{fmt}"
    old_umask = os.umask(0o022)
    try:
        cli.run("export", "--format", fmt, "--output", str(target))
    finally:
        os.umask(old_umask)

    assert stat.S_IMODE(target.stat().st_mode) == 0o600


@pytest.mark.sqlite_only  # lists the files beside the database
def test_export_over_an_existing_file_replaces_it_readable_by_the_owner_only(
    cli: Cli, notes: Trail, tmp_path: Path
) -> None:
    target = tmp_path / "shared.jsonl"
    target.write_text("old contents that are longer than nothing\n" * 100)
    target.chmod(0o644)

    cli.run("export", "--actor", "bob", "--output", str(target))

    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert _jsonl_actions(target.read_text(encoding="utf-8")) == ["note.open"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.db", "shared.jsonl"]


@pytest.mark.sqlite_only  # jsonb refuses details that are not JSON
def test_a_failed_export_leaves_no_partial_file_and_an_earlier_one_as_it_was(
    cli: Cli, notes: Trail, tmp_path: Path
) -> None:
    """A row another tool wrote (details not JSON) stops the export part-way: the file must not
    look complete (issue 11 item 14, for --output)."""
    notes.execute("UPDATE audit_entries SET details = 'not json' WHERE id = 3")
    earlier = tmp_path / "earlier.jsonl"
    earlier.write_text("the export of last month\n")
    fresh = tmp_path / "fresh.jsonl"

    over = cli.run("export", "--output", str(earlier), code=1)
    new = cli.run("export", "--output", str(fresh), code=1)

    for result in (over, new):
        assert result.output == (
            "Error: cannot export row 3: its details are not JSON "
            "(Expecting value: line 1 column 1 (char 0))\n"
        )
    assert earlier.read_text() == "the export of last month\n"
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("audit.db"))
    assert left == ["earlier.jsonl"]


@pytest.mark.parametrize(("fmt", "lines"), [("jsonl", 4), ("csv", 5)])
def test_export_to_a_file_says_how_many(
    cli: Cli, notes: Trail, tmp_path: Path, fmt: str, lines: int
) -> None:
    target = tmp_path / f"trail.{fmt}"

    result = cli.run("export", "--format", fmt, "--output", str(target))

    # No progress bar: stderr is not a terminal here.
    assert result.stdout == f"Exported 4 entries to {target}\n"
    assert result.stderr == ""
    assert len(target.read_text(encoding="utf-8").splitlines()) == lines
    assert target.read_text(encoding="utf-8") == cli.run("export", "--format", fmt).output


def test_export_a_range_to_a_file_verifies_offline(cli: Cli, notes: Trail, tmp_path: Path) -> None:
    target = tmp_path / "recent.jsonl"

    result = cli.run("export", "--since", "1d", "--until", "30s", "--output", str(target))

    assert result.output == f"Exported 3 entries to {target}\n"
    text = target.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["id"] for line in text] == [2, 3, 4]
    report = verify_exported_lines(text)
    assert (report.ok, report.rows_checked) == (True, 3)


def test_export_of_one_entry_to_a_file(cli: Cli, notes: Trail, tmp_path: Path) -> None:
    target = tmp_path / "bob.jsonl"

    result = cli.run("export", "--actor", "bob", "--output", str(target))

    assert result.output == f"Exported 1 entry to {target}\n"
    assert _jsonl_actions(target.read_text(encoding="utf-8")) == ["note.open"]


def test_export_filters_by_field(cli: Cli, notes: Trail) -> None:
    result = cli.run("export", "--actor", "alice", "--operation", "delete")

    assert _jsonl_actions(result.output) == ["note.delete"]


def test_export_of_nothing(cli: Cli, trail: Trail, tmp_path: Path) -> None:
    trail.init()
    target = tmp_path / "none.csv"

    assert cli.run("export").output == ""
    result = cli.run("export", "--format", "csv", "--output", str(target))

    assert result.output == f"Exported 0 entries to {target}\n"
    assert target.read_text(encoding="utf-8") == EXPORT_CSV_HEADER + "\n"


def test_export_refuses_table_format(cli: Cli, notes: Trail) -> None:
    result = cli.run("export", "--format", "table", code=2)

    assert result.output.endswith(
        "Error: Invalid value for '--format': 'table' is not one of 'jsonl', 'csv'.\n"
    )


def test_export_into_a_missing_directory_is_an_error(
    cli: Cli, notes: Trail, tmp_path: Path
) -> None:
    target = tmp_path / "no-such-dir" / "trail.jsonl"

    result = cli.run("export", "--output", str(target), code=1)

    assert result.output == f"Error: No such file or directory: {target}\n"
    assert not target.parent.exists()


@pytest.mark.parametrize(
    ("suffix", "reason"),
    [
        ("", "is the audit database itself"),
        ("-wal", "is the audit database's -wal file"),
        ("-shm", "is the audit database's -shm file"),
    ],
)
def test_export_refuses_to_overwrite_the_database(
    cli: Cli, notes: Trail, db_path: Path, suffix: str, reason: str
) -> None:
    head = notes.head()
    before = db_path.read_bytes()
    target = Path(f"{db_path}{suffix}")

    result = cli.run("export", "--output", str(target), code=2)

    assert result.output.startswith("Usage: audit-engine export [OPTIONS]\n")
    assert result.output.endswith(f"\nError: Invalid value for '--output': {reason}\n")
    assert db_path.read_bytes() == before
    # Nothing was written beside it either (SQLite removes -wal and -shm on the last close).
    assert suffix == "" or not target.exists()
    assert cli.run("verify").output == f"OK: 4 rows verified; head 4:{head.hash}\n"


def test_export_refuses_the_database_by_another_name(
    cli: Cli, notes: Trail, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check compares resolved paths: a relative spelling is the same file."""
    before = db_path.read_bytes()
    monkeypatch.chdir(db_path.parent)

    result = cli.run("export", "--output", f"./{db_path.name}", code=2)

    assert result.output.endswith(
        "\nError: Invalid value for '--output': is the audit database itself\n"
    )
    assert db_path.read_bytes() == before
