"""``init`` and ``record``: creating the database, recording from options and from JSON lines."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sqlite_utils
from support import locked

from audit_engine import AuditQueueFull, AuditService
from audit_engine.cli import record as cli_record
from audit_engine.models import AuditEntry, AuditStats
from audit_engine.storage import deadletter
from audit_engine.storage.sqlite import migrations, schema

_VERSION = schema.SCHEMA_VERSION

if TYPE_CHECKING:
    from conftest import Cli, Trail

# -- init --------------------------------------------------------------------------------------


def test_init_creates_an_empty_audit_database(cli: Cli, trail: Trail, db_path: Path) -> None:
    result = cli.run("init")

    assert result.output == f"Audit database ready at {db_path} (schema version {_VERSION})\n"
    assert db_path.is_file()
    assert trail.entries() == []


def test_init_is_idempotent_and_keeps_the_entries(cli: Cli, trail: Trail, db_path: Path) -> None:
    trail.record({"action": "doc.save"})

    first = cli.run("init")
    second = cli.run("init")

    assert (
        first.output
        == second.output
        == (f"Audit database ready at {db_path} (schema version {_VERSION})\n")
    )
    assert trail.actions() == ["doc.save"]


def test_init_migrates_a_version_1_database_and_chains_its_rows(
    cli: Cli, trail: Trail, db_path: Path
) -> None:
    entry = AuditEntry(action="doc.save", actor="alice", details={"n": 1})
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        migrations.STEPS[0](sqlite_utils.Database(conn))
        conn.execute(
            "INSERT INTO audit_entries (event_id, timestamp, actor, action, operation, outcome, "
            "details, critical) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry.event_id,
                "2026-01-02T03:04:05.000000Z",
                "alice",
                "doc.save",
                "execute",
                "success",
                entry.details_json,
                0,
            ),
        )
        conn.execute("PRAGMA user_version = 1")
        conn.commit()

    cli.run("init")

    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        assert schema.schema_version(conn) == _VERSION
    assert cli.run("verify").output == f"OK: 1 row verified; head 1:{trail.head().hash}\n"
    assert [e.event_id for e in trail.entries()] == [entry.event_id]


def test_init_refuses_a_database_of_a_newer_schema(cli: Cli, db_path: Path) -> None:
    # The version is the engine's own record (a host's PRAGMA user_version is not read).
    with contextlib.closing(schema.open_connection(db_path)) as conn:
        conn.execute(
            "UPDATE audit_engine_meta SET value = ? WHERE key = 'schema_version'",
            (str(_VERSION + 1),),
        )

    result = cli.run("init", code=1)

    assert result.output == (
        f"Error: the audit database has schema version {_VERSION + 1}; this audit_engine "
        f"supports up to {_VERSION}: upgrade audit_engine\n"
    )


def test_init_in_a_missing_directory_is_an_error(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "audit.db"

    result = cli.run("--db", str(path), "init", code=1, db=False)

    assert result.output == f"Error: cannot create the audit database {path}: no such directory\n"


def test_init_refuses_a_file_that_is_not_a_database(cli: Cli, db_path: Path) -> None:
    db_path.write_text("meeting notes\n" * 50)

    result = cli.run("init", code=1)

    assert result.output == (
        f"Error: {db_path} is not a usable audit database: file is not a database\n"
    )
    assert db_path.read_text() == "meeting notes\n" * 50


# -- record from options -----------------------------------------------------------------------


def test_record_takes_every_field_from_options(cli: Cli, trail: Trail) -> None:
    result = cli.run(
        "record",
        "--action", "doc.save",
        "--actor", "alice",
        "--operation", "update",
        "--outcome", "failure",
        "--resource-type", "doc",
        "--resource-id", "42",
        "--correlation-id", "req-7",
    )  # fmt: skip

    assert result.output == "accepted 1, filtered 0, written 1\n"
    [entry] = trail.entries()
    assert (entry.action, entry.actor, entry.operation, entry.outcome) == (
        "doc.save",
        "alice",
        "update",
        "failure",
    )
    assert (entry.resource_type, entry.resource_id, entry.correlation_id) == ("doc", "42", "req-7")
    assert (entry.details, entry.critical) == ({}, False)


def test_record_defaults_to_a_successful_execute(cli: Cli, trail: Trail) -> None:
    cli.run("record", "--action", "job.run")

    [entry] = trail.entries()
    assert (entry.operation, entry.outcome, entry.actor, entry.critical) == (
        "execute",
        "success",
        None,
        False,
    )


def test_detail_values_are_text_or_json_as_in_httpie(cli: Cli, trail: Trail) -> None:
    """Issue 11 item 21: KEY=TEXT is text (1.10 was stored as 1.1), KEY:=JSON a JSON value."""
    cli.run(
        "record", "--action", "doc.save",
        "--detail", "version=1.10",
        "--detail", "code=1e3",
        "--detail", "zip=007",
        "--detail", "title=Q3 plan",
        "--detail", "empty=",
        "--detail", "eq=a=b",
        "--detail", " spaced =x",
        "--detail", "size:=3",
        "--detail", 'tags:=["a", "b"]',
        "--detail", 'meta:={"pages": 2}',
        "--detail", "draft:=true",
        "--detail", "ratio:=1.10",
    )  # fmt: skip

    [entry] = trail.entries()
    assert entry.details == {
        "version": "1.10",
        "code": "1e3",
        "zip": "007",
        "title": "Q3 plan",
        "empty": "",
        "eq": "a=b",
        "spaced": "x",
        "size": 3,
        "tags": ["a", "b"],
        "meta": {"pages": 2},
        "draft": True,
        "ratio": 1.1,
    }


@pytest.mark.parametrize("detail", ["novalue", "=x", " =x", ":=1"])
def test_a_detail_without_key_is_a_usage_error_that_creates_nothing(
    cli: Cli, trail: Trail, detail: str
) -> None:
    """--detail is checked while the arguments are parsed, before the database is opened."""
    result = cli.run("record", "--action", "doc.save", "--detail", detail, code=2)

    assert result.output.startswith("Usage: audit-engine record [OPTIONS]\n")
    assert result.output.endswith(
        f"\nError: Invalid value for '--detail': --detail takes KEY=TEXT or KEY:=JSON, "
        f"got {detail!r}\n"
    )
    assert not trail.exists()


def test_a_json_detail_that_is_not_json_is_a_usage_error(cli: Cli, trail: Trail) -> None:
    result = cli.run("record", "--action", "doc.save", "--detail", "title:=Q3 plan", code=2)

    assert result.output.endswith(
        "\nError: Invalid value for '--detail': title:= takes a JSON value: Expecting value at "
        "character 0 (for text, use title=...)\n"
    )
    assert not trail.exists()


def test_a_detail_nested_too_deeply_is_a_usage_error(cli: Cli, trail: Trail) -> None:
    """Issue 11 item 11: 3 000 brackets raised RecursionError, a traceback; as text they are
    just text."""
    as_json = cli.run("record", "--action", "doc.save", "--detail", "k:=" + "[" * 3000, code=2)
    as_text = cli.run("record", "--action", "doc.save", "--detail", "k=" + "[" * 3000)

    assert as_json.output.endswith(
        "\nError: Invalid value for '--detail': k:= takes a JSON value: this one is nested too "
        "deeply\n"
    )
    assert as_text.output == "accepted 1, filtered 0, written 1\n"
    assert [e.details for e in trail.entries()] == [{"k": "[" * 3000}]


def test_a_detail_that_is_not_storable_is_reported(cli: Cli, trail: Trail) -> None:
    result = cli.run("record", "--action", "doc.save", "--detail", "x:=1e999", code=1)

    assert result.output == "Error: invalid entry: details.x is inf, which JSON cannot hold\n"
    assert trail.entries() == []


def test_a_control_character_in_a_field_is_reported(cli: Cli) -> None:
    result = cli.run("record", "--action", "doc.save", "--actor", "eve\x1b[2J", code=1)

    assert result.output == "Error: invalid entry: actor must not contain control characters\n"


def test_record_without_action_is_a_usage_error(cli: Cli, trail: Trail) -> None:
    result = cli.run("record", "--actor", "alice", code=2)

    assert result.output.endswith("\nError: Missing option '--action' (or use --stdin).\n")
    assert result.output.startswith("Usage: audit-engine record [OPTIONS]\n")
    assert not trail.exists()


def test_record_with_an_unknown_operation_is_a_usage_error(cli: Cli) -> None:
    result = cli.run("record", "--action", "x", "--operation", "bogus", code=2)

    assert result.output.endswith(
        "Error: Invalid value for '--operation': 'bogus' is not one of "
        "'create', 'read', 'update', 'delete', 'execute'.\n"
    )


def test_the_policy_from_the_environment_filters_a_read(cli: Cli, trail: Trail) -> None:
    filtered = cli.run("record", "--action", "doc.open", "--operation", "read")
    kept = cli.run(
        "record", "--action", "doc.view", "--operation", "read", env={"AUDIT_TRAIL_LEVEL": "all"}
    )

    # The default level, writes_only, leaves reads out.
    assert filtered.output == "accepted 0, filtered 1, written 0\n"
    assert kept.output == "accepted 1, filtered 0, written 1\n"
    assert trail.actions() == ["doc.view"]


def test_a_critical_entry_bypasses_the_policy(cli: Cli, trail: Trail) -> None:
    result = cli.run(
        "record", "--action", "patient.open", "--operation", "read", "--critical",
        env={"AUDIT_TRAIL_LEVEL": "deletes_only"},
    )  # fmt: skip

    assert result.output == "accepted 1, filtered 0, written 1\n"
    [entry] = trail.entries()
    assert (entry.action, entry.critical) == ("patient.open", True)


def test_a_bad_setting_in_the_environment_is_an_error(cli: Cli) -> None:
    result = cli.run("record", "--action", "x", env={"AUDIT_TRAIL_LEVEL": "bogus"}, code=1)

    assert result.output == (
        "Error: invalid setting level (AUDIT_TRAIL_LEVEL): Input should be 'all', 'writes_only', "
        "'mutations_only', 'deletes_only' or 'failures_only' (got 'bogus')\n"
    )


def test_record_into_a_missing_directory_is_an_error(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "gone" / "audit.db"

    result = cli.run("--db", str(path), "record", "--action", "x", code=1, db=False)

    assert result.output == f"Error: cannot create the audit database {path}: no such directory\n"


# -- record --stdin ----------------------------------------------------------------------------


def test_stdin_records_every_line(cli: Cli, trail: Trail) -> None:
    lines = [
        {"action": "deploy.start", "actor": "ci", "details": {"sha": "abc"}},
        {"action": "deploy.finish", "operation": "update", "outcome": "failure"},
        {
            "action": "backfill",
            "event_id": "evt-fixed",
            "timestamp": "2026-01-02T03:04:05Z",
            "critical": True,
        },
    ]

    result = cli.run("record", "--stdin", input="".join(json.dumps(x) + "\n" for x in lines))

    assert result.output == "accepted 3, filtered 0, written 3\n"
    first, second, third = trail.entries()
    assert (first.action, first.actor, first.details) == ("deploy.start", "ci", {"sha": "abc"})
    assert (second.operation, second.outcome) == ("update", "failure")
    assert (third.event_id, third.timestamp, third.critical) == (
        "evt-fixed",
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        True,
    )


def test_stdin_reports_bad_lines_by_number_and_records_the_good_ones(
    cli: Cli, trail: Trail
) -> None:
    lines = [
        '{"action": "one"}',
        "not json",
        "",
        '["a", "list"]',
        '{"action": ""}',
        '{"action": "x", "colour": "red"}',
        '{"action": "x", "timestamp": "2026-01-02T03:04:05"}',
        '{"action": "two", "operation": "delete"}',
    ]

    result = cli.run("record", "--stdin", input="\n".join(lines) + "\n", code=1)

    assert result.stdout == "accepted 2, filtered 0, written 2\n"
    assert result.stderr == (
        "Error: line 2: not JSON (Expecting value)\n"
        "Error: line 4: not a JSON object of entry fields\n"
        "Error: line 5: invalid entry: action: String should have at least 1 character\n"
        "Error: line 6: invalid entry: colour: Extra inputs are not permitted\n"
        "Error: line 7: invalid entry: timestamp: timestamp must be timezone-aware "
        "(got a naive datetime); use UTC\n"
    )
    assert trail.actions() == ["one", "two"]


def test_stdin_counts_what_the_policy_filtered(cli: Cli, trail: Trail) -> None:
    lines = [
        {"action": "doc.open", "operation": "read"},
        {"action": "doc.save", "operation": "update"},
        {"action": "doc.peek", "operation": "read", "critical": True},
    ]

    result = cli.run("record", "--stdin", input="".join(json.dumps(x) + "\n" for x in lines))

    assert result.output == "accepted 2, filtered 1, written 2\n"
    assert trail.actions() == ["doc.save", "doc.peek"]


def test_stdin_with_no_lines_records_nothing(cli: Cli) -> None:
    result = cli.run("record", "--stdin", input="")

    assert result.output == "accepted 0, filtered 0, written 0\n"


@pytest.mark.parametrize(
    "options", [["--action", "x"], ["--detail", "k=v"]], ids=["action", "detail"]
)
def test_stdin_with_entry_options_is_a_usage_error(
    cli: Cli, trail: Trail, options: list[str]
) -> None:
    result = cli.run("record", "--stdin", *options, input='{"action": "y"}\n', code=2)

    assert result.output.endswith(
        "\nError: --stdin takes entries from standard input, not from options.\n"
    )
    assert not trail.exists()


def test_a_reused_event_id_is_dead_lettered_counted_and_an_error(cli: Cli, trail: Trail) -> None:
    """Issue 11 item 2: the command exited 0 although an entry was not written."""
    lines = [
        '{"action": "first", "event_id": "evt-1"}',
        '{"action": "again", "event_id": "evt-1"}',
        '{"action": "third"}',
    ]

    result = cli.run("record", "--stdin", input="\n".join(lines) + "\n", code=1)

    assert result.stdout == "accepted 3, filtered 0, written 2, dead-lettered 1\n"
    cause = (
        "UniqueViolation: duplicate key value violates unique constraint "
        '"ux_audit_entries_event_id"'
        if trail.is_postgres
        else "IntegrityError: UNIQUE constraint failed: audit_entries.event_id"
    )
    assert result.stderr.startswith(f"Error: 1 entry was not committed ({cause}")
    assert result.stderr.endswith(
        f"): kept in {trail.dead_letter_file}; `audit-engine replay-deadletter` stores them "
        "once the cause is fixed\n"
    )
    assert trail.actions() == ["first", "third"]
    [kept] = list(deadletter.read(trail.dead_letter_file))
    assert kept[1] is not None
    assert kept[1].action == "again"


def _dead_lettered_actions(trail: Trail) -> list[str]:
    kept = deadletter.read(trail.dead_letter_file)
    return [line[1].action for line in kept if line[1] is not None]


def test_an_entry_the_database_refuses_is_an_error(cli: Cli, trail: Trail) -> None:
    """Issue 11 item 2: exit 1 whenever an entry was not committed."""
    trail.refuse_inserts()

    result = cli.run("record", "--action", "doc.save", code=1)

    assert result.stdout == "accepted 1, filtered 0, written 0, dead-lettered 1\n"
    cause = "RaiseException: no more rows" if trail.is_postgres else "IntegrityError: no more rows"
    assert result.stderr.startswith(f"Error: 1 entry was not committed ({cause}")
    assert result.stderr.endswith(
        f"): kept in {trail.dead_letter_file}; `audit-engine replay-deadletter` stores them "
        "once the cause is fixed\n"
    )


def test_a_critical_entry_the_database_refuses_is_an_error(cli: Cli, trail: Trail) -> None:
    """Issue 11 item 2, with --critical: nothing written is never exit 0."""
    trail.refuse_inserts()

    result = cli.run("record", "--action", "doc.save", "--critical", code=1)

    assert result.stderr.startswith("Error: ")
    assert "no more rows" in result.stderr
    assert "written 1" not in result.output
    assert _dead_lettered_actions(trail) == ["doc.save"]


def test_a_critical_line_the_database_refuses_does_not_stop_the_others(
    cli: Cli, trail: Trail
) -> None:
    trail.refuse_inserts()
    lines = ['{"action": "one", "critical": true}', '{"action": "two", "critical": true}']

    result = cli.run("record", "--stdin", input="\n".join(lines) + "\n", code=1)

    assert result.stderr.startswith("Error: ")
    assert "no more rows" in result.stderr
    assert _dead_lettered_actions(trail) == ["one", "two"]


def test_a_line_nested_too_deeply_is_a_bad_line(cli: Cli, trail: Trail) -> None:
    """Issue 11 item 11: a line nested 5 000 deep was a RecursionError traceback, and the good
    lines after it were not recorded."""
    deep = '{"action": "x", "details": {"k": ' + "[" * 5000 + "]" * 5000 + "}}"
    lines = ['{"action": "one"}', deep, '{"action": "two"}']

    result = cli.run("record", "--stdin", input="\n".join(lines) + "\n", code=1)

    assert result.stdout == "accepted 2, filtered 0, written 2\n"
    assert result.stderr == "Error: line 2: nested too deeply to read\n"
    assert trail.actions() == ["one", "two"]


def test_a_line_whose_details_are_too_deep_to_store_is_a_bad_line(
    cli: Cli, trail: Trail, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nesting JSON can read but the entry cannot take: a bad line, not a traceback."""

    def too_deep(*args: object, **kwargs: object) -> object:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(AuditEntry, "model_validate", too_deep)
    result = cli.run("record", "--stdin", input='{"action": "one"}\n', code=1)

    assert result.stdout == "accepted 0, filtered 0, written 0\n"
    assert result.stderr == "Error: line 1: invalid entry: details are nested too deeply\n"


