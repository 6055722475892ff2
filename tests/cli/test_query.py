"""``query``: every filter, times, limits, every output format; filter values stay data."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING

import pytest

from audit_engine import AuditStore, AuditStoreError

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
TABLE_HEADER = ["time (UTC)", "actor", "action", "operation", "outcome", "resource", "correlation"]


def _jsonl_actions(output: str) -> list[str]:
    return [json.loads(line)["action"] for line in output.splitlines()]


# -- filters -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ([], ["note.create", "note.open", "note.delete", "user.login"]),
        (["--actor", "alice"], ["note.create", "note.delete"]),
        (["--action", "note.open"], ["note.open"]),
        (["--operation", "delete"], ["note.delete"]),
        (["--outcome", "success"], ["note.create", "note.open", "user.login"]),
        (["--resource-type", "session"], ["user.login"]),
        (["--resource-id", "n1"], ["note.create", "note.open"]),
        (["--correlation-id", "req-3"], ["note.delete", "user.login"]),
        (["--actor", "alice", "--resource-id", "n2"], ["note.delete"]),
        (["--actor", "bob", "--operation", "create"], []),
    ],
)
def test_query_filters(cli: Cli, notes: Trail, options: list[str], expected: list[str]) -> None:
    result = cli.run("query", *options, "--format", "jsonl")

    assert _jsonl_actions(result.output) == expected


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--since", "1d"], ["note.open", "note.delete", "user.login"]),
        (["--since", "90m"], ["note.delete", "user.login"]),
        (["--until", "1h"], ["note.create", "note.open"]),
        (["--since", "4d", "--until", "2d"], ["note.create"]),
        (["--since", "1w"], ["note.create", "note.open", "note.delete", "user.login"]),
        (["--since", "30s"], []),
    ],
)
def test_query_since_until_relative(
    cli: Cli, notes: Trail, options: list[str], expected: list[str]
) -> None:
    result = cli.run("query", *options, "--format", "jsonl")

    assert _jsonl_actions(result.output) == expected


def test_query_since_until_iso(cli: Cli, notes: Trail) -> None:
    now = datetime.now(UTC)
    two_days_ago = now - timedelta(days=2)
    naive = (now - timedelta(hours=3)).astimezone().replace(tzinfo=None).isoformat()
    zulu = (now - timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    paris = (now - timedelta(hours=3)).astimezone(timezone(timedelta(hours=2)))

    aware = cli.run("query", "--since", two_days_ago.isoformat(), "--format", "jsonl")
    naive_utc = cli.run("query", "--since", naive, "--until", zulu, "--format", "jsonl")
    offset = cli.run("query", "--until", paris.isoformat(), "--format", "jsonl")
    day = cli.run("query", "--until", f"{now - timedelta(days=1):%Y-%m-%d}", "--format", "jsonl")

    assert _jsonl_actions(aware.output) == ["note.open", "note.delete", "user.login"]
    # A naive time is local time, 'Z' is UTC.
    assert _jsonl_actions(naive_utc.output) == ["note.open"]
    assert _jsonl_actions(offset.output) == ["note.create"]
    assert _jsonl_actions(day.output) == ["note.create"]


@pytest.mark.parametrize("option", ["--since", "--until"])
@pytest.mark.parametrize("value", ["yesterday", "-1d", "2026-13-01", "0m"])
def test_a_bad_time_is_a_usage_error(cli: Cli, notes: Trail, option: str, value: str) -> None:
    result = cli.run("query", option, value, code=2)

    assert result.output.startswith("Usage: audit-engine query [OPTIONS]\n")
    assert result.output.endswith(
        f"Error: Invalid value for '{option}': {value!r} is neither an ISO-8601 time "
        "(2026-11-23, 2026-11-23T16:00:00Z) nor a duration back from now (15m, 24h, 7d)\n"
    )


def test_query_limit_and_newest_first(cli: Cli, notes: Trail) -> None:
    oldest = cli.run("query", "--limit", "2", "--format", "jsonl")
    newest = cli.run("query", "--limit", "2", "--newest-first", "--format", "jsonl")
    nothing = cli.run("query", "--limit", "0")

    assert _jsonl_actions(oldest.output) == ["note.create", "note.open"]
    assert _jsonl_actions(newest.output) == ["user.login", "note.delete"]
    assert nothing.output.splitlines()[-1] == "(0 entries)"


def test_a_negative_limit_is_a_usage_error(cli: Cli, notes: Trail) -> None:
    result = cli.run("query", "--limit", "-1", code=2)

    assert result.output.endswith(
        "Error: Invalid value for '--limit': -1 is not in the range x>=0.\n"
    )


def test_a_limit_beyond_sqlite_integers_is_a_usage_error(cli: Cli, notes: Trail) -> None:
    """Issue 11 item 12: an OverflowError traceback."""
    result = cli.run("query", "--limit", "9223372036854775808", code=2)
    largest = cli.run("query", "--limit", "9223372036854775807", "--format", "jsonl")

    assert result.output.startswith("Usage: audit-engine query [OPTIONS]\n")
    assert result.output.endswith(
        "Error: Invalid value for '--limit': 9223372036854775808 is more than the database can "
        "count (at most 9223372036854775807)\n"
    )
    assert len(largest.output.splitlines()) == 4


def test_a_naive_time_is_local_time(
    cli: Cli, trail: Trail, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11 item 18: --since 2026-12-01T11:00:00 was read as UTC, not as `date` reads it."""
    trail.record(
        {"action": "at.15.30Z", "timestamp": datetime(2026, 12, 1, 15, 30, tzinfo=UTC)},
        {"action": "at.16.30Z", "timestamp": datetime(2026, 12, 1, 16, 30, tzinfo=UTC)},
    )
    new_york = {"TZ": "America/New_York"}  # 11:00 there is 16:00 UTC

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        local = cli.run("query", "--since", "2026-12-01T11:00:00", "--format", "jsonl")
        utc = cli.run("query", "--since", "2026-12-01T11:00:00Z", "--format", "jsonl")
    finally:
        monkeypatch.undo()
        time.tzset()
    command = [sys.executable, "-m", "audit_engine", "--db", str(cli.database), "query"]
    process = subprocess.run(
        [*command, "--until", "2026-12-01 11:00", "--format", "jsonl"],
        capture_output=True,
        text=True,
        env={**os.environ, **new_york},
        timeout=60,
        check=False,
    )

    assert _jsonl_actions(local.output) == ["at.16.30Z"]
    assert _jsonl_actions(utc.output) == ["at.15.30Z", "at.16.30Z"]
    assert (process.returncode, process.stderr) == (0, "")
    assert _jsonl_actions(process.stdout) == ["at.15.30Z"]


