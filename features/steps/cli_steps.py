"""Steps for features/operator_cli.feature: an operator runs ``audit-engine`` from a shell.

Each command is the real program (``python -m audit_engine``) in a child process, with a time limit,
run in the scenario's own empty directory, so the default ``./audit.db`` lands there. The trail is
set up and read back through the library, as the application that writes it would.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from behave import given, then, when
from behave.runner import Context
from forgery import forger_connection

from audit_engine import AuditEntry, AuditService, AuditSettings, AuditStore
from audit_engine.rows import entry_row
from audit_engine.storage import deadletter
from audit_engine.storage.deadletter import DeadLetterFile

COMMAND_TIMEOUT_S = 60.0
_AGO = re.compile(r"(\d+) (minute|hour|day)s? ago")


class _Shell:
    """The operator's working directory and the last command run in it."""

    def __init__(self, root: Path, url: str | None = None) -> None:
        self.root = root
        # On the postgres run the operator's environment names the team's trail by its URL.
        self.database: Path | str = url or root / "audit.db"
        self.last: subprocess.CompletedProcess[str] | None = None
        self.set_aside: list[str] = []
        self.snapshot = b""  # the database's bytes once the application last wrote it

    def run(self, command: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = shlex.split(command)
        assert argv[0] == "audit-engine", f"not an audit-engine command: {command!r}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_TRAIL_")}
        if isinstance(self.database, str):
            env["AUDIT_TRAIL_DATABASE"] = self.database
        # subprocess.run kills the child when the time limit passes.
        self.last = subprocess.run(
            [sys.executable, "-m", "audit_engine", *argv[1:]],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=self.root,
            env=env,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
        assert "Traceback" not in self.last.stderr, self.last.stderr
        return self.last

    @property
    def result(self) -> subprocess.CompletedProcess[str]:
        assert self.last is not None, "no command has been run yet"
        return self.last

    def record(self, entries: list[dict[str, Any]]) -> None:
        """Write ``entries`` as the application would (every level, no background cleanup)."""
        settings = AuditSettings(database=self.database, level="all", cleanup_enabled=False)
        with AuditService(settings) as audit:
            for entry in entries:
                assert audit.record(**entry) is not None, entry
        assert audit.stats().written == len(entries), audit.stats()
        if isinstance(self.database, Path):
            self.snapshot = self.database.read_bytes()

    def entries(self) -> list[AuditEntry]:
        with AuditStore(self.database) as store:
            return list(store.query())


def _shell(context: Context) -> _Shell:
    shell: _Shell = context.operator_shell
    return shell


def _ago(text: str) -> datetime:
    now = datetime.now(UTC)
    if text == "now":
        return now
    match = _AGO.fullmatch(text.strip())
    assert match, f"say 'N minutes ago', 'N hours ago' or 'N days ago', not {text!r}"
    return now - timedelta(**{f"{match[2]}s": int(match[1])})


def _notes(count: int, recorded: datetime, first: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "action": "note.save",
            "actor": "alice",
            "operation": "update",
            "resource_type": "note",
            "resource_id": f"n-{first + n}",
            "timestamp": recorded + timedelta(seconds=n),
        }
        for n in range(count)
    ]


# -- the shell and the trail -------------------------------------------------------------------


@given("an operator's shell in an empty directory")
def given_shell(context: Context) -> None:
    root = Path(tempfile.mkdtemp(prefix="audit-cli-feature-"))
    context.add_cleanup(shutil.rmtree, root, ignore_errors=True)
    database = context.world.database
    context.operator_shell = _Shell(root, database if isinstance(database, str) else None)


@given('the operator has run "{command}"')
def given_ran(context: Context, command: str) -> None:
    result = _shell(context).run(command)
    assert result.returncode == 0, result.stderr


@given("the operator's audit trail holds these entries:")
def given_entries(context: Context) -> None:
    _shell(context).record(
        [
            {
                "action": row["action"],
                "actor": row["actor"],
                "operation": row["operation"],
                "timestamp": _ago(row["recorded"]),
            }
            for row in context.table
        ]
    )


@given("the operator's audit trail holds {count:d} entries recorded today")
def given_today(context: Context, count: int) -> None:
    _shell(context).record(_notes(count, _ago("1 minute ago")))


@given(
    "the operator's audit trail holds {old:d} entries recorded {days:d} days ago "
    "and {new:d} recorded today"
)
def given_old_and_new(context: Context, old: int, days: int, new: int) -> None:
    _shell(context).record(
        _notes(old, _ago(f"{days} days ago")) + _notes(new, _ago("1 minute ago"), first=old)
    )


