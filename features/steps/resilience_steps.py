"""Steps for a busy database and for entries that cannot be stored (the dead-letter file)."""

import contextlib
import json
import logging
import shlex
import sqlite3
import subprocess
import sys
from pathlib import Path

from behave import given, then, when
from behave.runner import Context

WAIT_S = 10.0


def _record_rows(context: Context, rows: list[dict[str, str]]) -> None:
    world = context.world
    for row in rows:
        seq = world.next_seq()
        fields = {
            "action": row["action"],
            "actor": "alice",
            "operation": "update",
            "resource_type": "note",
            "resource_id": f"note-{seq}",
            "details": {"seq": seq},
        }
        if row["event id"]:
            fields["event_id"] = row["event id"]
        result = world.keep(world.audit.record(**fields))
        assert result, f"{row['action']} was not accepted"


@when("the tool records these entries:")
def when_record_rows(context: Context) -> None:
    _record_rows(context, [{name: row[name] for name in row.headings} for row in context.table])


@then("the audit writer retries while the database is busy")
def then_retries(context: Context) -> None:
    audit = context.world.audit
    context.world.wait_until(lambda: audit.stats().retries > 0, "the writer retries")
    assert context.world.audit_rows() == [], "something was committed under the lock"


@then("a flush limited to {timeout_s:g} seconds reports that not everything is committed yet")
def then_flush_times_out(context: Context, timeout_s: float) -> None:
    assert context.world.audit.flush(timeout=timeout_s) is False


@then("the service reports {count:d} dead-lettered entries")
@then("the service reports {count:d} dead-lettered entry")
def then_dead_lettered(context: Context, count: int) -> None:
    stats = context.world.audit.stats()
    assert stats.dead_lettered == count, stats
    assert len(context.world.dead_letters()) == count


@then("the audit database holds these actions in order: {actions}")
def then_actions_in_order(context: Context, actions: str) -> None:
    expected = [action.strip() for action in actions.split(",")]
    found = [row["action"] for row in context.world.audit_rows()]
    assert found == expected, f"stored {found}, expected {expected}"


@then('the dead-letter file holds only the "{action}" entry with event id "{event_id}"')
def then_dead_letter_entry(context: Context, action: str, event_id: str) -> None:
    letters = context.world.dead_letters()
    assert len(letters) == 1, letters
    entry = letters[0]["entry"]
    assert (entry["action"], entry["event_id"]) == (action, event_id), entry


@then('the dead-letter file says why: "{reason}"')
def then_dead_letter_reason(context: Context, reason: str) -> None:
    errors = [letter["error"] for letter in context.world.dead_letters()]
    assert errors, "the dead-letter file is empty"
    assert all(reason in error for error in errors), errors


@then("the operator is told in the log that an entry was moved to the dead-letter file")
def then_dead_letter_logged(context: Context) -> None:
    path = f"{context.world.database}.deadletter.jsonl"
    messages = [
        record.getMessage()
        for record in context.world.log.records
        if record.levelno >= logging.ERROR
    ]
    assert any(path in message for message in messages), messages


@given("the writer has already set aside an entry that reused another entry's event id")
def given_poisoned(context: Context) -> None:
    world = context.world
    _record_rows(
        context,
        [
            {"action": "note.save", "event id": "dup-0002"},
            {"action": "note.copy", "event id": "dup-0002"},
        ],
    )
    assert world.audit.flush(timeout=WAIT_S)
    stats = world.audit.stats()
    assert stats.dead_lettered == 1, stats
    world.accepted_before_failure = len(world.accepted)


@then("every entry recorded after the failure is in the audit database")
def then_after_failure_stored(context: Context) -> None:
    world = context.world
    later = world.accepted[world.accepted_before_failure :]
    assert later, "nothing was recorded after the failure"
    stored = [row["event_id"] for row in world.audit_rows()]
    assert stored[-len(later) :] == later


# -- entries that reach only the log (issue 11, item 8) ----------------------------------------

_LOST_PREFIX = "audit entry LOST to disk, logged instead: "


@given('the audit database refuses entries by "{actor}"')
def given_refuses_actor(context: Context, actor: str) -> None:
    with contextlib.closing(sqlite3.connect(context.world.database)) as conn:
        conn.execute(
            "CREATE TRIGGER refuse_actor BEFORE INSERT ON audit_entries "
            f"WHEN NEW.actor = '{actor}' "
            "BEGIN SELECT RAISE(ABORT, 'refused by a rule of this database'); END"
        )
        conn.commit()


@when('the database stops refusing entries by "{actor}"')
def when_stops_refusing(context: Context, actor: str) -> None:
    with contextlib.closing(sqlite3.connect(context.world.database)) as conn:
        conn.execute("DROP TRIGGER refuse_actor")
        conn.commit()


@given("the dead-letter file cannot be written")
def given_dead_letter_unwritable(context: Context) -> None:
    # A directory where the file should be: every append fails, as on a full disk.
    Path(f"{context.world.database}.deadletter.jsonl").mkdir()


@when('the tool records an entry by "{actor}"')
def when_record_by(context: Context, actor: str) -> None:
    [result] = context.world.record_notes(1, actor=actor)
    assert result, "the entry was not accepted"


@then("a flush reports that not every entry is safe")
def then_flush_false(context: Context) -> None:
    assert context.world.audit.flush(timeout=WAIT_S) is False


@then("the service counts {count:d} entry kept only in the log")
def then_logged_only(context: Context, count: int) -> None:
    audit = context.world.audit
    assert audit.writer is not None
    assert audit.writer.logged_only == count
    stats = audit.stats()
    assert stats.dead_lettered == 0, stats
    assert stats.logged_only == count, stats


@then('the log holds the entry by "{actor}" as a dead-letter line')
def then_logged_line(context: Context, actor: str) -> None:
    lines = [
        record.getMessage()
        for record in context.world.log.records
        if record.levelno == logging.CRITICAL and record.getMessage().startswith(_LOST_PREFIX)
    ]
    assert len(lines) == 1, lines
    letter = json.loads(lines[0][len(_LOST_PREFIX) :])
    assert set(letter) == {"entry", "error", "failed_at"}, letter
    assert letter["entry"]["actor"] == actor
    assert "refused by a rule of this database" in letter["error"]


@then("closing the audit service reports failure")
def then_close_fails(context: Context) -> None:
    assert context.world.audit.close(WAIT_S) is False


@when('the operator saves the log to "{name}" and runs "{command}"')
def when_replay_from_log(context: Context, name: str, command: str) -> None:
    world = context.world
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    text = "".join(formatter.format(record) + "\n" for record in world.log.records)
    (world.root / name).write_text(text, encoding="utf-8")
    program, *args = shlex.split(command)
    assert program == "audit-engine"
    world.replay = subprocess.run(
        [sys.executable, "-m", "audit_engine", "--db", str(world.database), *args],
        cwd=world.root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@then('the replay prints "{line}"')
def then_replay_prints(context: Context, line: str) -> None:
    result = context.world.replay
    assert (result.returncode, result.stdout) == (0, line + "\n"), result
