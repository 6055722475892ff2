"""Every read command on a missing or foreign file; where the database comes from; --help."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from audit_engine import AuditStore
from audit_engine.settings import mask_url
from audit_engine.storage.sqlite import schema as sqlite_schema

if TYPE_CHECKING:
    from conftest import Cli, Trail


def _jsonl_actions(output: str) -> list[str]:
    return [json.loads(line)["action"] for line in output.splitlines()]


# -- missing, foreign and default databases ----------------------------------------------------

READ_COMMANDS = [
    ["query"],
    ["query", "--format", "json"],
    ["tail"],
    ["tail", "-f", "--interval", "0.05"],
    ["export"],
    ["verify"],
    ["purge", "--older-than", "90d"],
    ["purge", "--older-than", "90d", "--dry-run"],
    ["stats"],
    ["stats", "--json"],
    ["replay-deadletter"],
]
READ_IDS = [" ".join(c) for c in READ_COMMANDS]


@pytest.mark.parametrize("command", READ_COMMANDS, ids=READ_IDS)
def test_a_read_command_on_a_missing_database_creates_nothing(
    cli: Cli, db_path: Path, command: list[str]
) -> None:
    result = cli.run(*command, code=1)

    assert result.output == f"Error: no audit database at {db_path}\n"
    assert not db_path.exists()
    assert list(db_path.parent.iterdir()) == []


def test_export_to_a_file_from_a_missing_database_writes_nothing(
    cli: Cli, db_path: Path, tmp_path: Path
) -> None:
    target = tmp_path / "out.jsonl"

    result = cli.run("export", "--output", str(target), code=1)

    assert result.output == f"Error: no audit database at {db_path}\n"
    assert not target.exists()


@pytest.mark.parametrize("command", READ_COMMANDS, ids=READ_IDS)
def test_a_read_command_on_a_text_file_is_refused_untouched(
    cli: Cli, db_path: Path, command: list[str]
) -> None:
    db_path.write_text("shopping list\n" * 100)

    result = cli.run(*command, code=1)

    assert result.output == (
        f"Error: {db_path} is not a usable audit database: file is not a database\n"
    )
    assert db_path.read_text() == "shopping list\n" * 100


@pytest.mark.parametrize("command", READ_COMMANDS, ids=READ_IDS)
def test_a_read_command_on_another_applications_database_is_refused_untouched(
    cli: Cli, db_path: Path, command: list[str]
) -> None:
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        conn.commit()
    before = db_path.read_bytes()

    result = cli.run(*command, code=1)

    assert result.output == f"Error: {db_path} is not an audit database (no audit_entries table)\n"
    assert db_path.read_bytes() == before


def test_a_directory_as_database_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    result = cli.run("--db", str(tmp_path), "query", code=2, db=False)

    assert result.output.endswith(
        "Error: Invalid value for '--db' (env var: 'AUDIT_TRAIL_DATABASE'): "
        f"File '{tmp_path}' is a directory.\n"
    )


def test_the_database_comes_from_audit_trail_database(
    cli: Cli, trail: Trail, tmp_path: Path
) -> None:
    other = tmp_path / "from-env.db"
    env = {"AUDIT_TRAIL_DATABASE": str(other)}

    created = cli.run("init", env=env, db=False)
    cli.run("record", "--action", "env.write", env=env, db=False)
    listed = cli.run("query", "--format", "jsonl", env=env, db=False)

    assert created.output == (
        f"Audit database ready at {other} (schema version {sqlite_schema.SCHEMA_VERSION})\n"
    )
    assert _jsonl_actions(listed.output) == ["env.write"]
    assert not trail.exists()
    # --db wins over the environment.
    assert cli.run("query", env=env, code=1).output.startswith(
        f"Error: no audit trail at {mask_url(trail.database)} ("
        if trail.is_postgres
        else f"Error: no audit database at {trail.database}\n"
    )


def test_the_default_database_is_audit_db_in_the_working_directory(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    missing = cli.run("stats", db=False, code=1)
    cli.run("init", db=False)
    cli.run("record", "--action", "cwd.write", db=False)

    assert missing.output == "Error: no audit database at audit.db\n"
    with AuditStore(tmp_path / "audit.db") as audit_store:
        assert [e.action for e in audit_store.query()] == ["cwd.write"]


def test_an_unknown_command_is_a_usage_error(cli: Cli) -> None:
    assert cli.run("bogus", code=2).output.endswith("Error: No such command 'bogus'.\n")


def test_python_dash_m_help_lists_every_command(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "audit_engine", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""
    assert completed.stdout.startswith("Usage: audit-engine [OPTIONS] COMMAND [ARGS]...\n")
    commands = completed.stdout.split("Commands:\n")[1].split()
    for name in ("init", "record", "query", "tail", "export", "verify", "purge", "stats"):
        assert name in commands
    assert {"demo", "replay-deadletter"} <= set(commands)
    assert "cli-docs" not in commands
    assert list(tmp_path.iterdir()) == []


# -- a PostgreSQL URL that cannot be used ------------------------------------------------------

UNREACHABLE = "postgresql://auditor:s3cret-pw@127.0.0.1:1/trail"  # nothing listens on port 1


@pytest.mark.sqlite_only  # the URL is given on the command line: one run is enough
@pytest.mark.parametrize("command", [["query"], ["init"], ["verify"], ["demo", "--events", "1"]])
def test_an_unreachable_server_is_one_error_line_without_the_password(
    cli: Cli, command: list[str]
) -> None:
    result = cli.run("--db", UNREACHABLE, *command, code=1, db=False)

    assert result.output.startswith(
        "Error: cannot connect to postgresql://auditor:***@127.0.0.1:1/trail: "
    )
    assert "s3cret-pw" not in result.output


def test_a_url_without_psycopg_installed_names_the_extra(tmp_path: Path) -> None:
    """``import psycopg`` fails in the child, as it does where the extra is not installed."""
    wrapper = "import sys; sys.modules['psycopg'] = None; from audit_engine.cli import main; main()"

    done = subprocess.run(
        [sys.executable, "-c", wrapper, "--db", UNREACHABLE, "query"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )

    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        "Error: a postgresql:// database needs the PostgreSQL backend, which needs psycopg: "
        "pip install 'audit-engine[postgres]'\n"
    )