def test_a_line_naming_a_record_keyword_is_a_bad_line(cli: Cli, trail: Trail) -> None:
    """A line holds entry fields only: a keyword of AuditService.record() is an unknown key."""
    lines = ['{"action": "one"}', '{"action": "x", "connection": "oops"}', '{"action": "two"}']

    result = cli.run("record", "--stdin", input="\n".join(lines) + "\n", code=1)

    assert result.stdout == "accepted 2, filtered 0, written 2\n"
    assert result.stderr == (
        "Error: line 2: invalid entry: connection: Extra inputs are not permitted\n"
    )
    assert trail.actions() == ["one", "two"]


def test_a_line_that_is_not_utf8_is_a_bad_line(cli: Cli, trail: Trail) -> None:
    """Standard input is read as bytes: one undecodable line does not stop the others."""
    data = b'{"action": "one"}\n\xff\xfe\n{"action": "two"}\n'

    result = cli.run("record", "--stdin", input=data, code=1)

    assert result.stdout == "accepted 2, filtered 0, written 2\n"
    assert result.stderr == "Error: line 2: not UTF-8 text\n"
    assert trail.actions() == ["one", "two"]


def test_record_does_not_purge_old_entries(cli: Cli, trail: Trail) -> None:
    """Recording one entry has no retention side effect, even with cleanup enabled by the
    environment: purging is the job of `purge` or of a long-running service's cleanup thread.
    """
    old = datetime.now(UTC) - timedelta(days=200)
    trail.record({"action": "old.0", "timestamp": old})
    env = {"AUDIT_TRAIL_RETENTION_DAYS": "1", "AUDIT_TRAIL_CLEANUP_ENABLED": "true"}

    result = cli.run("record", "--action", "new.0", env=env)

    assert result.output == "accepted 1, filtered 0, written 1\n"
    assert trail.actions() == ["old.0", "new.0"]
    assert "Cleanup:    never\n" in cli.run("stats").output


