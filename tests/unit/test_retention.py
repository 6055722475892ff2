"""Retention: AuditStore.purge (prefix only, batches, anchors, runs, dry run), its bad inputs, and
the service's background cleanup thread.

The cleanup thread is observed without sleeping: ``audit_engine.storage.retention.purge`` is
wrapped so the test learns, through a ``threading.Event``, that a run has finished; ``close()``
then joins the thread, after which its counters are final.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import trails
from support import rows_of

from audit_engine import AuditEntry, AuditService, AuditStore, AuditStoreError, SettingsError
from audit_engine.models import utcnow
from audit_engine.storage import retention
from audit_engine.storage import sqlite as store
from audit_engine.storage.chain import GENESIS_HASH, ChainHead
from audit_engine.storage.retention import CLEANUP_THREAD_NAME, CleanupReport

MakeService = Callable[..., AuditService]

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


# -- helpers ------------------------------------------------------------------------------------


def _entries(timestamps: Sequence[datetime], prefix: str = "evt") -> list[AuditEntry]:
    return [
        AuditEntry(event_id=f"{prefix}-{n:03d}", timestamp=ts, action="thing.do", actor="alice")
        for n, ts in enumerate(timestamps, start=1)
    ]


def _write(db_path: Path | str, timestamps: Sequence[datetime], prefix: str = "evt") -> None:
    trails.write(db_path, _entries(timestamps, prefix))


def _query(db_path: Path | str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    return trails.query(db_path, sql, params)


def _execute(db_path: Path | str, sql: str, params: Sequence[Any] = ()) -> None:
    trails.execute(db_path, (sql, params))


def _ids(db_path: Path | str) -> list[int]:
    return [row[0] for row in _query(db_path, "SELECT id FROM audit_entries ORDER BY id")]


def _hash_of(db_path: Path | str, row_id: int) -> str:
    rows = _query(db_path, "SELECT hash FROM audit_entries WHERE id = ?", (row_id,))
    return str(rows[0][0])


def _anchors(db_path: Path | str) -> list[tuple[Any, ...]]:
    return _query(
        db_path,
        "SELECT id, last_deleted_id, last_deleted_hash, rows_deleted, cutoff, created_at "
        "FROM audit_anchors ORDER BY id",
    )


def _runs(db_path: Path | str) -> list[tuple[Any, ...]]:
    return _query(
        db_path,
        "SELECT started_at, finished_at, cutoff, rows_deleted, batches, duration_s "
        "FROM audit_cleanup_runs ORDER BY id",
    )


@pytest.fixture
def audit_store(db_path: Path) -> Iterator[AuditStore]:
    """An AuditStore on the test's database (created empty if nothing wrote it yet)."""
    store.open_connection(db_path).close()
    with AuditStore(db_path) as opened:
        yield opened


# -- what is deleted ----------------------------------------------------------------------------


def test_purge_deletes_old_rows_and_keeps_newer_ones(trail_db: Path | str) -> None:
    now = utcnow()
    _write(trail_db, [now - timedelta(days=60)] * 5 + [now - timedelta(days=1)] * 3)

    with AuditStore(trail_db) as audit:
        before = utcnow()
        report = audit.purge(timedelta(days=30))
        after = utcnow()
        verified = audit.verify(min_retention=timedelta(days=30))

    assert report.rows_deleted == 5
    assert report.batches == 1
    assert report.dry_run is False
    assert report.duration_s >= 0
    assert before - timedelta(days=30) <= report.cutoff <= after - timedelta(days=30)
    assert _ids(trail_db) == [6, 7, 8]
    assert verified.ok is True
    assert verified.rows_checked == 3


def test_purge_with_an_aware_cutoff_datetime(db_path: Path) -> None:
    _write(db_path, [T0 + n * MINUTE for n in range(6)])

    with AuditStore(db_path) as audit:
        report = audit.purge(T0 + 3 * MINUTE)

    assert report.cutoff == T0 + 3 * MINUTE
    assert report.rows_deleted == 3
    assert _ids(db_path) == [4, 5, 6]  # the row exactly at the cutoff stays


