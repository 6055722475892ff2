"""The demo: a simulated desktop tool whose domain events are audited into a trail.

It is the engine's main job in miniature: events go through an :class:`EventBus` to an
:class:`AuditService`, which writes them behind the caller's back in batched transactions.

Simulated entries must never land in a real trail, where they could not be removed without
breaking the chain: the demo writes only to a new file, which it marks as its own (SQLite's
``application_id`` in the file header), or to a file an earlier demo marked. On PostgreSQL the
same rule holds for the database's trail: the demo creates it with a mark in
``audit_engine_meta``, or appends to a trail that carries the mark; any other trail is refused.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import random
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from audit_engine.errors import AuditStoreError
from audit_engine.models import AuditEntry, Operation, Outcome
from audit_engine.pipeline.bus import DomainEvent, EventBus
from audit_engine.pipeline.service import AuditService
from audit_engine.settings import AuditSettings, mask_url
from audit_engine.storage import backends
from audit_engine.storage.store import AuditStore

DEFAULT_DATABASE = Path("audit-demo.db")
DEFAULT_EVENTS = 2000
# "aDmo" in SQLite's header (offset 68, PRAGMA application_id): a file the demo made.
DEMO_APPLICATION_ID = 0x61446D6F
_SQLITE_MAGIC = b"SQLite format 3\x00"

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

    database: Path | str  # a path, or a URL without its password
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


def is_demo_database(path: Path) -> bool:
    """Whether ``path`` is an SQLite file an earlier demo made (its header carries the mark).

    Reads only the first 100 bytes: a file that is not the demo's is not opened by SQLite at all.
    """
    with path.open("rb") as file:
        header = file.read(100)
    return (
        len(header) == 100
        and header.startswith(_SQLITE_MAGIC)
        and int.from_bytes(header[68:72], "big") == DEMO_APPLICATION_ID
    )


def prepare_database(path: Path | str) -> None:
    """Create ``path`` marked as the demo's, or check an existing file is the demo's own.

    Anything else (a real trail, another application's database, any other file) raises
    :class:`AuditStoreError` and is left exactly as it was. A PostgreSQL URL: the trail in that
    database is created marked, or must carry an earlier demo's mark.
    """
    if isinstance(path, str):
        backends.postgres()  # psycopg missing: the error that names the extra
        # Imported by name like the backend itself: only a URL needs psycopg.
        importlib.import_module("audit_engine.storage.postgres.demo_mark").claim_for_demo(path)
        return
    try:
        if is_demo_database(path):
            return
    except FileNotFoundError:
        _create_marked(path)
        return
    except OSError as exc:
        raise AuditStoreError(f"cannot read {path}: {exc.strerror}") from None
    raise AuditStoreError(
        f"{path} was not made by the demo: it writes simulated entries only to a new file or "
        "to one an earlier demo made; choose another --db"
    )


def _create_marked(path: Path) -> None:
    try:
        # Readable by its owner only, like every audit database; O_EXCL: never someone else's.
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileNotFoundError:
        raise AuditStoreError(
            f"cannot create the audit database {path}: no such directory"
        ) from None
    except OSError as exc:
        raise AuditStoreError(f"cannot create the audit database {path}: {exc.strerror}") from None
    # Set before the service switches the file to WAL: the mark is in the main file's header.
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA application_id = {DEMO_APPLICATION_ID}")
        conn.commit()


def run_demo(
    database: Path | str = DEFAULT_DATABASE,
    events: int = DEFAULT_EVENTS,
    *,
    seed: int = 7,
    on_progress: Callable[[int], None] | None = None,
    chain_key_file: Path | None = None,
) -> DemoReport:
    """Emit ``events`` note events through a bus into ``database`` and report what was written.

    The audit policy comes from the environment (``AUDIT_TRAIL_*``), so with the default level
    ``writes_only`` the reads are filtered out, except the critical privileged read.
    ``database`` (a path or a ``postgresql://`` URL) must not hold a trail yet or hold one an
    earlier demo made (see :func:`prepare_database`). ``chain_key_file``: key the demo's rows
    (else ``AUDIT_TRAIL_CHAIN_KEY_FILE``, if set), and verify with it.
    """
    if events < 1:
        raise ValueError(f"events must be at least 1 (got {events})")
    if not isinstance(database, str):
        database = Path(database)
    prepare_database(database)
    rng = random.Random(seed)
    bus = EventBus()
    timings: list[float] = []
    started = time.perf_counter()
    keyed = {} if chain_key_file is None else {"chain_key_file": chain_key_file}
    with AuditService(AuditSettings(database=database, **keyed)) as audit:
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
    with AuditStore(database, chain_key_file=chain_key_file) as store:
        latest = list(store.query(limit=5, newest_first=True))
        rows_in_file = store.count()
        check = store.verify()
        verdict = (
            f"ok, {check.rows_checked} rows chained"
            if check.ok
            else f"BROKEN at row {check.first_bad_id}: {check.reason}"
        )
        by_operation = Counter({op.value: store.count(operation=op) for op in Operation})
    return DemoReport(
        database=mask_url(database) if isinstance(database, str) else database,
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
