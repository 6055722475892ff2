"""Steps for features/postgresql.feature: a team's tools share one trail on a PostgreSQL server.

These scenarios always run against a server (tagged ``@team_server``: environment.py gives each a
fresh database on the throwaway cluster, on the SQLite run too). The restart scenario starts a
server of its own, because it takes that server away.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections import Counter

import psycopg
from behave import given, then, when
from behave.runner import Context
from trail_backend import query, read_rows, start_cluster

from audit_engine import AuditService, AuditStore

WAIT_S = 10.0
TOOLS = 3
# Each tool's run ends well within this; communicate() kills nothing itself, so we do on timeout.
_TOOL_TIMEOUT_S = 60.0
# The summary line of `audit-engine copy`: how many entries it appended and how many it found.
_COPIED = re.compile(
    r"^Copied (?P<copied>\d+) entr(?:y|ies) .* \((?P<present>\d+) already present\)", re.M
)


def _tool_lines(tool: int, count: int) -> tuple[list[str], str]:
    event_ids = [f"tool-{tool}-{uuid.uuid4()}" for _ in range(count)]
    lines = [
        json.dumps({"event_id": e, "action": "note.save", "actor": f"host-{tool}"})
        for e in event_ids
    ]
    return event_ids, "\n".join(lines) + "\n"


@given("the team's audit trail lives on the team's PostgreSQL server")
def given_team_trail(context: Context) -> None:
    assert isinstance(context.world.database, str), "a @team_server scenario gets a URL"


@when("three tools, each in a program of its own, record {count:d} entries at the same time")
def when_three_tools(context: Context, count: int) -> None:
    world = context.world
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_TRAIL_")}
    command = [sys.executable, "-m", "audit_engine", "--db", world.database, "record", "--stdin"]
    world.expected_ids = []
    tools = []
    # All started before any is fed: their writers compete for the chain's tail.
    for tool in range(TOOLS):
        event_ids, text = _tool_lines(tool, count)
        world.expected_ids += event_ids
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=world.root,
        )
        tools.append((process, text))
    for process, text in tools:
        try:
            out, err = process.communicate(text, timeout=_TOOL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise AssertionError(f"a tool did not finish within {_TOOL_TIMEOUT_S}s") from None
        assert process.returncode == 0, f"a tool failed ({process.returncode}): {out}{err}"


@then("the team's trail holds {count:d} entries, every one of them once")
def then_team_trail_holds(context: Context, count: int) -> None:
    world = context.world
    stored = Counter(row["event_id"] for row in read_rows(world.database, ("event_id",)))
    assert sum(stored.values()) == count, f"{sum(stored.values())} entries, expected {count}"
    assert set(stored) == set(world.expected_ids), "the stored entries are not the recorded ones"
    assert max(stored.values()) == 1, f"stored twice: {[e for e, n in stored.items() if n > 1]}"


@then("the team's trail verifies, checking {count:d} entries")
def then_team_verifies(context: Context, count: int) -> None:
    report = context.world.verify_trail()
    assert report.ok, report
    assert report.rows_checked == count, report


# -- a server that restarts -----------------------------------------------------------------------


@given("a PostgreSQL server of the tool's own, with the tool's audit service recording into it")
def given_own_server(context: Context) -> None:
    world = context.world
    cluster = start_cluster()
    world.cleanups.append(cluster.stop)
    world.own_server = cluster
    world.own_trail = cluster.create_database()
    # A short flush interval: the writer meets the outage at once, not at its next tick.
    world.open_service(world.settings(database=world.own_trail, buffer_flush_interval=0.05))


@when("the server shuts down")
def when_server_down(context: Context) -> None:
    context.world.own_server.stop_now()


@then("every one of them was accepted, and the audit writer keeps trying the server")
def then_writer_retries(context: Context) -> None:
    world = context.world
    assert None not in world.last_results, world.last_results
    # A retry means the writer took the entries in hand and met the server down.
    world.wait_until(lambda: world.audit.stats().retries > 0, "the writer retries the server")
    stats = world.audit.stats()
    assert stats.writer_alive, stats
    assert stats.dead_lettered == 0, stats


@when("the server starts again")
def when_server_up(context: Context) -> None:
    context.world.own_server.start_again()


@then("the tool's trail on that server holds the {count:d} recorded entries, each once")
def then_own_trail_holds(context: Context, count: int) -> None:
    world = context.world
    stored = [row["event_id"] for row in read_rows(world.own_trail, ("event_id",))]
    assert len(world.accepted) == count, f"{len(world.accepted)} accepted, expected {count}"
    assert stored == world.accepted, f"stored {len(stored)} entries, not the recorded {count}"


@then("the tool's trail on that server verifies, checking {count:d} entries")
def then_own_trail_verifies(context: Context, count: int) -> None:
    with AuditStore(context.world.own_trail) as store:
        report = store.verify()
    assert report.ok, report
    assert report.rows_checked == count, report


# -- a desktop trail copied in --------------------------------------------------------------------


@given("a desktop tool has kept {count:d} entries in a local audit trail file")
def given_desktop_trail(context: Context, count: int) -> None:
    world = context.world
    world.desktop = world.root / "desktop-audit.db"
    with AuditService(world.settings(database=world.desktop, cleanup_enabled=False)) as desktop:
        world.expected_ids = [
            desktop.record(action="note.save", actor="carol", resource_id=f"d-{n}")
            for n in range(count)
        ]
    assert None not in world.expected_ids


@when('the operator runs "audit-engine copy" from the desktop trail file into the team\'s trail')
@when(
    'the operator runs "audit-engine copy" from the desktop trail file into the team\'s trail again'
)
def when_copy_desktop(context: Context) -> None:
    world = context.world
    command = [sys.executable, "-m", "audit_engine", "copy", str(world.desktop), world.database]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_TRAIL_")}
    # subprocess.run kills the command when the time limit passes.
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=env,
        cwd=world.root,
        timeout=_TOOL_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"audit-engine copy failed ({done.returncode}): {done.stderr}"
    world.copy_output = done.stdout


@then("the copy reports {copied:d} entries copied and {present:d} already present")
def then_copy_reports(context: Context, copied: int, present: int) -> None:
    output = context.world.copy_output
    match = _COPIED.search(output)
    assert match, f"no 'Copied ...' line in: {output!r}"
    assert (int(match["copied"]), int(match["present"])) == (copied, present), output
    assert f"destination verified ({copied + present} row" in output, output


@then("the team's trail holds the desktop's {count:d} entries, every one of them once")
def then_team_holds_desktop(context: Context, count: int) -> None:
    then_team_trail_holds(context, count)


# -- the app's own transaction --------------------------------------------------------------------


def _note_on_server(url: str, note_id: int) -> str:
    rows = query(url, "SELECT body FROM notes WHERE id = ?", (note_id,))
    assert rows, f"note {note_id} is gone"
    return str(rows[0][0])


@given(
    "the team's app keeps its notes on the team's server, where note {note_id:d} reads \"{body}\""
)
def given_app_notes(context: Context, note_id: int, body: str) -> None:
    world = context.world
    with psycopg.connect(world.database, autocommit=True) as setup:
        setup.execute("CREATE TABLE notes (id integer PRIMARY KEY, body text NOT NULL)")
        setup.execute("INSERT INTO notes (id, body) VALUES (%s, %s)", (note_id, body))
    # The app's connection: psycopg's default, a transaction opened by the first statement.
    world.app = psycopg.connect(world.database)
    world.cleanups.append(world.app.close)
    world.open_service()


@when(
    'the app saves note {note_id:d} as "{body}" and records "{action}" through its own '
    "connection, in one transaction"
)
def when_app_saves(context: Context, note_id: int, body: str, action: str) -> None:
    world = context.world
    world.app.execute("UPDATE notes SET body = %s WHERE id = %s", (body, note_id))
    world.keep(
        world.audit.record(
            action=action,
            actor="alice",
            operation="update",
            resource_type="note",
            resource_id=str(note_id),
            connection=world.app,
        )
    )
    status = world.app.info.transaction_status
    assert status == psycopg.pq.TransactionStatus.INTRANS, f"the app's transaction is {status}"


@then('another program still sees note {note_id:d} as "{body}" and no entry in the team\'s trail')
def then_app_change_unseen(context: Context, note_id: int, body: str) -> None:
    world = context.world
    assert _note_on_server(world.database, note_id) == body
    assert read_rows(world.database, ("event_id",)) == []


@when("the app {ends} its transaction")
def when_app_ends(context: Context, ends: str) -> None:
    app = context.world.app
    endings = {"commits": app.commit, "rolls back": app.rollback}
    assert ends in endings, f"say 'commits' or 'rolls back', not {ends!r}"
    endings[ends]()


@then('another program sees note {note_id:d} on the team\'s server as "{body}"')
def then_app_note(context: Context, note_id: int, body: str) -> None:
    found = _note_on_server(context.world.database, note_id)
    assert found == body, f"note {note_id} reads {found!r}, expected {body!r}"


@then('the team\'s trail holds {count:d} "{action}" entries for note {note_id:d}')
def then_app_entries(context: Context, count: int, action: str, note_id: int) -> None:
    world = context.world
    rows = read_rows(world.database, ("event_id", "action", "resource_id"))
    found = [r for r in rows if (r["action"], r["resource_id"]) == (action, str(note_id))]
    assert len(found) == count == len(rows), rows
    if count:
        assert found[0]["event_id"] == world.accepted[-1], found