@given(
    'someone with write access to the file has changed the actor of entry {entry:d} to "{actor}"'
)
def given_tampered(context: Context, entry: int, actor: str) -> None:
    # Write access lets them lift the append-only guard first, as they would.
    with forger_connection(_shell(context).database) as conn:
        changed = conn.execute(
            "UPDATE audit_entries SET actor = ? WHERE id = ?", (actor, entry)
        ).rowcount
    assert changed == 1


@given('the writer has set aside {count:d} entries in the dead-letter file because "{reason}"')
def given_dead_letters(context: Context, count: int, reason: str) -> None:
    shell = _shell(context)
    entries = [AuditEntry(**fields) for fields in _notes(count, _ago("now"), first=100)]
    rows = [entry_row(entry) for entry in entries]
    DeadLetterFile(deadletter.path_for(shell.database)).append(rows, reason)
    shell.set_aside = [entry.event_id for entry in entries]


# -- running commands --------------------------------------------------------------------------


@when('the operator runs "{command}"')
def when_runs(context: Context, command: str) -> None:
    _shell(context).run(command)


@when('a shell script pipes these lines into "{command}":')
def when_pipes(context: Context, command: str) -> None:
    _shell(context).run(command, stdin=context.text + "\n")


# -- what the operator sees --------------------------------------------------------------------


@then("audit-engine exits with status {status:d}")
def then_status(context: Context, status: int) -> None:
    result = _shell(context).result
    assert result.returncode == status, (
        f"exit status {result.returncode}\n--- stdout:\n{result.stdout}--- stderr:\n{result.stderr}"
    )


@then('audit-engine prints "{line}"')
def then_prints(context: Context, line: str) -> None:
    assert _shell(context).result.stdout == line + "\n", _shell(context).result.stdout


@then('audit-engine prints a line starting "{start}"')
def then_prints_start(context: Context, start: str) -> None:
    lines = _shell(context).result.stdout.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(start + " "), lines


@then('audit-engine prints "{start}" and the head of the chain')
def then_prints_head(context: Context, start: str) -> None:
    shell = _shell(context)
    with AuditStore(shell.database) as store:
        head = store.head()
    assert head is not None
    assert shell.result.stdout == f"{start}; head {head.id}:{head.hash}\n", shell.result.stdout


@then("audit-engine prints nothing")
def then_prints_nothing(context: Context) -> None:
    assert _shell(context).result.stdout == ""


@then('audit-engine\'s first line is "{line}"')
def then_first_line(context: Context, line: str) -> None:
    assert _shell(context).result.stdout.splitlines()[0] == line, _shell(context).result.stdout


@then("the operator's audit trail file is as the application left it, byte for byte")
def then_unchanged(context: Context) -> None:
    shell = _shell(context)
    assert shell.snapshot
    assert isinstance(shell.database, Path)
    assert shell.database.read_bytes() == shell.snapshot
    assert sorted(p.name for p in shell.root.iterdir()) == ["audit.db"]


@then('audit-engine ends its report with "{message}"')
def then_reports_last(context: Context, message: str) -> None:
    # The engine's own log lines (the writer's ERROR) may come first.
    assert _shell(context).result.stderr.endswith("\n" + message + "\n"), _shell(
        context
    ).result.stderr


@then('audit-engine reports "{message}"')
def then_reports(context: Context, message: str) -> None:
    assert _shell(context).result.stderr == message + "\n", _shell(context).result.stderr


@then('the output is one JSON array of the entries "{actions}", each by "{actor}"')
def then_json(context: Context, actions: str, actor: str) -> None:
    entries = json.loads(_shell(context).result.stdout)
    assert isinstance(entries, list), entries
    assert [e["action"] for e in entries] == actions.split(", "), entries
    assert {e["actor"] for e in entries} == {actor}
    assert all(isinstance(e["details"], dict) for e in entries)
    assert all(set(e) == set(AuditEntry.model_fields) for e in entries)


@then('the operator\'s audit trail holds the actions "{actions}"')
def then_actions(context: Context, actions: str) -> None:
    assert [e.action for e in _shell(context).entries()] == actions.split(", ")


@then("the operator's audit trail holds {count:d} entries")
def then_count(context: Context, count: int) -> None:
    assert len(_shell(context).entries()) == count


@then("the operator's audit trail holds {count:d} entries, the set-aside ones last")
def then_count_replayed(context: Context, count: int) -> None:
    shell = _shell(context)
    stored = [e.event_id for e in shell.entries()]
    assert len(stored) == count, stored
    assert stored[-len(shell.set_aside) :] == shell.set_aside


@then("the dead-letter file is gone")
def then_no_dead_letters(context: Context) -> None:
    assert not deadletter.path_for(_shell(context).database).exists()


@then('the operator\'s directory holds no file "{name}"')
def then_no_file(context: Context, name: str) -> None:
    assert not (_shell(context).root / name).exists()