class _Undrained(AuditService):
    """A service whose close() timed out and whose entries reached only the log."""

    logged_only = 0

    def close(self, timeout: float | None = None) -> bool:
        super().close(timeout)
        return False

    def stats(self) -> AuditStats:
        return super().stats().model_copy(update={"logged_only": self.logged_only})


@pytest.mark.parametrize(
    ("logged_only", "problem"),
    [
        (0, "Error: the writer did not finish committing the accepted entries\n"),
        (
            2,
            "Error: 2 entries were not committed and could not be kept in the dead-letter file "
            "either: they are only in the log\n",
        ),
    ],
    ids=["close-timed-out", "only-logged"],
)
def test_entries_not_drained_or_only_logged_are_an_error(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, logged_only: int, problem: str
) -> None:
    """Issue 11 item 2: close() returning False, or entries only in the log, is never exit 0."""
    monkeypatch.setattr(_Undrained, "logged_only", logged_only)
    monkeypatch.setattr(cli_record, "AuditService", _Undrained)

    result = cli.run("record", "--action", "doc.save", code=1)

    assert result.stdout == "accepted 1, filtered 0, written 1\n"
    assert result.stderr == problem


def test_a_line_with_an_integer_too_long_to_read_is_a_bad_line(cli: Cli, trail: Trail) -> None:
    """Review D4: json.loads raises a plain ValueError for an integer of more than 4300 digits;
    it ended the run with no line number, no summary, the earlier errors unprinted and the later
    good lines unrecorded."""
    huge = '{"action": "x", "details": {"n": ' + "9" * 5000 + "}}"
    lines = ['{"action": "a1"}', '["bad line 2"]', huge, '{"action": "a4"}']

    result = cli.run("record", "--stdin", input="\n".join(lines) + "\n", code=1)

    assert result.stdout == "accepted 2, filtered 0, written 2\n"
    assert result.stderr == (
        "Error: line 2: not a JSON object of entry fields\n"
        "Error: line 3: not JSON the engine can read (an integer of more than 4300 digits)\n"
    )
    assert trail.actions() == ["a1", "a4"]