def test_purge_with_a_cutoff_in_another_timezone(db_path: Path) -> None:
    _write(db_path, [T0 + n * MINUTE for n in range(4)])
    # 14:02 at UTC+2 is 12:02 UTC.
    cutoff = datetime(2024, 5, 1, 14, 2, tzinfo=timezone(timedelta(hours=2)))

    with AuditStore(db_path) as audit:
        assert audit.purge(cutoff).rows_deleted == 2

    assert _ids(db_path) == [3, 4]


def test_purge_with_nothing_old_deletes_nothing(trail_db: Path | str) -> None:
    _write(trail_db, [T0 + n * MINUTE for n in range(3)])

    with AuditStore(trail_db) as audit:
        report = audit.purge(T0 - MINUTE)
        assert audit.verify().ok is True

    assert (report.rows_deleted, report.batches) == (0, 0)
    assert _ids(trail_db) == [1, 2, 3]
    assert _anchors(trail_db) == []


def test_purge_of_an_empty_database(audit_store: AuditStore, db_path: Path) -> None:
    report = audit_store.purge(timedelta(days=1))

    assert (report.rows_deleted, report.batches) == (0, 0)
    assert audit_store.verify().ok is True
    assert _anchors(db_path) == []


@pytest.mark.parametrize(("batch_size", "batches"), [(10, 3), (25, 1), (1, 25), (None, 1)])
def test_purge_deletes_in_batches_of_the_given_size(
    trail_db: Path | str, batch_size: int | None, batches: int
) -> None:
    _write(trail_db, [T0] * 25 + [T0 + timedelta(days=1)] * 2)

    with AuditStore(trail_db) as audit:
        report = audit.purge(T0 + MINUTE, batch_size=batch_size)
        assert audit.verify().ok is True

    assert report.rows_deleted == 25
    assert report.batches == batches
    assert _ids(trail_db) == [26, 27]


def _statement_kind(statement: str) -> str | None:
    words = statement.split()
    if words[0] in ("BEGIN", "COMMIT"):
        return words[0]
    if words[0] in ("INSERT", "DELETE") and words[2] in ("audit_entries", "audit_engine_purge"):
        return f"{words[0]} {words[2]}"
    return None


def test_each_batch_is_its_own_transaction(db_path: Path) -> None:
    _write(db_path, [T0] * 25 + [T0 + timedelta(days=1)])
    conn = store.open_connection(db_path)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        report = retention.purge(conn, T0 + MINUTE, 10)
    finally:
        conn.close()

    assert report.batches == 3
    # The trace repeats a statement each time a trigger of the guard runs for one of its rows.
    kinds = [kind for kind in map(_statement_kind, statements) if kind is not None]
    txn = [kind for kind, _ in itertools.groupby(kinds)]
    # Three batches, each with the purge's marker set and cleared inside it (the guard lets only
    # such a transaction delete entries), then the run's record (its chain's tail is read under
    # the write lock).
    batch = ["BEGIN", "INSERT audit_engine_purge", "DELETE audit_entries"]
    batch += ["DELETE audit_engine_purge", "COMMIT"]
    assert txn == batch * 3 + ["BEGIN", "COMMIT"]
    assert all(s == "BEGIN IMMEDIATE" for s in statements if s.startswith("BEGIN"))


def test_purge_stops_between_batches_when_asked(db_path: Path) -> None:
    _write(db_path, [T0] * 25)
    conn = store.open_connection(db_path)
    checks = 0

    def stop_after_one_batch() -> bool:
        nonlocal checks
        checks += 1
        return checks > 1

    try:
        report = retention.purge(conn, T0 + MINUTE, 10, should_stop=stop_after_one_batch)
    finally:
        conn.close()

    assert (report.rows_deleted, report.batches) == (10, 1)
    assert _ids(db_path)[0] == 11
    with AuditStore(db_path) as audit:
        assert audit.verify().ok is True


