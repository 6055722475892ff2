"""The demo: a simulated desktop tool whose domain events are audited into an SQLite file.

It is the engine's main job in miniature: events go through an :class:`EventBus` to an
:class:`AuditService`, which writes them behind the caller's back in batched transactions.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from audit_engine.bus import DomainEvent, EventBus
from audit_engine.models import AuditEntry, Operation, Outcome
from audit_engine.service import AuditService
from audit_engine.settings import AuditSettings
from audit_engine.store import AuditStore

DEFAULT_DATABASE = Path("audit-demo.db")
DEFAULT_EVENTS = 2000

# A desktop notes tool: mostly reads, some writes, a few failures.
_OPERATIONS = (
    (Operation.READ, "note.open", 70),
    (Operation.CREATE, "note.create", 12),
    (Operation.UPDATE, "note.save", 12),
    (Operation.DELETE, "note.delete", 6),
)
_USERS = ("alice", "bob", "carol", "dave")


class NoteEvent(DomainEvent):
    """Something a user did to a note."""

    actor: str
    operation: Operation
    outcome: Outcome = Outcome.SUCCESS
    resource_type: str = "note"
    resource_id: str
    critical: bool = False
    size_bytes: int = 0


class DemoReport(BaseModel):
    """What one demo run did."""

    model_config = ConfigDict(frozen=True)

    database: Path
    events_emitted: int
    accepted: int
    filtered: int
    written: int
    batches: int
    dead_lettered: int
    record_p50_us: float
    record_p99_us: float
    elapsed_s: float
    events_per_s: float
    by_operation: dict[str, int]
    rows_in_file: int
    verify: str
    latest: list[AuditEntry]


def _percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


def _make_event(rng: random.Random, number: int) -> NoteEvent:
    operation, action, _ = rng.choices(_OPERATIONS, weights=[w for *_, w in _OPERATIONS])[0]
    failed = rng.random() < 0.03
    return NoteEvent(
        event_type=action,
        actor=rng.choice(_USERS),
        operation=operation,
        outcome=Outcome.FAILURE if failed else Outcome.SUCCESS,
        resource_id=f"note-{rng.randrange(500)}",
        correlation_id=f"session-{number // 50}",
        size_bytes=rng.randrange(100, 5000),
    )


def run_demo(
    database: Path = DEFAULT_DATABASE,
    events: int = DEFAULT_EVENTS,
    *,
    seed: int = 7,
    on_progress: Callable[[int], None] | None = None,
) -> DemoReport:
    """Emit ``events`` note events through a bus into ``database`` and report what was written.

    The audit policy comes from the environment (``AUDIT_TRAIL_*``), so with the default level
    ``writes_only`` the reads are filtered out, except the critical privileged read.
    """
    if events < 1:
        raise ValueError(f"events must be at least 1 (got {events})")
    rng = random.Random(seed)
    bus = EventBus()
    timings: list[float] = []
    started = time.perf_counter()
    with AuditService(AuditSettings(database=database)) as audit:
        audit.subscribe(bus)
        for number in range(events):
            event = _make_event(rng, number)
            if number == events // 2:
                # A privileged read of sensitive data: compliance wants it kept whatever the policy.
                event = event.model_copy(
                    update={
                        "event_type": "note.open_restricted",
                        "operation": Operation.READ,
                        "critical": True,
                    }
                )
            t0 = time.perf_counter_ns()
            bus.emit(event)
            timings.append((time.perf_counter_ns() - t0) / 1000)
            if on_progress is not None:
                on_progress(1)
        audit.flush()
        stats = audit.stats()
    elapsed = time.perf_counter() - started
    timings.sort()
    with AuditStore(database) as store:
        latest = store.query(limit=5, newest_first=True)
        rows_in_file = store.count()
        check = store.verify()
        verdict = (
            f"ok, {check.rows_checked} rows chained"
            if check.ok
            else f"BROKEN at row {check.first_bad_id}: {check.reason}"
        )
        by_operation = Counter({op.value: store.count(operation=op) for op in Operation})
    return DemoReport(
        database=database,
        events_emitted=events,
        accepted=stats.accepted,
        filtered=stats.filtered_by_level + stats.excluded + stats.sampled_out + stats.deduplicated,
        written=stats.written,
        batches=stats.batches,
        dead_lettered=stats.dead_lettered,
        record_p50_us=_percentile(timings, 0.50),
        record_p99_us=_percentile(timings, 0.99),
        elapsed_s=elapsed,
        events_per_s=events / elapsed if elapsed > 0 else 0.0,
        by_operation={k: v for k, v in by_operation.items() if v},
        rows_in_file=rows_in_file,
        verify=verdict,
        latest=latest,
    )
