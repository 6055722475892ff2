"""``verify``, ``purge``, ``stats``, ``replay-deadletter`` and the global --db of ``demo``."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from support import rows_of

from audit_engine import AuditEntry, AuditStore
from audit_engine.storage.deadletter import DeadLetterFile
from audit_engine.storage.sqlite import schema as sqlite_schema

if TYPE_CHECKING:
    from conftest import Cli, Trail

HEX64 = "[0-9a-f]{64}"


@pytest.fixture
def three(trail: Trail) -> Trail:
    trail.record(
        {"action": "doc.create", "actor": "alice", "operation": "create"},
        {"action": "doc.save", "actor": "bob", "operation": "update"},
        {"action": "doc.delete", "actor": "alice", "operation": "delete", "outcome": "failure"},
    )
    return trail


# -- verify ------------------------------------------------------------------------------------


def test_verify_ok_prints_one_line_with_the_head(cli: Cli, three: Trail) -> None:
    result = cli.run("verify")

    assert result.output == f"OK: 3 rows verified; head 3:{three.head().hash}\n"
    assert re.fullmatch(rf"OK: 3 rows verified; head 3:{HEX64}\n", result.output)


def test_verify_of_an_empty_trail(cli: Cli, trail: Trail) -> None:
    trail.init()

    assert cli.run("verify").output == "OK: 0 rows verified\n"


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (
            "UPDATE audit_entries SET actor = 'mallory' WHERE id = 2",
            "chain broken at row 2: row 2 was modified (its hash does not match its contents) "
            "(1 row verified before it)",
        ),
        (
            "DELETE FROM audit_entries WHERE id = 2",
            "chain broken at row 3: row 2 is missing (deleted from the chain) "
            "(1 row verified before it)",
        ),
        (
            "UPDATE audit_entries SET details = '{\"x\":1}' WHERE id = 3",
            "chain broken at row 3: row 3 was modified (its hash does not match its contents) "
            "(2 rows verified before it)",
        ),
    ],
    ids=["modified", "deleted", "details"],
)
def test_verify_names_the_first_bad_row(cli: Cli, three: Trail, tamper: str, message: str) -> None:
    three.execute(tamper)

    result = cli.run("verify", code=1)

    assert result.output == f"Error: {message}\n"
    assert result.stdout == ""


def test_verify_against_the_published_head(cli: Cli, three: Trail) -> None:
    head = three.head()

    result = cli.run("verify", "--expected-head", f"{head.id}:{head.hash}")

    assert result.output == f"OK: 3 rows verified; head 3:{head.hash}\n"


def test_verify_against_an_earlier_head_after_more_writes(cli: Cli, three: Trail) -> None:
    earlier = three.head()
    three.record({"action": "doc.archive"})

    result = cli.run("verify", "--expected-head", f"{earlier.id}:{earlier.hash}")

    assert result.output == f"OK: 4 rows verified; head 4:{three.head().hash}\n"


def test_verify_detects_rows_deleted_from_the_end(cli: Cli, three: Trail) -> None:
    head = three.head()
    three.execute("DELETE FROM audit_entries WHERE id = 3")

    plain = cli.run("verify")
    against_head = cli.run("verify", "--expected-head", f"{head.id}:{head.hash}", code=1)

    # Without the published head a truncated chain still looks whole.
    assert plain.output.startswith("OK: 2 rows verified; head 2:")
    assert against_head.output == (
        "Error: chain broken at row 3: the chain ends at id 2, before the expected head 3: "
        "rows were deleted from its end (2 rows verified before it)\n"
    )


def test_verify_detects_a_head_with_another_hash(cli: Cli, three: Trail) -> None:
    result = cli.run("verify", "--expected-head", f"3:{'a' * 64}", code=1)

    # Only the rows before the bad one count as verified.
    assert result.output == (
        "Error: chain broken at row 3: row 3 differs from the expected head (hash mismatch) "
        "(2 rows verified before it)\n"
    )


@pytest.mark.parametrize(
    "head", ["abc", "3", f"x:{'a' * 64}", "3:abc", f"3-{'a' * 64}", f"-3:{'a' * 64}", ""]
)
def test_a_malformed_expected_head_is_a_usage_error(cli: Cli, three: Trail, head: str) -> None:
    result = cli.run("verify", "--expected-head", head, code=2)

    assert result.output.startswith("Usage: audit-engine verify [OPTIONS]\n")
    assert result.output.endswith(
        "Error: Invalid value for '--expected-head': use ID:HASH as printed by verify\n"
    )


# -- purge -------------------------------------------------------------------------------------


@pytest.fixture
def aged(trail: Trail) -> Trail:
    """Three entries recorded 200 days ago, then two recorded now."""
    old = datetime.now(UTC) - timedelta(days=200)
    trail.record(
        *({"action": f"old.{n}", "timestamp": old + timedelta(seconds=n)} for n in range(3)),
        {"action": "new.0"},
        {"action": "new.1"},
    )
    return trail


def _cutoff(text: str, verb: str, count: int) -> datetime:
    entries = "entry" if count == 1 else "entries"
    match = re.fullmatch(
        rf"{verb} {count} {entries} older than (\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d) UTC(.*)\n", text
    )
    assert match, text
    return datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)


def test_purge_dry_run_deletes_nothing(cli: Cli, aged: Trail) -> None:
    result = cli.run("purge", "--older-than", "90d", "--dry-run")

    cutoff = _cutoff(result.output, "Would purge", 3)
    assert abs(cutoff - (datetime.now(UTC) - timedelta(days=90))) < timedelta(minutes=1)
    assert len(aged.entries()) == 5
    assert cli.run("stats", "--json").output.count('"last_cleanup": null') == 1


def test_purge_deletes_the_old_entries_in_batches(cli: Cli, aged: Trail) -> None:
    result = cli.run("purge", "--older-than", "90d", "--batch-size", "2")

    _cutoff(result.output, "Purged", 3)
    assert re.search(r" UTC in 2 batches \(\d+\.\d\ds\)\n$", result.output), result.output
    assert aged.actions() == ["new.0", "new.1"]
    # The rest of the chain still proves itself.
    assert cli.run("verify").output == f"OK: 2 rows verified; head 5:{aged.head().hash}\n"


def test_purge_in_one_batch_by_default(cli: Cli, aged: Trail) -> None:
    result = cli.run("purge", "--older-than", "12w")

    assert re.search(r"^Purged 3 entries .* UTC in 1 batch \(", result.output), result.output
    assert result.stderr == ""  # no progress bar off a terminal


def test_purge_of_one_entry_in_the_singular(cli: Cli, trail: Trail) -> None:
    trail.record(
        {"action": "old.0", "timestamp": datetime.now(UTC) - timedelta(days=200)},
        {"action": "new.0"},
    )

    planned = cli.run("purge", "--older-than", "90d", "--dry-run")
    result = cli.run("purge", "--older-than", "90d")

    _cutoff(planned.output, "Would purge", 1)
    assert re.fullmatch(
        r"Purged 1 entry older than \S+ \S+ UTC in 1 batch \(\d+\.\d\ds\)\n", result.output
    ), result.output
    assert trail.actions() == ["new.0"]


def test_purge_pads_a_cutoff_year_below_1000(cli: Cli, aged: Trail) -> None:
    result = cli.run("purge", "--older-than", "730000d", "--dry-run")

    cutoff = _cutoff(result.output, "Would purge", 0)
    expected = datetime.now(UTC) - timedelta(days=730000)
    assert result.output.startswith(f"Would purge 0 entries older than {expected.year:04d}-")
    assert abs(cutoff - expected) < timedelta(minutes=1)
    assert len(aged.entries()) == 5


def test_purge_with_nothing_old_enough(cli: Cli, aged: Trail) -> None:
    result = cli.run("purge", "--older-than", "365d")

    assert re.search(r"^Purged 0 entries .* UTC in 0 batches \(", result.output), result.output
    assert len(aged.entries()) == 5


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0d", "'0d' is not a positive duration"),
        ("0.0s", "'0.0s' is not a positive duration"),
        # Issue 11 item 12: rounded to no age at all, then refused by purge with exit 1.
        ("0.0000001s", "'0.0000001s' is shorter than a microsecond, the smallest duration"),
        ("90", "'90' is not a duration: a number and a unit (s, m, h, d, w), e.g. 15m, 24h, 7d"),
        ("-5d", "'-5d' is not a duration: a number and a unit (s, m, h, d, w), e.g. 15m, 24h, 7d"),
        ("3y", "'3y' is not a duration: a number and a unit (s, m, h, d, w), e.g. 15m, 24h, 7d"),
        ("90 days", "'90 days' is not a duration: a number and a unit (s, m, h, d, w), e.g. 15m, "
         "24h, 7d"),
    ],
)  # fmt: skip
def test_a_bad_age_is_a_usage_error(cli: Cli, aged: Trail, value: str, problem: str) -> None:
    result = cli.run("purge", "--older-than", value, code=2)

    assert result.output.startswith("Usage: audit-engine purge [OPTIONS]\n")
    assert result.output.endswith(f"Error: Invalid value for '--older-than': {problem}\n")
    assert len(aged.entries()) == 5


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ([], "Error: Missing option '--older-than'.\n"),
        (
            ["--older-than", "90d", "--batch-size", "0"],
            "Error: Invalid value for '--batch-size': 0 is not in the range x>=1.\n",
        ),
        (
            ["--older-than", "90d", "--batch-size", "9223372036854775808"],
            "Error: Invalid value for '--batch-size': 9223372036854775808 is more than the "
            "database can count (at most 9223372036854775807)\n",
        ),
    ],
)
def test_purge_usage_errors(cli: Cli, aged: Trail, options: list[str], message: str) -> None:
    assert cli.run("purge", *options, code=2).output.endswith(message)


def test_an_age_too_long_for_a_duration_is_a_usage_error(cli: Cli, aged: Trail) -> None:
    result = cli.run("purge", "--older-than", "99999999999d", "--dry-run", code=2)

    assert result.output.startswith("Usage: audit-engine purge [OPTIONS]\n")
    assert result.output.endswith(
        "Error: Invalid value for '--older-than': '99999999999d' is too long a duration\n"
    )
    assert len(aged.entries()) == 5


def test_an_age_reaching_before_year_1_is_a_usage_error(cli: Cli, aged: Trail) -> None:
    result = cli.run("purge", "--older-than", "5000000d", "--dry-run", code=2)

    assert "Error: Invalid value for '--older-than': '5000000d' reaches before year 1" in (
        result.output
    )
    assert len(aged.entries()) == 5


# -- stats -------------------------------------------------------------------------------------


def test_stats_shows_every_section(cli: Cli, three: Trail, db_path: Path) -> None:
    result = cli.run("stats")

    lines = result.output.splitlines()
    day = f"{datetime.now(UTC):%Y-%m-%d}"
    assert re.fullmatch(
        rf"Database:   {re.escape(str(db_path))} "
        rf"\([\d,]+ bytes, schema v{sqlite_schema.SCHEMA_VERSION}\)",
        lines[0],
    )
    assert re.fullmatch(rf"Entries:    3 \({day}T\S+Z \.\. {day}T\S+Z\)", lines[1])
    assert lines[2:4] == ["Chain:      ok (3 rows)", "Cleanup:    never"]
    sections: dict[str, dict[str, int]] = {}
    for line in lines[4:]:
        if not line.startswith(" "):
            title = line.rstrip(":")
            sections[title] = {}
        else:
            key, value = line.split()
            sections[title][key] = int(value)
    assert sections == {
        "By operation": {"create": 1, "delete": 1, "update": 1},
        "By outcome": {"failure": 1, "success": 2},
        "By action": {"doc.create": 1, "doc.delete": 1, "doc.save": 1},
        "By day": {day: 3},
    }


def test_stats_of_an_empty_trail(cli: Cli, trail: Trail) -> None:
    trail.init()

    lines = cli.run("stats").output.splitlines()

    assert lines[1:4] == ["Entries:    0 (- .. -)", "Chain:      ok (0 rows)", "Cleanup:    never"]
    assert lines[4:] == ["By operation:", "By outcome:", "By action:", "By day:"]


def test_stats_reports_a_broken_chain(cli: Cli, three: Trail) -> None:
    three.execute("UPDATE audit_entries SET action = 'doc.read' WHERE id = 1")

    result = cli.run("stats")

    assert (
        "Chain:      BROKEN at row 1: row 1 was modified (its hash does not match its contents)\n"
        in result.output
    )


def test_stats_reports_purge_records_it_refuses_without_a_row(cli: Cli, aged: Trail) -> None:
    # A purge younger than the retention setting (90 days by default) is refused by verify.
    cli.run("purge", "--older-than", "30d")

    result = cli.run("stats")

    assert "Chain:      BROKEN: purge records refused: anchor 1 purged rows younger than the " in (
        result.output
    )
    assert "row None" not in result.output


def test_stats_shows_the_last_cleanup_run(cli: Cli, aged: Trail) -> None:
    cli.run("purge", "--older-than", "90d", "--batch-size", "2")

    result = cli.run("stats")

    assert re.search(r"^Cleanup:    \S+: 3 rows in 2 batches$", result.output, re.MULTILINE)
    assert "Entries:    2 (" in result.output


def test_stats_json(cli: Cli, aged: Trail, db_path: Path) -> None:
    cli.run("purge", "--older-than", "90d")

    result = cli.run("stats", "--json")

    summary = json.loads(result.output)
    assert summary["path"] == str(db_path)
    assert summary["entries"] == 2
    assert summary["file_bytes"] > 0
    assert summary["schema_version"] == sqlite_schema.SCHEMA_VERSION
    assert summary["by_operation"] == {"execute": 2}
    assert summary["by_action"] == {"new.0": 1, "new.1": 1}
    assert summary["by_outcome"] == {"success": 2}
    assert list(summary["by_day"].values()) == [2]
    assert summary["chain"] == {
        "ok": True,
        "rows_checked": 2,
        "first_bad_id": None,
        "reason": None,
        "head": {"id": 5, "hash": aged.head().hash},
        "anchors_checked": 1,
        "cleanup_runs_checked": 1,
        "warnings": [],
        "unchecked_from": None,
        # stats holds the trail to no checkpoint log (verify --checkpoints does).
        "checkpoints_checked": 0,
        "checkpoints_purged": 0,
        "checkpoint_line": None,
        "checkpoint_problem": None,
    }
    assert summary["last_cleanup"]["rows_deleted"] == 3
    assert summary["last_cleanup"]["batches"] == 1


# -- replay-deadletter -------------------------------------------------------------------------


def _dead(*actions: str) -> list[AuditEntry]:
    return [AuditEntry(action=action, actor="alice", details={"n": n}) for n, action in
            enumerate(actions)]  # fmt: skip


def test_replay_imports_the_entries_and_removes_the_file(cli: Cli, three: Trail) -> None:
    path = three.dead_letter_file
    lost = _dead("doc.rename", "doc.share")
    DeadLetterFile(path).append(rows_of(lost), "disk I/O error")

    result = cli.run("replay-deadletter")

    assert result.output == "Replayed 2 entries (0 already stored); 0 lines kept\n"
    assert not path.exists()
    stored = three.entries()
    assert [e.event_id for e in stored[3:]] == [e.event_id for e in lost]
    assert stored[4].details == {"n": 1}
    assert cli.run("verify").output.startswith("OK: 5 rows verified; head 5:")


def test_replay_drops_entries_already_stored(cli: Cli, trail: Trail) -> None:
    [stored_id] = trail.record({"action": "doc.save", "event_id": "evt-1"})
    [stored] = trail.entries()
    path = trail.dead_letter_file
    DeadLetterFile(path).append(rows_of([stored, *_dead("doc.close")]), "database is locked")

    result = cli.run("replay-deadletter")

    assert result.output == "Replayed 1 entry (1 already stored); 0 lines kept\n"
    assert trail.entries()[0].event_id == stored_id
    assert trail.actions() == ["doc.save", "doc.close"]
    assert not path.exists()


def test_replay_keeps_and_reports_a_bad_line(cli: Cli, three: Trail) -> None:
    path = three.dead_letter_file
    DeadLetterFile(path).append(rows_of(_dead("doc.rename")), "disk full")
    with path.open("a", encoding="utf-8") as file:
        file.write('{"entry": {"action": "torn"\n')
    DeadLetterFile(path).append(rows_of(_dead("doc.share")), "disk full")

    result = cli.run("replay-deadletter", code=1)

    assert result.stdout == "Replayed 2 entries (0 already stored); 1 line kept\n"
    assert result.stderr == ("Error: line 2: incomplete line (torn write?), kept\n")
    assert path.read_text(encoding="utf-8") == '{"entry": {"action": "torn"\n'
    assert three.actions()[3:] == ["doc.rename", "doc.share"]


def test_replay_a_file_named_with_file(cli: Cli, three: Trail, tmp_path: Path) -> None:
    path = tmp_path / "copied-from-the-server.jsonl"
    DeadLetterFile(path).append(rows_of(_dead("doc.export")), "disk I/O error")

    result = cli.run("replay-deadletter", "--file", str(path))

    assert result.output == "Replayed 1 entry (0 already stored); 0 lines kept\n"
    assert three.actions()[-1] == "doc.export"
    assert not path.exists()


def test_replay_without_a_dead_letter_file_says_so_and_succeeds(cli: Cli, three: Trail) -> None:
    # Cron jobs run it: nothing to replay is not a failure (issue 11, item 12).
    result = cli.run("replay-deadletter")

    assert result.output == (
        f"Nothing to replay: no dead-letter file at {three.dead_letter_file}\n"
    )


def test_replay_of_a_missing_file_named_with_file(cli: Cli, three: Trail, tmp_path: Path) -> None:
    result = cli.run("replay-deadletter", "--file", str(tmp_path / "nope.jsonl"))

    assert result.output == f"Nothing to replay: no dead-letter file at {tmp_path / 'nope.jsonl'}\n"


def test_replay_keeps_a_line_that_is_not_utf8_byte_for_byte(cli: Cli, three: Trail) -> None:
    path = three.dead_letter_file
    DeadLetterFile(path).append(rows_of(_dead("doc.rename")), "disk full")
    with path.open("ab") as file:
        file.write(b"\xff\xfe torn\n")

    result = cli.run("replay-deadletter", code=1)

    assert result.stdout == "Replayed 1 entry (0 already stored); 1 line kept\n"
    assert result.stderr == (
        'Error: line 2: not a dead-letter line (expected a JSON object with "entry")\n'
    )
    assert path.read_bytes() == b"\xff\xfe torn\n"
    assert three.actions()[3:] == ["doc.rename"]


@pytest.mark.sqlite_only
def test_replay_refuses_the_database_as_dead_letter_file(cli: Cli, three: Trail) -> None:
    head = three.head()
    before = cli.database.read_bytes()

    result = cli.run("replay-deadletter", "--file", str(cli.database), code=1)

    assert result.output == (
        f"Error: {cli.database} is an SQLite database, not a dead-letter file\n"
    )
    assert cli.database.read_bytes() == before
    assert cli.run("verify").output == f"OK: 3 rows verified; head 3:{head.hash}\n"


# -- demo with the global --db -----------------------------------------------------------------


def test_demo_writes_to_the_global_db(cli: Cli, db_path: Path) -> None:
    result = cli.run("demo", "--events", "5", env={"AUDIT_TRAIL_LEVEL": "all"})

    assert result.output.startswith(f"Audited 5 events into {db_path}\n")
    with AuditStore(db_path) as audit_store:
        assert audit_store.count() == 5


def test_demo_writes_to_audit_trail_database(cli: Cli, tmp_path: Path) -> None:
    target = tmp_path / "env-demo.db"
    env = {"AUDIT_TRAIL_LEVEL": "all", "AUDIT_TRAIL_DATABASE": str(target)}

    result = cli.run("demo", "--events", "3", env=env, db=False)

    assert result.output.startswith(f"Audited 3 events into {target}\n")
    with AuditStore(target) as audit_store:
        assert audit_store.count() == 3