def test_a_failed_batch_keeps_its_rows(db_path: Path) -> None:
    _write(db_path, [T0] * 5 + [T0 + timedelta(days=1)])
    # The batch's last statement (recording the anchor) fails: its DELETE must be undone too.
    _execute(
        db_path,
        "CREATE TRIGGER no_anchor BEFORE INSERT ON audit_anchors "
        "BEGIN SELECT RAISE(ABORT, 'anchor refused'); END",
    )

    with AuditStore(db_path) as audit:
        with pytest.raises(AuditStoreError) as exc:
            audit.purge(T0 + MINUTE)
        assert audit.verify().ok is True

    assert str(exc.value) == f"cannot purge {db_path}: anchor refused"
    assert _ids(db_path) == [1, 2, 3, 4, 5, 6]
    assert _anchors(db_path) == []


def test_a_batch_is_planned_again_under_the_write_lock(db_path: Path) -> None:
    _write(db_path, [T0] * 5 + [T0 + timedelta(days=1)])
    conn = store.open_connection(db_path)
    other = store.open_connection(db_path)
    raced: list[CleanupReport] = []

    def purge_first_elsewhere(statement: str) -> None:
        # Runs as conn's BEGIN IMMEDIATE starts: after conn planned its batch, before the lock.
        if statement == "BEGIN IMMEDIATE" and not raced:
            raced.append(retention.purge(other, T0 + MINUTE, 100))

    conn.set_trace_callback(purge_first_elsewhere)
    try:
        report = retention.purge(conn, T0 + MINUTE, 100)
    finally:
        conn.close()
        other.close()

    assert [r.rows_deleted for r in raced] == [5]
    assert (report.rows_deleted, report.batches) == (0, 0)
    assert _ids(db_path) == [6]
    assert [(a[1], a[3]) for a in _anchors(db_path)] == [(5, 5)]
    with AuditStore(db_path) as audit:
        assert audit.verify().ok is True


# -- only a prefix ------------------------------------------------------------------------------


def test_an_old_row_after_a_newer_one_waits(trail_db: Path | str) -> None:
    # Commit order: old, old, new, old (committed late), newer.
    _write(trail_db, [T0, T0 + MINUTE, T0 + 10 * MINUTE, T0 + 2 * MINUTE, T0 + 20 * MINUTE])

    with AuditStore(trail_db) as audit:
        first = audit.purge(T0 + 5 * MINUTE)
        assert _ids(trail_db) == [3, 4, 5]  # row 4 is old but follows the newer row 3

        second = audit.purge(T0 + 15 * MINUTE)  # now row 3 is old too: 3 and 4 go
        assert _ids(trail_db) == [5]
        assert audit.verify().ok is True

    assert (first.rows_deleted, second.rows_deleted) == (2, 2)


def test_dry_run_counts_the_prefix_and_deletes_nothing(trail_db: Path | str) -> None:
    _write(trail_db, [T0, T0 + MINUTE, T0 + 10 * MINUTE, T0 + 2 * MINUTE])

    with AuditStore(trail_db) as audit:
        report = audit.purge(T0 + 5 * MINUTE, batch_size=1, dry_run=True)
        all_old = audit.purge(T0 + 60 * MINUTE, dry_run=True)
        none_old = audit.purge(T0 - MINUTE, dry_run=True)

    assert report.dry_run is True
    assert report.rows_deleted == 2
    assert report.batches == 0
    assert report.cutoff == T0 + 5 * MINUTE
    assert all_old.rows_deleted == 4
    assert none_old.rows_deleted == 0
    assert _ids(trail_db) == [1, 2, 3, 4]
    assert _anchors(trail_db) == []
    assert _runs(trail_db) == []


def test_dry_run_of_an_empty_database(audit_store: AuditStore) -> None:
    assert audit_store.purge(timedelta(days=1), dry_run=True).rows_deleted == 0


# -- anchors and runs ---------------------------------------------------------------------------


def test_purge_records_one_anchor_per_run(trail_db: Path | str) -> None:
    _write(trail_db, [T0] * 25 + [T0 + timedelta(days=1)] * 2)
    last_hash = _hash_of(trail_db, 25)
    cutoff = T0 + MINUTE

    with AuditStore(trail_db) as audit:
        before = utcnow()
        audit.purge(cutoff, batch_size=10)
        after = utcnow()

    [(_, last_id, anchor_hash, rows_deleted, cutoff_text, created_at)] = _anchors(trail_db)
    assert (last_id, anchor_hash, rows_deleted) == (25, last_hash, 25)
    assert cutoff_text == store.format_timestamp(cutoff) == "2024-05-01T12:01:00.000000Z"
    assert before <= datetime.fromisoformat(created_at) <= after


