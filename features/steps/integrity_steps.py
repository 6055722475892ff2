"""Steps for tamper evidence: published heads, verification, tampering, exports checked offline.

The tampering steps change the database file (or an exported file) the way someone with write
access could, behind the engine's back. A forger knows the hash chain's algorithm (it is public,
docs/integrity.md), so the forged entries carry hashes that are right for their own contents.
"""

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from behave import given, then, when
from behave.runner import Context

from audit_engine import AuditStore, AuditStoreError
from audit_engine.storage.chain import ChainHead
from audit_engine.storage.exported import verify_exported_lines

WAIT_S = 10.0


# -- the trail and its published head ---------------------------------------------------------


@given("the operator has published the chain head")
def given_published(context: Context) -> None:
    with AuditStore(context.world.database) as store:
        context.world.published_head = store.head()
    assert context.world.published_head is not None, "there is no chain head to publish"


@given(
    "an audit trail of {count:d} entries recorded an hour ago, "
    "whose chain head the operator published"
)
def given_published_trail(context: Context, count: int) -> None:
    context.world.write_entries(count, "1 hour ago")
    given_published(context)
    assert context.world.published_head.id == count, context.world.published_head


# -- verifying --------------------------------------------------------------------------------


@when("the reviewer verifies the audit trail")
def when_verify(context: Context) -> None:
    context.world.report = context.world.verify_trail()


@when("the reviewer verifies the audit trail against the published head")
def when_verify_against_head(context: Context) -> None:
    context.world.report = context.world.verify_trail(context.world.published_head)


@then("verification succeeds, checking {count:d} entries")
def then_ok(context: Context, count: int) -> None:
    report = context.world.report
    assert report.ok, f"verification failed: {report}"
    assert report.rows_checked == count, f"expected {count} entries checked: {report}"


@then("verification ends at entry {entry:d}")
def then_ends_at(context: Context, entry: int) -> None:
    head = context.world.report.head
    assert head is not None, f"verification reported no head: {context.world.report}"
    assert head.id == entry, f"verification ended at {head}"


@then("verification ends at entry {entry:d}, the same as the published head")
def then_ends_at_published(context: Context, entry: int) -> None:
    then_ends_at(context, entry)
    assert context.world.report.head == context.world.published_head, (
        context.world.report.head,
        context.world.published_head,
    )


@then('verification fails at entry {entry:d}: "{reason}"')
def then_fails(context: Context, entry: int, reason: str) -> None:
    report = context.world.report
    assert not report.ok, f"the tampering went unnoticed: {report}"
    assert report.first_bad_id == entry, f"expected entry {entry} to be named: {report}"
    assert report.reason == reason, f"the reason was {report.reason!r}"


# -- files that are not audit databases -------------------------------------------------------


def _snapshot(path: Path) -> Any:
    """What a file (its bytes) or a directory (its listing) holds, and what lies next to it."""
    content: Any = None
    if path.is_file():
        content = path.read_bytes()
    elif path.is_dir():
        content = sorted(p.name for p in path.iterdir())
    return content, sorted(p.name for p in path.parent.iterdir())


@given('another application\'s SQLite database named "{name}"')
def given_foreign_database(context: Context, name: str) -> None:
    path = context.world.root / name
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        conn.execute("INSERT INTO notes (body) VALUES ('shopping list')")
    conn.close()
    context.world.before = _snapshot(path)


@given('a text file named "{name}"')
def given_text_file(context: Context, name: str) -> None:
    path = context.world.root / name
    path.write_text("these are my notes, not an audit trail\n" * 200, encoding="utf-8")
    context.world.before = _snapshot(path)


@given('an empty directory named "{name}"')
def given_directory(context: Context, name: str) -> None:
    path = context.world.root / name
    path.mkdir()
    context.world.before = _snapshot(path)


@when('the reviewer tries to verify "{name}"')
def when_try_verify(context: Context, name: str) -> None:
    def verify() -> Any:
        # A relative name, as an operator would type it (the scenario runs in its own directory).
        with AuditStore(name) as store:
            return store.verify()

    context.world.attempt(verify)


@then('verification is refused with the message "{message}"')
def then_verify_refused(context: Context, message: str) -> None:
    world = context.world
    assert isinstance(world.error, AuditStoreError), (
        f"expected AuditStoreError, got {world.error!r} (returned {world.returned!r})"
    )
    assert str(world.error) == message, f"the message was {str(world.error)!r}"


@then('"{name}" is unchanged')
def then_unchanged(context: Context, name: str) -> None:
    after = _snapshot(context.world.root / name)
    assert after == context.world.before, "verifying changed the file or created files next to it"


@then('there is no file "{name}"')
def then_no_file(context: Context, name: str) -> None:
    leftovers = sorted(p.name for p in context.world.root.iterdir() if p.name.startswith(name))
    assert leftovers == [], f"verifying created {leftovers}"


# -- exports checked offline ------------------------------------------------------------------


def _line_index(context: Context, entry: int) -> int:
    for index, line in enumerate(context.world.export_lines):
        if json.loads(line)["id"] == entry:
            return index
    raise AssertionError(f"entry {entry} is not in the export")


