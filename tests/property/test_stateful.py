"""Stateful property: whatever mix of record / flush / close / reopen and faults happens, every
accepted entry is committed exactly once or is in the dead-letter file.

Faults: a "poisoned" entry makes any batch holding it fail with a non-busy error (a trigger
refuses it; the writer must isolate it and dead-letter it alone); an entry repeating a committed
``event_id`` fails for real (UNIQUE); another connection holds the write lock for a moment (the
writer must retry, and a critical entry recorded meanwhile raises ``AuditWriteError`` but stays
queued and is written).

Each example works in its own temporary directory; the invariant is checked after every flush
and close, and at teardown.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from audit_engine import (
    AuditService,
    AuditServiceClosed,
    AuditSettings,
    AuditStore,
    AuditWriteError,
)
from audit_engine.storage import deadletter

POISON_ACTION = "state.poison"
POISON_ERROR = "IntegrityError: CHECK constraint failed: poisoned by the test"
UNIQUE_ERROR = "IntegrityError: UNIQUE constraint failed: audit_entries.event_id"
COMMITTED = None
# After close(timeout) gave up on a locked database, the entries it had not committed are
# dead-lettered: the queued ones with "close() timed out ...", the batch in flight with the error
# of its last attempt (busy, or whatever failed once the lock was gone).
ANY_DEAD_LETTER = "any dead-letter error"
FLUSH_TIMEOUT_S = 10.0


class AuditMachine(RuleBasedStateMachine):
    """A model of what was accepted, checked against the database and the dead-letter file."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="audit-stateful-"))
        self.db_path = self.tmp / "audit.db"
        self.service: AuditService | None = None
        self.serial = 0
        # serial -> (event_id, the acceptable outcomes: COMMITTED or a dead-letter error)
        self.expected: dict[int, tuple[str, frozenset[str | None]]] = {}
        self.unchecked: list[int] = []  # accepted since the last check
        self.committed_ids: list[str] = []  # event_ids seen committed by an earlier check
        self.poison_next = False

    # -- helpers ---------------------------------------------------------------------------

    def _open(self) -> AuditService:
        return AuditService(
            AuditSettings(
                database=self.db_path,
                level="all",
                buffer_max_size=8,
                buffer_flush_interval=3600,  # only flush(), close() or a full batch commit
                block_timeout=0.05,
                cleanup_enabled=False,
            )
        )

    def _record(self, service: AuditService, *, critical: bool, event_id: str | None = None) -> str:
        self.serial += 1
        serial = self.serial
        poison = self.poison_next
        self.poison_next = False
        eid = event_id or f"e{serial:05d}"
        error = POISON_ERROR if poison else UNIQUE_ERROR if event_id is not None else None
        self.expected[serial] = (eid, frozenset({error}))
        self.unchecked.append(serial)
        got = service.record(
            action=POISON_ACTION if poison else "state.step",
            event_id=eid,
            critical=critical,
            details={"n": serial},
        )
        assert got == eid
        return eid

    def _check(self) -> None:
        with contextlib.closing(sqlite3.connect(self.db_path)) as conn:
            rows = conn.execute(
                "SELECT event_id, details FROM audit_entries ORDER BY id"
            ).fetchall()
        stored = [(eid, json.loads(details)["n"]) for eid, details in rows]
        stored_serials = [n for _, n in stored]
        assert len(stored_serials) == len(set(stored_serials)), "an entry was committed twice"
        assert len({eid for eid, _ in stored}) == len(stored)
        dead_path = deadletter.path_for(self.db_path)
        dead: list[tuple[int, str]] = []
        if dead_path.exists():
            for number, entry, error in deadletter.read(dead_path):
                assert entry is not None, f"dead-letter line {number} unreadable: {error}"
                dead.append((entry.details["n"], error))  # type: ignore[arg-type]
        dead_serials = [n for n, _ in dead]
        assert len(dead_serials) == len(set(dead_serials)), "an entry was dead-lettered twice"
        assert set(stored_serials) <= set(self.expected), "a row nobody accepted"
        assert set(dead_serials) <= set(self.expected), "a dead letter nobody accepted"
        assert not set(stored_serials) & set(dead_serials), "committed and dead-lettered"
        errors = dict(dead)
        committed = set(stored_serials)
        for serial, (eid, allowed) in self.expected.items():
            outcome = COMMITTED if serial in committed else errors.get(serial, "lost")
            if outcome not in (COMMITTED, "lost") and ANY_DEAD_LETTER in allowed:
                continue
            assert outcome in allowed, f"entry {serial} ({eid}): {outcome}, expected {allowed}"
        self.committed_ids = [eid for eid, _ in stored]
        self.unchecked = []

    def _check_stats(self, service: AuditService) -> None:
        stats = service.stats()
        assert stats.written + stats.dead_lettered == stats.accepted
        assert stats.queue_depth == 0

    # -- rules -----------------------------------------------------------------------------

    @initialize()
    def start(self) -> None:
        self.service = self._open()
        # The poison is SQLite's own refusal, after the write lock is taken, in every way a row
        # can be written: a trigger on the schema the service just created.
        with contextlib.closing(sqlite3.connect(self.db_path)) as conn:
            conn.execute(
                f"CREATE TRIGGER poison BEFORE INSERT ON audit_entries "
                f"WHEN NEW.action = '{POISON_ACTION}' "
                "BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: poisoned by the test'); END"
            )
            conn.commit()

    @precondition(lambda self: self.service is not None)
    @rule(count=st.integers(min_value=1, max_value=12), critical_at=st.integers(0, 15))
    def record(self, count: int, critical_at: int) -> None:
        assert self.service is not None
        for i in range(count):
            if i == critical_at and self.poison_next:
                # A critical entry the database refuses raises, naming why (critical_sync);
                # it stays in the dead-letter file, which _check expects of it.
                with pytest.raises(
                    AuditWriteError, match=r"was not committed: .*poisoned by the test"
                ):
                    self._record(self.service, critical=True)
                continue
            self._record(self.service, critical=i == critical_at)

    @precondition(lambda self: self.service is not None)
    @rule()
    def poison_the_next_entry(self) -> None:
        self.poison_next = True

    # Which entries are committed depends on timing (a close that times out on a locked database
    # dead-letters what it could not write), so neither the precondition nor the draw may depend
    # on it: hypothesis replays a case and refuses data that is drawn differently the second time
    # (FlakyStrategyDefinition, seen on a loaded machine). An index is drawn, then applied.
    @precondition(lambda self: self.service is not None)
    @rule(pick=st.integers(min_value=0, max_value=2**16))
    def repeat_a_committed_event_id(self, pick: int) -> None:
        assert self.service is not None
        if not self.committed_ids:
            return
        event_id = self.committed_ids[pick % len(self.committed_ids)]
        self._record(self.service, critical=False, event_id=event_id)

    @precondition(lambda self: self.service is not None)
    @rule()
    def flush(self) -> None:
        assert self.service is not None
        assert self.service.flush(FLUSH_TIMEOUT_S) is True
        self._check_stats(self.service)
        self._check()

    @precondition(lambda self: self.service is not None)
    @rule()
    def close(self) -> None:
        service, self.service = self.service, None
        assert service is not None
        assert service.close(FLUSH_TIMEOUT_S) is True
        assert service.close(FLUSH_TIMEOUT_S) is True  # idempotent
        self._check_stats(service)
        assert not service.stats().writer_alive
        with pytest.raises(AuditServiceClosed):
            service.record(action="after.close")
        self._check()

    @precondition(lambda self: self.service is None)
    @rule()
    def reopen(self) -> None:
        self.service = self._open()

    @precondition(lambda self: self.service is not None)
    @rule(count=st.integers(min_value=0, max_value=5), critical=st.booleans())
    def hold_the_write_lock_briefly(self, count: int, critical: bool) -> None:
        assert self.service is not None
        locker = sqlite3.connect(self.db_path, isolation_level=None, timeout=10)
        try:
            locker.execute("BEGIN EXCLUSIVE")
            for _ in range(count):
                self._record(self.service, critical=False)
            if count:
                assert self.service.flush(0.02) is False  # cannot commit while locked
            if critical:
                # Not confirmed within block_timeout: raises, but stays queued and is written.
                with pytest.raises(AuditWriteError):
                    self._record(self.service, critical=True)
        finally:
            if locker.in_transaction:
                locker.execute("COMMIT")
            locker.close()
        assert self.service.flush(FLUSH_TIMEOUT_S) is True
        self._check()

    @precondition(lambda self: self.service is not None)
    # More than one batch (8): some entries are in flight, the rest still queued.
    @rule(count=st.integers(min_value=1, max_value=20))
    def close_times_out_on_a_locked_database(self, count: int) -> None:
        service, self.service = self.service, None
        assert service is not None
        locker = sqlite3.connect(
            self.db_path, isolation_level=None, timeout=10, check_same_thread=False
        )
        guard = threading.Lock()

        def release() -> None:
            with guard:
                if locker.in_transaction:
                    locker.execute("COMMIT")

        # Released soon after close() gave up: the batch in flight may still commit.
        timer = threading.Timer(0.05, release)
        try:
            locker.execute("BEGIN EXCLUSIVE")
            for _ in range(count):
                self._record(service, critical=False)
            timer.start()
            assert service.close(0.02) is False
        finally:
            timer.cancel()
            release()
            locker.close()
        stats = service.stats()
        assert stats.written + stats.dead_lettered == stats.accepted
        assert stats.last_error is not None
        assert stats.last_error.startswith("close() could not drain the queue in time")
        for serial in self.unchecked:  # the entries close() may have had to give up on
            eid, allowed = self.expected[serial]
            self.expected[serial] = (eid, allowed | {ANY_DEAD_LETTER})
        self._check()

    def teardown(self) -> None:
        try:
            if self.service is not None:
                assert self.service.close(FLUSH_TIMEOUT_S) is True
                self._check_stats(self.service)
            if self.db_path.exists():
                self._check()
                with AuditStore(self.db_path) as audit_store:
                    report = audit_store.verify()
                assert report.ok, report
        finally:
            if self.service is not None:
                self.service.close(FLUSH_TIMEOUT_S)
            shutil.rmtree(self.tmp, ignore_errors=True)


def test_every_accepted_entry_is_committed_once_or_dead_lettered() -> None:
    run_state_machine_as_test(
        AuditMachine,
        settings=settings(
            max_examples=25,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