def test_every_run_that_deletes_adds_an_anchor_and_verify_uses_the_last(
    trail_db: Path | str,
) -> None:
    _write(trail_db, [T0 + n * MINUTE for n in range(6)])

    with AuditStore(trail_db) as audit:
        audit.purge(T0 + 2 * MINUTE)
        audit.purge(T0 + 4 * MINUTE)
        report = audit.verify()

    assert [(a[1], a[3]) for a in _anchors(trail_db)] == [(2, 2), (4, 2)]
    assert report.ok is True
    assert report.rows_checked == 2


def test_purge_keeps_each_run(trail_db: Path | str) -> None:
    _write(trail_db, [T0] * 25 + [T0 + timedelta(days=1)])
    cutoff = T0 + MINUTE

    with AuditStore(trail_db) as audit:
        before = utcnow()
        report = audit.purge(cutoff, batch_size=10)
        empty = audit.purge(cutoff)
        after = utcnow()

    runs = _runs(trail_db)
    assert len(runs) == 2
    started, finished, cutoff_text, rows_deleted, batches, duration_s = runs[0]
    assert before <= datetime.fromisoformat(started) <= datetime.fromisoformat(finished) <= after
    assert datetime.fromisoformat(cutoff_text) == cutoff
    assert (rows_deleted, batches) == (25, 3)
    assert duration_s == round(report.duration_s, 6)  # as the run's canonical form spells it
    assert (empty.rows_deleted, empty.batches) == (0, 0)
    assert runs[1][3:5] == (0, 0)  # a run that deleted nothing is kept too


def test_an_empty_run_need_not_be_recorded(db_path: Path) -> None:
    _write(db_path, [T0])
    conn = store.open_connection(db_path)
    try:
        report = retention.purge(conn, T0, 10, record_empty_run=False)
        kept = retention.purge(conn, T0 + MINUTE, 10, record_empty_run=False)
    finally:
        conn.close()

    assert (report.rows_deleted, kept.rows_deleted) == (0, 1)
    assert [run[3] for run in _runs(db_path)] == [1]


# -- the chain after a purge --------------------------------------------------------------------


def test_verify_after_purging_everything(trail_db: Path | str) -> None:
    _write(trail_db, [T0 + n * MINUTE for n in range(5)])
    last_hash = _hash_of(trail_db, 5)

    with AuditStore(trail_db) as audit:
        head_before = audit.head()
        report = audit.purge(T0 + timedelta(days=1), batch_size=2)
        verified = audit.verify()
        head_after = audit.head()
        against_old_head = audit.verify(expected_head=head_before)

    anchor = ChainHead(id=5, hash=last_hash)
    assert (report.rows_deleted, report.batches) == (5, 3)
    assert _ids(trail_db) == []
    assert verified.ok is True
    assert verified.rows_checked == 0
    assert verified.head == anchor
    assert head_before == head_after == anchor
    # A head must still be a row: the anchor only claims it was purged (issue 11 item 9).
    assert against_old_head.ok is False
    assert against_old_head.first_bad_id == 5


def test_rows_written_after_a_full_purge_chain_from_the_anchor(trail_db: Path | str) -> None:
    _write(trail_db, [T0 + n * MINUTE for n in range(5)])
    anchor_hash = _hash_of(trail_db, 5)
    with AuditStore(trail_db) as audit:
        audit.purge(T0 + timedelta(days=1))

    _write(trail_db, [T0 + timedelta(days=2)] * 2, prefix="new")

    rows = _query(trail_db, "SELECT id, event_id, prev_hash FROM audit_entries ORDER BY id")
    assert rows[0] == (6, "new-001", anchor_hash)
    assert rows[1][:2] == (7, "new-002")
    with AuditStore(trail_db) as audit:
        report = audit.verify()
    assert report.ok is True
    assert report.rows_checked == 2
    assert report.head == ChainHead(id=7, hash=_hash_of(trail_db, 7))