@when("the operator exports the entries of the day {days:d} days ago as JSON lines")
def when_export_day(context: Context, days: int) -> None:
    world = context.world
    day = (datetime.now(UTC) - timedelta(days=days)).date()
    since = datetime(day.year, day.month, day.day, tzinfo=UTC)
    path = world.root / f"audit-{day.isoformat()}.jsonl"
    with AuditStore(world.database) as store, path.open("w", encoding="utf-8") as out:
        out.writelines(store.export("jsonl", since=since, until=since + timedelta(days=1)))
    # What the reviewer receives is the file: read it back the way a JSON-lines reader does.
    with path.open(encoding="utf-8") as lines:
        world.export_lines = list(lines)


@then("the export holds entries {first:d} to {last:d}")
def then_export_holds(context: Context, first: int, last: int) -> None:
    ids = [json.loads(line)["id"] for line in context.world.export_lines]
    assert ids == list(range(first, last + 1)), f"the export holds entries {ids}"


@when('someone changes the actor of entry {entry:d} to "{actor}" in the exported file')
def when_edit_exported_actor(context: Context, entry: int, actor: str) -> None:
    lines = context.world.export_lines
    index = _line_index(context, entry)
    record = json.loads(lines[index])
    assert record["actor"] != actor, "the entry already had that actor"
    lines[index] = json.dumps({**record, "actor": actor}) + "\n"


@when("someone changes the details of entry {entry:d} in the exported file")
def when_edit_exported_details(context: Context, entry: int) -> None:
    lines = context.world.export_lines
    index = _line_index(context, entry)
    record = json.loads(lines[index])
    lines[index] = json.dumps({**record, "details": {**record["details"], "seq": -1}}) + "\n"


@when("someone removes the line of entry {entry:d} in the exported file")
def when_remove_exported_line(context: Context, entry: int) -> None:
    del context.world.export_lines[_line_index(context, entry)]


@when("someone swaps the lines of entries {first:d} and {second:d} in the exported file")
def when_swap_exported_lines(context: Context, first: int, second: int) -> None:
    lines = context.world.export_lines
    i, j = _line_index(context, first), _line_index(context, second)
    lines[i], lines[j] = lines[j], lines[i]


@when("the reviewer verifies the export offline, starting from the published head")
def when_verify_export(context: Context) -> None:
    world = context.world
    start: ChainHead = world.published_head
    world.report = verify_exported_lines(iter(world.export_lines), start=start)


# -- two tools writing one trail --------------------------------------------------------------

# A second program's run ends well within this; subprocess.run kills it if it does not.
_OTHER_PROGRAM_TIMEOUT_S = 60.0


@when("a second tool, in a program of its own, records {count:d} entries in the same audit trail")
def when_second_tool_records(context: Context, count: int) -> None:
    world = context.world
    event_ids = [f"second-tool-{uuid.uuid4()}" for _ in range(count)]
    lines = [
        json.dumps(
            {
                "event_id": event_id,
                "action": "note.save",
                "actor": "bob",
                "operation": "update",
                "resource_type": "note",
                "resource_id": f"bob-note-{n}",
            }
        )
        for n, event_id in enumerate(event_ids)
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_TRAIL_")}
    # The real command in a process of its own: its own connection, its own writer, and the
    # chain's tail moved under the first tool's writer between two of its batches.
    result = subprocess.run(
        [sys.executable, "-m", "audit_engine", "--db", str(world.database), "record", "--stdin"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        cwd=world.root,
        env=env,
        timeout=_OTHER_PROGRAM_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"exit status {result.returncode}: {result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == f"accepted {count}, filtered 0, written {count}\n", result.stdout
    # Where the second tool's entries fall among the first tool's, in recording order.
    world.second_tool = (len(world.accepted), event_ids)


@then(
    "the audit trail holds entries {first:d} to {last:d}, "
    "those of both tools in the order they were recorded"
)
def then_both_tools_in_order(context: Context, first: int, last: int) -> None:
    world = context.world
    before, theirs = world.second_tool
    expected = world.accepted[:before] + theirs + world.accepted[before:]
    rows = world.audit_rows()
    assert [row["id"] for row in rows] == list(range(first, last + 1)), [r["id"] for r in rows]
    stored = [row["event_id"] for row in rows]
    assert stored == expected, f"stored {stored}, recorded {expected}"


@when("the reviewer verifies the audit trail against the published head, with no minimum retention")
def when_verify_against_head_only(context: Context) -> None:
    with AuditStore(context.world.database) as audit_store:
        context.world.report = audit_store.verify(
            expected_head=context.world.published_head, min_retention=timedelta(0)
        )


@when("the reviewer verifies the audit trail with a minimum retention of {days:d} days")
def when_verify_min_retention(context: Context, days: int) -> None:
    with AuditStore(context.world.database) as audit_store:
        context.world.report = audit_store.verify(min_retention=timedelta(days=days))


@then('verification fails: "{reason}"')
def then_fails_anywhere(context: Context, reason: str) -> None:
    report = context.world.report
    assert not report.ok, f"the tampering went unnoticed: {report}"
    assert report.reason == reason, f"the reason was {report.reason!r}"


@then('verification fails, saying "{start}"')
def then_fails_saying(context: Context, start: str) -> None:
    report = context.world.report
    assert not report.ok, f"the tampering went unnoticed: {report}"
    assert report.reason is not None
    assert report.reason.startswith(start), f"the reason was {report.reason!r}"