def test_the_help_says_a_naive_time_is_local(cli: Cli) -> None:
    help_text = " ".join(cli.run("query", "--help").output.split())

    assert "ISO-8601 (without an offset it is local time, as `date` reads it; add Z for UTC)" in (
        help_text
    )


def test_query_json_is_one_array_of_entries_with_nested_details(cli: Cli, notes: Trail) -> None:
    result = cli.run("query", "--format", "json")

    entries = json.loads(result.output)  # the whole of stdout: nothing else is printed
    assert isinstance(entries, list)
    assert [list(e) for e in entries] == [ENTRY_FIELDS] * 4
    assert entries[0]["details"] == {"title": "plan", "tags": ["q3"]}
    assert entries[2]["critical"] is True
    assert entries[1]["actor"] == "bob"
    assert entries == [e.model_dump(mode="json") for e in notes.entries()]


def test_query_json_of_nothing_is_an_empty_array(cli: Cli, trail: Trail) -> None:
    trail.init()

    assert cli.run("query", "--format", "json").output == "[]\n"


def test_query_jsonl_is_one_object_per_line(cli: Cli, notes: Trail) -> None:
    result = cli.run("query", "--format", "jsonl")

    lines = result.output.splitlines()
    assert len(lines) == 4
    objects = [json.loads(line) for line in lines]
    assert objects == [e.model_dump(mode="json") for e in notes.entries()]
    assert objects[0]["details"] == {"title": "plan", "tags": ["q3"]}


