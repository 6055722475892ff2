"""A reader that goes away early (`audit-engine query | head -1`) ends the command quietly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from audit_engine import AuditService, AuditSettings


def test_a_closed_pipe_ends_the_command_without_an_error(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    with AuditService(AuditSettings(database=db, level="all", cleanup_enabled=False)) as audit:
        for i in range(3000):  # far more than a pipe buffer once printed
            audit.record(action="note.save", resource_id=str(i), details={"pad": "x" * 100})
    process = subprocess.Popen(
        [sys.executable, "-m", "audit_engine", "--db", str(db), "query", "--format", "jsonl"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        process.stdout.close()  # the reader goes away, like `head -1`
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:  # pragma: no cover - only when the test is failing
            process.kill()
            process.wait(10)
    assert first.startswith(b'{"event_id": ')
    assert stderr == b""
    assert process.returncode == 1
