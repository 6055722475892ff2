"""Fixtures of the command tests: ``cli`` runs a command against the test's database and checks
its exit code (and that no traceback escaped); ``trail`` fills and reads that database through the
library, the way an application would have written it.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from audit_engine import AuditEntry, AuditService, AuditSettings, AuditStore
from audit_engine.cli import main
from audit_engine.storage.chain import ChainHead


@dataclass
class Cli:
    """``cli.run("query", "--actor", "alice")`` is ``audit-engine --db <test db> query ...``."""

    runner: CliRunner
    database: Path

    def run(
        self,
        *args: str,
        code: int | None = 0,
        input: str | bytes | None = None,
        env: Mapping[str, str | None] | None = None,
        db: bool = True,
    ) -> Result:
        """Run the command; assert its exit ``code`` (unless None) and that no traceback escaped."""
        argv = ["--db", str(self.database), *args] if db else list(args)
        result = self.runner.invoke(main, argv, input=input, env=env, prog_name="audit-engine")
        assert code is None or result.exit_code == code, (
            f"exit code {result.exit_code}, expected {code}\n--- output:\n{result.output}"
        )
        # CliRunner keeps an escaped exception in result.exception; click's own exits are
        # SystemExit. Anything else would have been a traceback for the user.
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            f"uncaught {result.exception!r}\n--- output:\n{result.output}"
        )
        assert "Traceback" not in result.output
        return result


@dataclass
class Trail:
    """The test's audit database, written and read through the library."""

    database: Path

    def init(self) -> None:
        """An empty audit database."""
        AuditStore(self.database, create=True).close()

    def record(self, *entries: Mapping[str, Any]) -> list[str]:
        """Record ``entries`` (fields of AuditEntry, timestamps allowed) and wait until written."""
        settings = AuditSettings(database=self.database, level="all", cleanup_enabled=False)
        with AuditService(settings) as audit:
            ids = [audit.record(**dict(entry)) for entry in entries]
        assert all(ids), ids
        assert audit.stats().written == len(entries)
        return [str(event_id) for event_id in ids]

    def entries(self) -> list[AuditEntry]:
        with AuditStore(self.database) as audit_store:
            return audit_store.query()

    def actions(self) -> list[str]:
        return [entry.action for entry in self.entries()]

    def head(self) -> ChainHead:
        with AuditStore(self.database) as audit_store:
            head = audit_store.head()
        assert head is not None
        return head

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Change the file behind the engine's back, as someone with write access could."""
        with contextlib.closing(sqlite3.connect(self.database)) as conn:
            conn.execute(sql, params)
            conn.commit()


@pytest.fixture
def cli(db_path: Path) -> Cli:
    return Cli(CliRunner(), db_path)


@pytest.fixture
def trail(db_path: Path) -> Trail:
    return Trail(db_path)


@pytest.fixture
def notes(trail: Trail) -> Trail:
    """Four entries of a notes tool, three days, two hours and one minute old (two of them)."""
    now = datetime.now(UTC)
    trail.record(
        {
            "action": "note.create",
            "actor": "alice",
            "operation": "create",
            "resource_type": "note",
            "resource_id": "n1",
            "correlation_id": "req-1",
            "timestamp": now - timedelta(days=3),
            "details": {"title": "plan", "tags": ["q3"]},
        },
        {
            "action": "note.open",
            "actor": "bob",
            "operation": "read",
            "resource_type": "note",
            "resource_id": "n1",
            "correlation_id": "req-2",
            "timestamp": now - timedelta(hours=2),
        },
        {
            "action": "note.delete",
            "actor": "alice",
            "operation": "delete",
            "outcome": "failure",
            "resource_type": "note",
            "resource_id": "n2",
            "correlation_id": "req-3",
            "timestamp": now - timedelta(minutes=1),
            "critical": True,
        },
        {
            "action": "user.login",
            "actor": "carol",
            "resource_type": "session",
            "resource_id": "s9",
            "correlation_id": "req-3",
            "timestamp": now - timedelta(minutes=1),
        },
    )
    return trail
