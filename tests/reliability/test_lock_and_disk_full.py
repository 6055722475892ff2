"""A database locked by someone else, a full disk, and a close() that cannot wait: nothing is lost.

Every accepted entry ends up committed or in the dead-letter file, and a replay brings the
dead-lettered ones back. Locks held by a second connection are released by a ``threading.Timer``
or in a ``finally``; the subprocess has a timeout; nothing here sleeps.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from audit_engine import AuditService, AuditStore
from audit_engine.storage import deadletter
from audit_engine.storage.sqlite import schema

MakeService = Callable[..., AuditService]

# -- helpers ------------------------------------------------------------------------------------


def _ids(db_path: Path) -> list[str]:
    """Every stored event_id, in commit (id) order."""
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        return [row[0] for row in conn.execute("SELECT event_id FROM audit_entries ORDER BY id")]


def _dead_letters(db_path: Path) -> list[tuple[str, str]]:
    """(event_id, error) of every line of the dead-letter file (none when it does not exist)."""
    path = deadletter.path_for(db_path)
    if not path.exists():
        return []
    out = []
    for number, entry, error in deadletter.read(path):
        assert entry is not None, f"unreadable dead-letter line {number}: {error}"
        out.append((entry.event_id, error))
    return out


def _recorded(event_id: str | None) -> str:
    assert event_id is not None
    return event_id


class _Lock:
    """A second connection holding ``BEGIN EXCLUSIVE``; release() is idempotent and thread-safe."""

    def __init__(self, db_path: Path) -> None:
        self._guard = threading.Lock()
        self._conn = sqlite3.connect(
            db_path, isolation_level=None, check_same_thread=False, timeout=10
        )
        self._conn.execute("BEGIN EXCLUSIVE")
        self.released = threading.Event()

    def release(self) -> None:
        with self._guard:
            if self._conn.in_transaction:
                self._conn.execute("COMMIT")
            self.released.set()

    def close(self) -> None:
        self.release()
        with self._guard:
            self._conn.close()


@contextlib.contextmanager
def _locked(
    db_path: Path,
    release_after: float | None = None,
    before_release: Callable[[], None] = lambda: None,
) -> Iterator[_Lock]:
    """Hold the write lock; released after ``release_after`` seconds (if given) or on exit."""
    lock = _Lock(db_path)

    def release() -> None:
        before_release()
        lock.release()

    timer = threading.Timer(release_after, release) if release_after is not None else None
    if timer is not None:
        timer.start()
    try:
        yield lock
    finally:
        if timer is not None:
            timer.cancel()
            timer.join(10)
        lock.close()


# -- a database locked by another connection ---------------------------------------------------

LOCK_HELD_S = 3.0
LOCKED_ENTRIES = 50_000


def test_record_does_not_block_while_another_connection_holds_the_lock(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service(
        queue_maxsize=LOCKED_ENTRIES + 1000, buffer_flush_interval=0.05, cleanup_enabled=False
    )
    seen_at_release: dict[str, Any] = {}

    def just_before_release() -> None:
        stats = service.stats()
        seen_at_release.update(written=stats.written, retries=stats.retries)

    ids: list[str] = []
    durations_while_locked: list[float] = []
    started = time.monotonic()
    with _locked(db_path, LOCK_HELD_S, just_before_release) as lock:
        for i in range(LOCKED_ENTRIES):
            t0 = time.perf_counter()
            event_id = service.record(action="locked.write", details={"i": i})
            took = time.perf_counter() - t0
            ids.append(_recorded(event_id))
            if not lock.released.is_set():
                durations_while_locked.append(took)
        recording_s = time.monotonic() - started
        assert lock.released.wait(LOCK_HELD_S + 10)
    assert service.close(timeout=60) is True
    stats = service.stats()

    longest = max(durations_while_locked)
    print(
        f"\n[lock] {LOCKED_ENTRIES} entries recorded in {recording_s:.2f}s under a "
        f"{LOCK_HELD_S}s lock; {len(durations_while_locked)} while locked; longest record() "
        f"while locked {longest * 1000:.1f} ms; writer retries {stats.retries}; "
        f"max queue depth {stats.max_queue_depth}"
    )
    # The lock really kept the writer out: nothing committed, retries counted.
    assert seen_at_release["written"] == 0
    assert seen_at_release["retries"] > 0
    # Most of the entries were recorded while the lock was held, none of them waited for it.
    assert len(durations_while_locked) >= LOCKED_ENTRIES // 5, (
        f"only {len(durations_while_locked)} entries recorded during the {LOCK_HELD_S}s lock"
    )
    assert longest < 0.5, f"record() blocked {longest:.3f}s while the queue had room"
    # Nothing lost, in order, once.
    assert _ids(db_path) == ids
    assert stats.written == LOCKED_ENTRIES
    assert stats.dead_lettered == 0
    assert not deadletter.path_for(db_path).exists()


# -- disk full ----------------------------------------------------------------------------------

FULL_ENTRIES = 1000
FULL_HEADROOM_PAGES = 40
FULL_ERROR = "OperationalError: database or disk is full"


class _DiskCap:
    """Every connection the engine opens gets ``PRAGMA max_page_count``: the file cannot grow.

    The writer and ``AuditStore`` connect through ``backends`` -> ``schema.open_connection`` (looked
    up at call time), which is what gets wrapped; ``max_pages = None`` is "space freed".
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.max_pages: int | None = None
        self.capped_connections = 0
        self._original = schema.open_connection
        monkeypatch.setattr(schema, "open_connection", self._open)  # AuditStore's too

    def _open(self, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = self._original(*args, **kwargs)
        if self.max_pages is not None:
            conn.execute(f"PRAGMA max_page_count = {self.max_pages}")
            self.capped_connections += 1
        return conn


def _page_count(db_path: Path) -> int:
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        count: int = conn.execute("PRAGMA page_count").fetchone()[0]
        return count


@pytest.mark.parametrize("replay_with", ["api", "cli"])
def test_a_full_disk_dead_letters_the_rest_and_replay_restores_every_entry(
    make_service: MakeService,
    db_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    replay_with: str,
) -> None:
    AuditStore(db_path, create=True).close()
    cap = _DiskCap(monkeypatch)
    cap.max_pages = _page_count(db_path) + FULL_HEADROOM_PAGES
    service = make_service(buffer_flush_interval=3600, cleanup_enabled=False)
    assert cap.capped_connections == 1  # the writer's connection

    ids = [
        _recorded(service.record(action="disk.full", details={"i": i, "pad": "x" * 200}))
        for i in range(FULL_ENTRIES)
    ]
    assert service.close(timeout=60) is True  # every entry handled: committed or dead-lettered
    stats = service.stats()

    committed = _ids(db_path)
    dead = _dead_letters(db_path)
    dead_ids = [event_id for event_id, _ in dead]
    print(
        f"\n[disk full] {len(committed)} committed, {len(dead)} dead-lettered of {len(ids)} "
        f"accepted ({stats.batches} batches)"
    )
    assert 0 < len(committed) < FULL_ENTRIES, "the cap should let some, not all, entries in"
    # None vanish, none twice: committed + dead-lettered is exactly what was accepted.
    assert len(committed) + len(dead) == FULL_ENTRIES
    assert sorted(committed + dead_ids) == sorted(ids)
    assert {error for _, error in dead} == {FULL_ERROR}
    assert (stats.written, stats.dead_lettered) == (len(committed), len(dead))
    assert stats.last_error == FULL_ERROR

    cap.max_pages = None  # space is free again
    if replay_with == "api":
        with AuditStore(db_path) as audit_store:
            report = audit_store.replay_dead_letters()
        assert (report.replayed, report.already_present, report.kept) == (len(dead), 0, 0)
        assert report.errors == []
    else:
        result = subprocess.run(
            [sys.executable, "-m", "audit_engine", "--db", str(db_path), "replay-deadletter"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (result.returncode, result.stderr) == (0, ""), result.stderr
        assert result.stdout.startswith(f"Replayed {len(dead)} entries (0 "), result.stdout

    final = _ids(db_path)
    assert len(final) == FULL_ENTRIES
    assert sorted(final) == sorted(ids)
    assert final[: len(committed)] == committed  # replayed entries are appended after
    assert not deadletter.path_for(db_path).exists()  # emptied, so removed
    with AuditStore(db_path) as audit_store:
        assert audit_store.verify().ok


# -- close(timeout) while the database stays locked ---------------------------------------------

BEFORE_LOCK = 200
DURING_LOCK = 3000
CLOSE_TIMEOUT_S = 1.0
CLOSE_ERRORS = {
    "close() timed out while the database was busy",
    "aborted by close() while the database was busy",
}


def test_close_with_a_timeout_on_a_locked_database_returns_in_time_and_loses_nothing(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service(buffer_max_size=500, buffer_flush_interval=3600, cleanup_enabled=False)
    before = [_recorded(service.record(action="before.lock")) for _ in range(BEFORE_LOCK)]
    assert service.flush(timeout=30)

    with _locked(db_path):  # held until after close() returned
        during = [_recorded(service.record(action="during.lock")) for _ in range(DURING_LOCK)]
        started = time.monotonic()
        drained = service.close(timeout=CLOSE_TIMEOUT_S)
        elapsed = time.monotonic() - started
        stats = service.stats()
        committed_while_locked = _ids(db_path)  # WAL: readers are not blocked by the writer lock

    path = deadletter.path_for(db_path)
    dead = _dead_letters(db_path)
    print(
        f"\n[stuck close] close(timeout={CLOSE_TIMEOUT_S}) returned {drained} after "
        f"{elapsed:.2f}s; {len(dead)} entries dead-lettered; last_error: {stats.last_error}"
    )
    assert drained is False
    assert elapsed < CLOSE_TIMEOUT_S + 2
    assert not stats.writer_alive
    assert stats.last_error == (
        f"close() could not drain the queue in time: {DURING_LOCK} entries moved to {path}"
    )
    assert stats.dead_lettered == DURING_LOCK
    assert committed_while_locked == before
    assert sorted(event_id for event_id, _ in dead) == sorted(during)
    assert {error for _, error in dead} <= CLOSE_ERRORS

    # The lock is gone: a replay brings the dead-lettered entries back.
    with AuditStore(db_path) as audit_store:
        report = audit_store.replay_dead_letters()
        assert (report.replayed, report.already_present, report.kept) == (DURING_LOCK, 0, 0)
        assert audit_store.verify().ok
    final = _ids(db_path)
    assert final[:BEFORE_LOCK] == before
    assert sorted(final[BEFORE_LOCK:]) == sorted(during)
    assert not path.exists()