def test_service_writes_after_a_full_purge_chain_from_the_anchor(
    db_path: Path, make_service: MakeService
) -> None:
    _write(db_path, [T0, T0 + MINUTE])
    with AuditStore(db_path) as audit:
        audit.purge(T0 + timedelta(days=1))
    service = make_service(async_writes=False, cleanup_enabled=False)

    service.record(action="after.purge", event_id="after-1")
    service.close()

    assert _query(db_path, "SELECT id, prev_hash FROM audit_entries") == [
        (3, _query(db_path, "SELECT last_deleted_hash FROM audit_anchors")[0][0])
    ]
    with AuditStore(db_path) as audit:
        assert audit.verify().ok is True


def test_a_middle_deletion_after_a_purge_is_reported(trail_db: Path | str) -> None:
    _write(trail_db, [T0 + n * MINUTE for n in range(8)])
    with AuditStore(trail_db) as audit:
        audit.purge(T0 + 3 * MINUTE)

    _execute(trail_db, "DELETE FROM audit_entries WHERE id = 6")

    with AuditStore(trail_db) as audit:
        report = audit.verify()
    assert report.ok is False
    assert report.first_bad_id == 7
    assert report.reason == "row 6 is missing (deleted from the chain)"
    assert report.rows_checked == 2


def test_deleting_the_first_row_left_after_a_purge_is_reported(trail_db: Path | str) -> None:
    _write(trail_db, [T0 + n * MINUTE for n in range(5)])
    with AuditStore(trail_db) as audit:
        audit.purge(T0 + 2 * MINUTE)

    _execute(trail_db, "DELETE FROM audit_entries WHERE id = 3")

    with AuditStore(trail_db) as audit:
        report = audit.verify()
    assert report.ok is False
    assert report.reason == "row 3 is missing (deleted from the chain)"


def test_deleting_old_rows_by_hand_is_not_a_purge(trail_db: Path | str) -> None:
    _write(trail_db, [T0 + n * MINUTE for n in range(6)])

    _execute(trail_db, "DELETE FROM audit_entries WHERE id <= 3")

    with AuditStore(trail_db) as audit:
        report = audit.verify()
    assert report.ok is False
    assert report.first_bad_id == 4
    assert report.reason == "rows 1..3 are missing (deleted from the chain)"


def test_a_row_forged_before_the_anchor_is_reported(db_path: Path) -> None:
    _write(db_path, [T0 + n * MINUTE for n in range(6)])
    with AuditStore(db_path) as audit:
        audit.purge(T0 + 4 * MINUTE)

    _execute(
        db_path,
        "INSERT INTO audit_entries (id, event_id, timestamp, action, operation, outcome, "
        "details, critical, prev_hash, hash) VALUES (2, 'forged', ?, 'x', 'execute', "
        "'success', '{}', 0, ?, ?)",
        (store.format_timestamp(T0), GENESIS_HASH, "f" * 64),
    )

    with AuditStore(db_path) as audit:
        report = audit.verify()
    assert report.ok is False
    assert report.first_bad_id == 2
    assert report.reason == "row 2 comes before the chain's starting point (id 4)"


def test_a_forged_anchor_hash_is_reported(db_path: Path) -> None:
    _write(db_path, [T0 + n * MINUTE for n in range(4)])
    with AuditStore(db_path) as audit:
        audit.purge(T0 + 2 * MINUTE)

    _execute(db_path, "UPDATE audit_anchors SET last_deleted_hash = ?", ("e" * 64,))

    with AuditStore(db_path) as audit:
        report = audit.verify()
    # The anchor is itself hashed now: the change shows before the rows are read.
    assert report.ok is False
    assert report.reason == "anchor 1 was modified (its hash does not match its contents)"


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("older_than", "message"),
    [
        (timedelta(0), "older_than must be a positive duration (got 0:00:00)"),
        (timedelta(days=-1), "older_than must be a positive duration (got -1 day, 0:00:00)"),
        (datetime(2024, 1, 1), "older_than must be timezone-aware (got a naive datetime)"),
        (
            datetime(2999, 1, 1, tzinfo=UTC),
            "older_than must not be in the future (got 2999-01-01T00:00:00+00:00)",
        ),
        (30, "older_than must be a timedelta or a datetime (got int)"),
        ("30d", "older_than must be a timedelta or a datetime (got str)"),
    ],
)
@pytest.mark.parametrize("dry_run", [False, True])
def test_purge_rejects_a_bad_older_than(
    audit_store: AuditStore, db_path: Path, older_than: Any, message: str, dry_run: bool
) -> None:
    with pytest.raises(AuditStoreError) as exc:
        audit_store.purge(older_than, dry_run=dry_run)

    assert str(exc.value) == message
    assert _runs(db_path) == []