def test_a_line_the_queue_has_no_room_for_is_a_bad_line(
    cli: Cli, trail: Trail, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any error about one line (here: a full queue) is reported with its number; the rest go on."""
    real_record = AuditService.record

    def record(self: AuditService, *args: object, **kwargs: object) -> str | None:
        entry = args[0]
        if isinstance(entry, AuditEntry) and entry.action == "full":
            raise AuditQueueFull("the audit queue stayed full for 10.0s")
        return real_record(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(AuditService, "record", record)
    lines = ['{"action": "one"}', '{"action": "full"}', '{"action": "two"}']

    result = cli.run("record", "--stdin", input="\n".join(lines) + "\n", code=1)

    assert result.stdout == "accepted 2, filtered 0, written 2\n"
    assert result.stderr == "Error: line 2: the audit queue stayed full for 10.0s\n"
    assert trail.actions() == ["one", "two"]


# -- a critical entry not confirmed in time: the final outcome decides -------------------------


@pytest.fixture
def busy_until_close(cli: Cli, trail: Trail, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The database is locked by another program until the command finishes (waits for its
    entries: flush, then close): a critical entry is not confirmed within block_timeout (0.1 s),
    then the final wait commits it."""
    trail.init()
    monkeypatch.setenv("AUDIT_TRAIL_BLOCK_TIMEOUT", "0.1")
    real_close, real_flush = AuditService.close, AuditService.flush
    with locked(cli.database) as lock:

        def close(self: AuditService, timeout: float | None = None) -> bool:
            lock.release()
            return real_close(self, timeout)

        def flush(self: AuditService, timeout: float | None = None) -> bool:
            lock.release()
            return real_flush(self, timeout)

        monkeypatch.setattr(AuditService, "close", close)
        monkeypatch.setattr(AuditService, "flush", flush)
        yield


@pytest.mark.sqlite_only  # busy_until_close holds SQLite's file lock
@pytest.mark.usefixtures("busy_until_close")
def test_a_critical_entry_committed_only_at_close_is_a_success(cli: Cli, trail: Trail) -> None:
    """Review D8: exit 1 "not confirmed" although close() then committed the entry (a retry
    would have recorded it twice)."""
    result = cli.run("record", "--action", "crit", "--critical")

    assert result.stdout == "accepted 1, filtered 0, written 1\n"
    assert result.stderr == (
        "Note: the critical entry was committed when the command finished, not within "
        "block_timeout (0.1s): the database was busy\n"
    )
    assert trail.actions() == ["crit"]


@pytest.mark.sqlite_only  # busy_until_close holds SQLite's file lock
@pytest.mark.usefixtures("busy_until_close")
def test_a_critical_line_committed_only_at_close_is_a_success(cli: Cli, trail: Trail) -> None:
    lines = ['{"action": "crit", "critical": true}', '{"action": "two"}']

    result = cli.run("record", "--stdin", input="\n".join(lines) + "\n")

    assert result.stdout == "accepted 2, filtered 0, written 2\n"
    assert result.stderr == (
        "Note: line 1: the critical entry was committed when the command finished, not within "
        "block_timeout (0.1s): the database was busy\n"
    )
    assert trail.actions() == ["crit", "two"]


@pytest.fixture
def refused(trail: Trail) -> None:
    trail.refuse_inserts()


@pytest.mark.sqlite_only  # busy_until_close holds SQLite's file lock
@pytest.mark.usefixtures("refused", "busy_until_close")
def test_a_critical_entry_dead_lettered_after_the_timeout_is_an_error(
    cli: Cli, trail: Trail
) -> None:
    result = cli.run("record", "--action", "crit", "--critical", code=1)

    assert result.stdout == "accepted 1, filtered 0, written 0, dead-lettered 1\n"
    [not_confirmed, kept] = result.stderr.splitlines()
    assert re.fullmatch(
        r"Error: critical entry \S+ was not confirmed committed within 0\.1s \(block_timeout\); "
        r"it stays queued and is still written when the database allows; when the command "
        r"finished, not every entry was committed \(see below\)",
        not_confirmed,
    )
    assert kept == (
        "Error: 1 entry was not committed (IntegrityError: no more rows): "
        f"kept in {cli.database}.deadletter.jsonl; `audit-engine replay-deadletter` stores them "
        "once the cause is fixed"
    )
    assert _dead_lettered_actions(trail) == ["crit"]