def test_query_csv_has_a_header_then_one_row_per_entry(cli: Cli, notes: Trail) -> None:
    result = cli.run("query", "--format", "csv")

    lines = result.output.splitlines()
    assert lines[0] == ",".join(ENTRY_FIELDS)
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert len(rows) == 4 == len(lines) - 1
    assert [r["action"] for r in rows] == ["note.create", "note.open", "note.delete", "user.login"]
    assert json.loads(rows[0]["details"]) == {"tags": ["q3"], "title": "plan"}
    assert [r["critical"] for r in rows] == ["false", "false", "true", "false"]
    assert rows[3]["operation"] == "execute"


def test_query_table_has_a_header_rows_and_a_footer(cli: Cli, notes: Trail) -> None:
    result = cli.run("query")

    lines = result.output.splitlines()
    assert lines[0].split() == ["time", "(UTC)", *TABLE_HEADER[1:]]
    assert lines[-1] == "(4 entries)"
    assert len(lines) == 6
    assert lines[1].split()[2:] == [
        *("alice", "note.create", "create", "success", "note/n1", "req-1")
    ]
    assert lines[3].split()[2:] == [
        *("alice", "note.delete", "delete", "failure", "note/n2", "req-3", "critical")
    ]
    assert lines[2].split()[-1] == "req-2"
    assert cli.run("query", "--limit", "1").output.splitlines()[-1] == "(1 entry)"


def test_the_default_format_is_the_table(cli: Cli, notes: Trail) -> None:
    assert cli.run("query").output == cli.run("query", "--format", "table").output


@pytest.mark.parametrize(
    "option", ["--actor", "--action", "--resource-type", "--resource-id", "--correlation-id"]
)
@pytest.mark.parametrize(
    "value",
    ["' OR 1=1 --", "x' OR 'a'='a", "x'; DROP TABLE audit_entries; --", '" OR ""="', "%"],
)
def test_sql_in_a_filter_value_matches_nothing(
    cli: Cli, notes: Trail, option: str, value: str
) -> None:
    result = cli.run("query", option, value, "--format", "json")
    exported = cli.run("export", option, value)

    assert json.loads(result.output) == []
    assert exported.output == ""
    assert len(notes.entries()) == 4


def test_a_filter_value_that_looks_like_sql_matches_exactly(cli: Cli, trail: Trail) -> None:
    trail.record({"action": "x", "actor": "' OR 1=1 --"}, {"action": "y", "actor": "mallory"})

    result = cli.run("query", "--actor", "' OR 1=1 --", "--format", "jsonl")

    assert _jsonl_actions(result.output) == ["x"]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("5000000d", "'5000000d' is out of the range of dates"),
        ("0001-01-01T00:00:00+05:00", "'0001-01-01T00:00:00+05:00' is out of the range of dates"),
        # Too long for a duration at all: like '0m', not a usable duration, so neither form.
        (
            "99999999999d",
            "'99999999999d' is neither an ISO-8601 time (2026-11-23, 2026-11-23T16:00:00Z) "
            "nor a duration back from now (15m, 24h, 7d)",
        ),
    ],
)
def test_a_time_out_of_range_is_a_usage_error(
    cli: Cli, notes: Trail, value: str, problem: str
) -> None:
    result = cli.run("query", "--since", value, code=2)

    assert result.output.startswith("Usage: audit-engine query [OPTIONS]\n")
    assert result.output.endswith(f"Error: Invalid value for '--since': {problem}\n")


# -- a damaged file ----------------------------------------------------------------------------


