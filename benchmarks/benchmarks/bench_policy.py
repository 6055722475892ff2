"""What the audit policy costs, and what it saves.

* ``PolicyDecision``: the pure decision (``AuditPolicy.decide``) for an entry that passes and one
  the level filters out, and redaction of a details dict with and without secrets.
* ``RecordFiltered``: ``record()`` of a read that ``writes_only`` filters out against a write that
  passes and is queued, 500 calls each, on one async service.
* ``ReadHeavyWorkload``: 90 % reads / 10 % writes under ``writes_only``: the share of events
  stored (must be <= 0.10) and the events/s the caller sees.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from audit_engine import AuditEntry, AuditService, AuditSettings
from audit_engine.pipeline.policy import AuditPolicy, Level

for _name in [name for name in os.environ if name.upper().startswith("AUDIT_TRAIL_")]:
    del os.environ[_name]

BURST = 500
WORKLOAD = 20_000


def _fields(i: int, operation: str) -> dict[str, Any]:
    return {
        "action": "note.open" if operation == "read" else "note.save",
        "actor": "alice",
        "operation": operation,
        "resource_type": "note",
        "resource_id": str(i),
        "details": {"bytes": 812, "title": "Quarterly plan"},
    }


class PolicyDecision:
    def setup(self) -> None:
        self.policy = AuditPolicy(level=Level.WRITES_ONLY, exclude_actions=["health_*"])
        self.write = AuditEntry(**_fields(1, "update"))
        self.read = AuditEntry(**_fields(1, "read"))
        self.secret = AuditEntry(
            action="user.login", details={"user": "al", "auth": {"password": "x", "n": 1}}
        )

    def time_decide_passing_500(self) -> None:
        decide, entry = self.policy.decide, self.write
        for _ in range(BURST):
            decide(entry)

    def time_decide_filtered_500(self) -> None:
        decide, entry = self.policy.decide, self.read
        for _ in range(BURST):
            decide(entry)

    def time_redact_nothing_to_mask_500(self) -> None:
        redact, entry = self.policy.redact, self.write
        for _ in range(BURST):
            redact(entry)

    def time_redact_nested_secret_500(self) -> None:
        redact, entry = self.policy.redact, self.secret
        for _ in range(BURST):
            redact(entry)


class RecordFiltered:
    """record() cost on the caller's path: filtered out by the level vs kept and queued."""

    def setup(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="audit-bench-")
        self.audit = AuditService(
            AuditSettings(database=Path(self._tmp.name) / "audit.db", queue_maxsize=1_000_000)
        )

    def teardown(self) -> None:
        self.audit.close()
        self._tmp.cleanup()

    def time_record_filtered_read_500(self) -> None:
        record = self.audit.record
        for i in range(BURST):
            record(**_fields(i, "read"))

    def time_record_kept_write_500(self) -> None:
        record = self.audit.record
        for i in range(BURST):
            record(**_fields(i, "update"))


class ReadHeavyWorkload:
    """90 % reads, 10 % writes, default level writes_only."""

    def setup(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="audit-bench-")
        self.database = Path(self._tmp.name) / "audit.db"

    def teardown(self) -> None:
        self._tmp.cleanup()

    def _run(self) -> tuple[float, float]:
        with AuditService(AuditSettings(database=self.database, queue_maxsize=1_000_000)) as audit:
            started = time.perf_counter()
            for i in range(WORKLOAD):
                audit.record(**_fields(i, "update" if i % 10 == 0 else "read"))
            elapsed = time.perf_counter() - started
            audit.flush()
            stored = audit.stats().written
        return stored / WORKLOAD, WORKLOAD / elapsed

    def track_writes_only_stored_fraction(self) -> float:
        return self._run()[0]

    track_writes_only_stored_fraction.unit = "fraction"  # type: ignore[attr-defined]

    def track_caller_events_per_s(self) -> float:
        return self._run()[1]

    track_caller_events_per_s.unit = "events/s"  # type: ignore[attr-defined]