@pytest.mark.parametrize("batch_size", [0, -10])
@pytest.mark.parametrize("dry_run", [False, True])
def test_purge_rejects_a_non_positive_batch_size(
    db_path: Path, batch_size: int, dry_run: bool
) -> None:
    _write(db_path, [T0])

    with AuditStore(db_path) as audit, pytest.raises(AuditStoreError) as exc:
        audit.purge(timedelta(days=1), batch_size=batch_size, dry_run=dry_run)

    assert str(exc.value) == f"batch_size must be a positive number of rows (got {batch_size})"
    assert _ids(db_path) == [1]


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("retention_days", 0),
        ("retention_days", -7),
        ("cleanup_batch_size", 0),
        ("cleanup_batch_size", -1),
    ],
)
def test_non_positive_retention_settings_are_rejected(
    make_settings: Callable[..., Any], setting: str, value: int
) -> None:
    with pytest.raises(SettingsError) as exc:
        make_settings(**{setting: value})

    assert str(exc.value) == (
        f"invalid setting {setting} (the {setting}= argument): "
        f"Input should be greater than 0 (got {value})"
    )


def test_purge_of_a_file_that_is_not_an_audit_database(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
        conn.commit()

    with pytest.raises(AuditStoreError) as exc, AuditStore(path) as audit:
        audit.purge(timedelta(days=1))

    assert str(exc.value) == f"{path} is not an audit database (no audit_entries table)"


def _large_database(path: Path) -> None:
    """Several hundred pages of rows, checkpointed into the main file (no WAL left)."""
    conn = store.open_connection(path)
    try:
        store.write_batch(
            conn,
            rows_of(
                [
                    AuditEntry(
                        event_id=f"big-{n:04d}",
                        timestamp=T0 + n * MINUTE,
                        action="thing.do",
                        details={"pad": "x" * 1500},
                    )
                    for n in range(600)
                ]
            ),
        )
    finally:
        conn.close()


def _overwrite_middle(path: Path) -> None:
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek(size // 2 // 4096 * 4096)
        f.write(b"\xff" * 4096 * 16)


def test_purge_of_a_corrupt_database_is_an_audit_store_error(db_path: Path) -> None:
    _large_database(db_path)
    _overwrite_middle(db_path)

    with pytest.raises(AuditStoreError) as exc, AuditStore(db_path) as audit:
        audit.purge(T0 + timedelta(days=30), batch_size=100)

    assert str(exc.value).startswith(f"cannot purge {db_path}: ")
    assert "malformed" in str(exc.value)


def test_purge_of_a_truncated_database_is_an_audit_store_error(db_path: Path) -> None:
    _large_database(db_path)
    with db_path.open("r+b") as f:
        f.truncate(db_path.stat().st_size // 2)

    with pytest.raises(AuditStoreError, match="malformed"), AuditStore(db_path) as audit:
        audit.purge(T0 + timedelta(days=30))


# -- the background cleanup thread -------------------------------------------------------------


class _PurgeSpy:
    """Wraps retention.purge: counts calls, can fail some, and signals each finished call."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, failures: int = 0) -> None:
        self._real = retention.purge
        self._failures = failures
        self.calls: list[str] = []
        self.finished = threading.Event()
        self.succeeded = threading.Event()
        monkeypatch.setattr(retention, "purge", self)

    def __call__(self, *args: Any, **kwargs: Any) -> CleanupReport:
        self.calls.append(threading.current_thread().name)
        try:
            if len(self.calls) <= self._failures:
                raise sqlite3.OperationalError("database is locked")
            report = self._real(*args, **kwargs)
            self.succeeded.set()
            return report
        finally:
            self.finished.set()


def _old_entries_then_new(make_service: MakeService, old: int, new: int) -> None:
    writer = make_service(cleanup_enabled=False)
    for n in range(old):
        writer.record(
            action="thing.do", event_id=f"old-{n}", timestamp=utcnow() - timedelta(days=60)
        )
    for n in range(new):
        writer.record(action="thing.do", event_id=f"new-{n}")
    assert writer.close(timeout=10) is True


def test_the_cleanup_thread_purges_old_rows_when_the_service_starts(
    make_service: MakeService, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _old_entries_then_new(make_service, old=5, new=3)
    spy = _PurgeSpy(monkeypatch)

    service = make_service(cleanup_enabled=True, retention_days=30, cleanup_batch_size=2)
    assert spy.finished.wait(10)
    service.close(timeout=10)  # joins the cleanup thread: its counters are final

    stats = service.stats()
    assert spy.calls == [CLEANUP_THREAD_NAME]
    assert stats.cleanup_runs == 1
    assert stats.rows_purged == 5
    rows = _query(db_path, "SELECT event_id FROM audit_entries ORDER BY id")
    assert rows == [("new-0",), ("new-1",), ("new-2",)]
    assert [(run[3], run[4]) for run in _runs(db_path)] == [(5, 3)]
    with AuditStore(db_path) as audit:
        assert audit.verify(min_retention=timedelta(days=30)).ok is True


def test_a_cleanup_run_that_deletes_logs_one_info_line(
    make_service: MakeService,
    db_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Issue 11 item 25: an imported entry from 2020 vanished when a service started, silently.
    writer = make_service(cleanup_enabled=False)
    writer.record(action="thing.import", timestamp=datetime(2020, 3, 1, tzinfo=UTC))
    writer.record(action="thing.do")
    assert writer.close(timeout=10) is True
    spy = _PurgeSpy(monkeypatch)
    caplog.set_level(logging.INFO, logger="audit_engine.retention")

    service = make_service(cleanup_enabled=True, retention_days=30)
    assert spy.finished.wait(10)
    service.close(timeout=10)

    [cutoff] = [run[2] for run in _runs(db_path)]
    logged = [r for r in caplog.records if r.name == "audit_engine.retention"]
    assert [(r.levelno, r.getMessage()) for r in logged] == [
        (logging.INFO, f"audit retention purged 1 entry older than {cutoff} in 1 batch")
    ]
    # The anchor keeps the age the thread ran with: verify under that retention passes.
    assert _query(db_path, "SELECT older_than_us FROM audit_anchors") == [(30 * 86400 * 10**6,)]
    with AuditStore(db_path) as audit:
        assert audit.verify(min_retention=timedelta(days=30)).ok is True


def test_a_purge_logs_how_many_rows_and_batches(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write(db_path, [T0] * 5 + [T0 + timedelta(days=1)])
    caplog.set_level(logging.INFO, logger="audit_engine.retention")

    with AuditStore(db_path) as audit:
        audit.purge(T0 + MINUTE, batch_size=2)
        audit.purge(T0 + MINUTE)  # nothing left to delete: no line

    assert [r.getMessage() for r in caplog.records if r.name == "audit_engine.retention"] == [
        "audit retention purged 5 entries older than 2024-05-01T12:01:00.000000Z in 3 batches"
    ]


def test_an_idle_cleanup_run_writes_nothing(
    make_service: MakeService, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _old_entries_then_new(make_service, old=0, new=2)
    spy = _PurgeSpy(monkeypatch)

    service = make_service(cleanup_enabled=True, retention_days=30)
    assert spy.finished.wait(10)
    service.close(timeout=10)

    assert service.stats().cleanup_runs == 1
    assert service.stats().rows_purged == 0
    assert _runs(db_path) == []  # record_empty_run=False: an hourly no-op is not a write


def test_cleanup_disabled_starts_no_cleanup_thread(make_service: MakeService) -> None:
    def cleanup_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == CLEANUP_THREAD_NAME}

    before = cleanup_threads()

    disabled = make_service(cleanup_enabled=False)
    assert cleanup_threads() - before == set()
    assert disabled.stats().cleanup_runs == 0

    enabled = make_service(cleanup_enabled=True)  # the control: this one does start it
    started = cleanup_threads() - before
    assert len(started) == 1
    enabled.close(timeout=10)
    assert not any(thread.is_alive() for thread in started)


def test_an_injected_connection_service_starts_no_cleanup_thread(
    make_service: MakeService, db_path: Path
) -> None:
    before = {t for t in threading.enumerate() if t.name == CLEANUP_THREAD_NAME}
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        make_service(connection=conn, cleanup_enabled=True)
        after = {t for t in threading.enumerate() if t.name == CLEANUP_THREAD_NAME}
    finally:
        conn.close()

    assert after - before == set()


def test_the_cleanup_thread_survives_a_purge_error(
    make_service: MakeService,
    db_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _old_entries_then_new(make_service, old=4, new=1)
    spy = _PurgeSpy(monkeypatch, failures=1)
    caplog.set_level(logging.WARNING, logger="audit_engine.retention")

    service = make_service(cleanup_enabled=True, retention_days=30, cleanup_interval=0.01)
    assert spy.succeeded.wait(10)  # the run after the failed one
    cleanup = service._cleanup
    assert cleanup is not None
    assert cleanup.alive is True
    assert cleanup.last_error == "cleanup failed: database is locked"
    warnings = [r.getMessage() for r in caplog.records if r.name == "audit_engine.retention"]
    assert warnings[:1] == ["audit cleanup failed; retrying in 0.01s: database is locked"]
    service.close(timeout=10)

    assert cleanup.alive is False
    assert len(spy.calls) >= 2
    assert set(spy.calls) == {CLEANUP_THREAD_NAME}
    stats = service.stats()
    assert stats.cleanup_runs >= 1  # the failed run is not counted, the next ones are
    assert stats.rows_purged == 4
    assert _ids(db_path) == [5]


# -- planning and contention -------------------------------------------------------------------


def test_the_prefix_ends_inside_a_later_window(trail_db: Path | str) -> None:
    old = utcnow() - timedelta(days=200)
    new = utcnow()
    # 25 old rows, one new one, then old again: only the first 25 go, whatever the batch size.
    _write(trail_db, [old] * 25 + [new] + [old] * 5)
    with AuditStore(trail_db) as store:
        dry = store.purge(timedelta(days=90), batch_size=10, dry_run=True)
        report = store.purge(timedelta(days=90), batch_size=10)
        assert store.verify().ok
    assert (dry.rows_deleted, report.rows_deleted, report.batches) == (25, 25, 3)
    assert _ids(trail_db)[0] == 26


def test_a_batch_meeting_a_busy_database_is_retried(db_path: Path) -> None:
    _write(db_path, [utcnow() - timedelta(days=200)] * 5)
    holder = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    released = threading.Event()

    def wait(seconds: float) -> bool:
        # The purge's backoff: release the other writer's lock on its first retry.
        if not released.is_set():
            holder.execute("ROLLBACK")
            released.set()
        return False

    try:
        with AuditStore(db_path, busy_timeout=0.01) as store:
            from audit_engine.storage.retention import cutoff_for, purge

            report = purge(store._conn, cutoff_for(timedelta(days=90)), 10, wait=wait)
    finally:
        holder.close()
    assert released.is_set()
    assert report.rows_deleted == 5


def test_a_busy_database_that_stays_busy_fails_the_purge_when_told_to_stop(db_path: Path) -> None:
    _write(db_path, [utcnow() - timedelta(days=200)] * 5)
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with AuditStore(db_path, busy_timeout=0.01) as store:
            from audit_engine.storage.retention import cutoff_for, purge

            with pytest.raises(sqlite3.OperationalError, match="locked"):
                purge(store._conn, cutoff_for(timedelta(days=90)), 10, wait=lambda _: True)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert len(_ids(db_path)) == 5


def test_an_age_reaching_before_year_1_is_refused() -> None:
    from audit_engine.storage.retention import cutoff_for

    with pytest.raises(AuditStoreError, match="older_than reaches before year 1"):
        cutoff_for(timedelta(days=999_999))