def _damaged(trail: Trail, *, newest: bool) -> str:
    """300 entries, then one leaf page of the audit table overwritten (the newest rows' page, or
    one in the middle), as a bad disk sector would; returns SQLite's message for it."""
    trail.record(*({"action": f"a{i}", "details": {"pad": "x" * 200}} for i in range(300)))
    with contextlib.closing(sqlite3.connect(trail.database)) as conn:
        try:
            leaves = conn.execute(
                "SELECT pageno FROM dbstat WHERE name = 'audit_entries' AND pagetype = 'leaf' "
                "ORDER BY path"
            ).fetchall()
        except sqlite3.OperationalError:  # pragma: no cover - SQLite built without dbstat
            pytest.skip("this SQLite has no dbstat table")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    page = leaves[-1][0] if newest else leaves[len(leaves) // 2][0]
    with open(trail.database, "r+b") as file:
        file.seek((page - 1) * page_size)
        file.write(b"X" * page_size)
    return "database disk image is malformed"


@pytest.mark.sqlite_only  # damages the file's pages
def test_query_on_a_damaged_database_is_an_error_naming_the_file(cli: Cli, trail: Trail) -> None:
    """Review D10: query printed a sqlite3.DatabaseError traceback."""
    problem = _damaged(trail, newest=False)

    result = cli.run("query", code=1)

    assert result.stdout == ""
    assert result.stderr == f"Error: cannot query {cli.database}: {problem}\n"


@pytest.mark.sqlite_only  # damages the file's pages
def test_tail_on_a_damaged_database_is_an_error_naming_the_file(cli: Cli, trail: Trail) -> None:
    problem = _damaged(trail, newest=True)

    result = cli.run("tail", code=1)

    assert result.stdout == ""
    assert result.stderr == f"Error: cannot read the newest entries of {cli.database}: {problem}\n"


@pytest.mark.sqlite_only  # damages the file's pages
def test_init_on_a_damaged_database_does_not_say_it_is_ready(cli: Cli, trail: Trail) -> None:
    problem = _damaged(trail, newest=False)

    result = cli.run("init", code=1)

    assert result.stdout == ""
    assert result.stderr == f"Error: {cli.database} is damaged (PRAGMA quick_check): {problem}\n"


@pytest.mark.sqlite_only  # damages the file's pages
def test_quick_check_names_what_sqlite_found(trail: Trail) -> None:
    trail.init()
    with AuditStore(trail.database) as reader:
        reader.quick_check()  # a sound file: nothing to say
        real = reader._conn
        reader._conn = _Answering([("row 3 missing from index x",), ("page 9: btreeInitPage",)])  # type: ignore[assignment]
        try:
            with pytest.raises(AuditStoreError) as raised:
                reader.quick_check()
        finally:
            reader._conn = real

    assert str(raised.value) == (
        f"{trail.database} is damaged (PRAGMA quick_check): row 3 missing from index x; "
        "page 9: btreeInitPage"
    )


class _Answering:
    """A connection whose every statement returns ``rows``."""

    def __init__(self, rows: list[tuple[str]]) -> None:
        self.rows = rows

    def execute(self, sql: str) -> list[tuple[str]]:
        return self.rows


@pytest.mark.sqlite_only  # damages the file's pages
def test_count_and_entries_after_on_a_damaged_database_raise_audit_store_error(
    trail: Trail,
) -> None:
    _damaged(trail, newest=True)

    with AuditStore(trail.database) as reader:
        with pytest.raises(AuditStoreError, match=r"^cannot query .*: database disk image"):
            list(reader.query())
        with pytest.raises(AuditStoreError, match=r"^cannot count the entries of .*: database"):
            reader.count(correlation_id="c299")  # not indexed: reads the table's pages
        with pytest.raises(AuditStoreError, match=r"^cannot read the newest entries of .*: "):
            reader.entries_after(290)


def test_any_sqlite_error_escaping_a_command_is_an_error_not_a_traceback(
    cli: Cli, trail: Trail, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command group's safety net: an sqlite3.Error the read API did not wrap."""
    trail.init()

    def broken(self: AuditStore) -> int:
        raise sqlite3.DatabaseError("file is not a database")

    monkeypatch.setattr(AuditStore, "last_id", broken)

    result = cli.run("tail", code=1)

    assert result.stderr == "Error: file is not a database\n"
