"""``replay-deadletter``: side files, ``--from`` a saved log, nothing to replay (issue 11)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import TYPE_CHECKING

from support import rows_of

from audit_engine import AuditEntry
from audit_engine.rows import entry_row
from audit_engine.storage import deadletter
from audit_engine.storage.deadletter import DeadLetterFile

if TYPE_CHECKING:
    from conftest import Cli, Trail


def _lost(*actions: str) -> list[AuditEntry]:
    return [AuditEntry(action=action, actor="alice") for action in actions]


def test_replay_reads_the_side_files_too(cli: Cli, trail: Trail) -> None:
    trail.init()
    path = trail.dead_letter_file
    DeadLetterFile(path).append(rows_of(_lost("doc.rename")), "disk full")
    fd = os.open(f"{path}.lock", os.O_WRONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a replay elsewhere holds the lock
        side = DeadLetterFile(path, lock_wait_s=0).append(rows_of(_lost("doc.share")), "locked")
    finally:
        os.close(fd)

    result = cli.run("replay-deadletter")

    assert result.output == "Replayed 2 entries (0 already stored) from 2 files; 0 lines kept\n"
    assert trail.actions() == ["doc.rename", "doc.share"]
    assert not path.exists()
    assert not side.exists()


def test_replay_from_a_saved_log(cli: Cli, trail: Trail, tmp_path: Path) -> None:
    trail.init()
    lost = _lost("doc.rename", "doc.share")
    failed_at = "2026-12-01T10:00:00+00:00"
    log = tmp_path / "app.log"
    log.write_text(
        "".join(
            "2026-12-01 10:00:01,123 CRITICAL audit entry LOST to disk, logged instead: "
            f"{deadletter.line_text(entry_row(e), 'disk full', failed_at, compact=True)}\n"
            for e in lost
        )
        + "2026-12-01 10:00:02,000 INFO unrelated\n"
        + 'audit entry LOST to disk, logged instead: {"entry": {"action": 1}}\n',
        encoding="utf-8",
    )

    result = cli.run("replay-deadletter", "--from", str(log), code=1)

    assert result.stdout == (
        f"Replayed 2 entries (0 already stored) from {log}; 1 line could not be read\n"
    )
    assert result.stderr == (
        "Error: line 4: invalid entry: action: Input should be a valid string\n"
    )
    assert trail.actions() == ["doc.rename", "doc.share"]
    again = cli.run("replay-deadletter", "--from", str(log), code=1)
    assert again.stdout.startswith("Replayed 0 entries (2 already stored) from ")


def test_replay_from_a_missing_log_is_an_error(cli: Cli, trail: Trail, tmp_path: Path) -> None:
    trail.init()

    result = cli.run("replay-deadletter", "--from", str(tmp_path / "nope.log"), code=1)

    assert result.output == f"Error: no log file at {tmp_path / 'nope.log'}\n"


def test_file_and_from_together_are_a_usage_error(cli: Cli, trail: Trail) -> None:
    trail.init()

    result = cli.run("replay-deadletter", "--file", "a.jsonl", "--from", "b.log", code=2)

    assert result.output.endswith("Error: --file and --from cannot be used together\n")
