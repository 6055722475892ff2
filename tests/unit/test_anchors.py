"""Forged purge anchors and cleanup runs (issue 11 item 9): the maintenance chains, the anchor
checks against a minimum retention, the expected head that must still be a row, and the
version-2 to version-3 migration.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils
from support import rows_of
from tamper import tamper

from audit_engine import AuditEntry, AuditStore, AuditStoreError
from audit_engine.models import utcnow
from audit_engine.storage import anchors
from audit_engine.storage import sqlite as store
from audit_engine.storage.chain import GENESIS_HASH, ChainHead, VerifyReport, link
from audit_engine.storage.sqlite import schema

ROWS = 50
DAY = timedelta(days=1)
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _query(db_path: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        return conn.execute(sql, params).fetchall()


def _tamper(db_path: Path, *statements: tuple[str, Sequence[Any]]) -> None:
    """Change the file behind the engine's back, as an attacker with write access would (the
    append-only guard lifted first, as they can)."""
    tamper(db_path, *statements)


def _write(db_path: Path, timestamps: Sequence[datetime]) -> None:
    entries = [
        AuditEntry(event_id=f"evt-{n:03d}", timestamp=ts, action="thing.do", actor="alice")
        for n, ts in enumerate(timestamps, start=1)
    ]
    conn = store.open_connection(db_path)
    try:
        store.write_batch(conn, rows_of(entries))
    finally:
        conn.close()


def _fresh(db_path: Path) -> ChainHead:
    """ROWS entries written just now; returns the head an operator would have published."""
    _write(db_path, [utcnow() - timedelta(hours=1)] * ROWS)
    with AuditStore(db_path) as audit:
        head = audit.head()
    assert head is not None
    assert head.id == ROWS
    return head


def _hash_of(db_path: Path, row_id: int) -> str:
    return str(_query(db_path, "SELECT hash FROM audit_entries WHERE id = ?", (row_id,))[0][0])


def _verify(db_path: Path, **kwargs: Any) -> VerifyReport:
    with AuditStore(db_path) as audit:
        return audit.verify(**kwargs)


def _naive_anchor(db_path: Path, last_id: int, last_hash: str) -> None:
    """Delete rows 1..last_id and insert an anchor the way a version-2 purge wrote one."""
    now = utcnow()
    _tamper(
        db_path,
        ("DELETE FROM audit_entries WHERE id <= ?", (last_id,)),
        (
            "INSERT INTO audit_anchors (last_deleted_id, last_deleted_hash, rows_deleted, "
            "cutoff, created_at) VALUES (?, ?, ?, ?, ?)",
            (last_id, last_hash, last_id, store.format_timestamp(now), now.isoformat()),
        ),
    )


def _forged_anchor(
    db_path: Path, last_id: int, *, newest: datetime, cutoff: datetime, created: datetime
) -> None:
    """Delete rows 1..last_id and insert an anchor with every hash recomputed: the best forgery
    someone without a key can make.
    """
    last_hash = _hash_of(db_path, last_id)
    values = (
        1,
        last_id,
        last_hash,
        last_id,
        store.format_timestamp(newest),
        store.format_timestamp(cutoff),
        None,
        created.isoformat(),
        GENESIS_HASH,
    )
    digest = anchors.anchor_hash(values)
    _tamper(
        db_path,
        ("DELETE FROM audit_entries WHERE id <= ?", (last_id,)),
        (
            "INSERT INTO audit_anchors (id, last_deleted_id, last_deleted_hash, rows_deleted, "
            "newest_purged, cutoff, older_than_us, created_at, prev_hash, hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*values, digest),
        ),
    )


NOT_CHAINED = "anchor 1 is not part of the anchor chain (it has no hash: a purge did not write it)"


# -- the two attacks of the issue ---------------------------------------------------------------


def test_all_rows_deleted_and_an_anchor_equal_to_the_head_is_detected(db_path: Path) -> None:
    head = _fresh(db_path)
    _naive_anchor(db_path, ROWS, head.hash)

    plain = _verify(db_path)
    against_head = _verify(db_path, expected_head=head)

    assert (plain.ok, plain.first_bad_id, plain.reason) == (False, None, NOT_CHAINED)
    assert against_head.ok is False
    assert against_head.reason == NOT_CHAINED


def test_forty_of_fifty_fresh_rows_deleted_under_a_matching_anchor_is_detected(
    db_path: Path,
) -> None:
    head = _fresh(db_path)
    _naive_anchor(db_path, 40, _hash_of(db_path, 40))

    plain = _verify(db_path)
    against_head = _verify(db_path, expected_head=head)

    assert (plain.ok, plain.reason) == (False, NOT_CHAINED)
    assert (against_head.ok, against_head.reason) == (False, NOT_CHAINED)


def test_a_rehashed_anchor_equal_to_the_head_fails_against_the_published_head(
    db_path: Path,
) -> None:
    head = _fresh(db_path)
    now = utcnow()
    _forged_anchor(db_path, ROWS, newest=now - 100 * DAY, cutoff=now - 91 * DAY, created=now)

    report = _verify(db_path, expected_head=head)

    assert report.ok is False
    assert report.first_bad_id == ROWS
    assert report.reason == (
        f"row {ROWS}, the expected head, is gone (an anchor claims it was purged): "
        "a published head must still be in the table; publish heads more often than the "
        "retention period"
    )


def test_a_rehashed_anchor_over_fresh_rows_fails_the_minimum_retention(db_path: Path) -> None:
    _fresh(db_path)
    newest = datetime.fromisoformat(
        _query(db_path, "SELECT timestamp FROM audit_entries WHERE id = 40")[0][0]
    )
    created = utcnow()
    _forged_anchor(
        db_path, 40, newest=newest, cutoff=newest + timedelta(seconds=1), created=created
    )

    report = _verify(db_path, min_retention=90 * DAY)

    assert report.ok is False
    assert report.first_bad_id is None
    assert report.reason == (
        f"anchor 1 purged rows younger than the minimum retention of 90 days: its cutoff "
        f"{store.format_timestamp(newest + timedelta(seconds=1))} is less than 90 days before "
        f"the purge at {created.isoformat()} (if that purge was intended, "
        "verify with a shorter minimum retention)"
    )
    # Without a minimum retention the anchor is consistent: a keyless chain cannot tell.
    assert _verify(db_path, min_retention=timedelta(0)).ok is True


# -- the API's default minimum retention (review D7) ---------------------------------------------


def _forty_fresh_rows_under_a_truthful_anchor(db_path: Path) -> tuple[ChainHead, datetime]:
    """The issue's attack: 40 of 50 fresh rows deleted, an anchor with the right numbers and
    times (every hash recomputed) put in their place. Returns the published head and the cutoff."""
    head = _fresh(db_path)
    newest = datetime.fromisoformat(
        _query(db_path, "SELECT timestamp FROM audit_entries WHERE id = 40")[0][0]
    )
    cutoff = newest + timedelta(seconds=1)
    _forged_anchor(db_path, 40, newest=newest, cutoff=cutoff, created=utcnow())
    return head, cutoff


def test_verify_checks_the_retention_setting_by_default(db_path: Path) -> None:
    """The README's sample, store.verify(expected_head=head), passed this forgery."""
    head, _ = _forty_fresh_rows_under_a_truthful_anchor(db_path)

    plain = _verify(db_path)
    against_head = _verify(db_path, expected_head=head)

    for report in (plain, against_head):
        assert (report.ok, report.first_bad_id, report.rows_checked) == (False, None, 0)
        assert report.reason is not None
        assert report.reason.startswith(
            "anchor 1 purged rows younger than the minimum retention of 90 days: its cutoff "
        )


def test_the_default_minimum_retention_is_read_from_the_environment(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(db_path, [utcnow() - 3 * DAY] * 2 + [utcnow()])
    with AuditStore(db_path) as audit:
        audit.purge(2 * DAY)  # a deliberate short purge

    assert _verify(db_path).reason is not None  # the default setting: 90 days
    monkeypatch.setenv("AUDIT_TRAIL_RETENTION_DAYS", "2")
    assert _verify(db_path).ok is True
    monkeypatch.setenv("AUDIT_TRAIL_RETENTION_DAYS", "7")
    assert str(_verify(db_path).reason).startswith(
        "anchor 1 purged rows younger than the minimum retention of 7 days"
    )


def test_a_zero_minimum_retention_turns_the_check_off(db_path: Path) -> None:
    head, _ = _forty_fresh_rows_under_a_truthful_anchor(db_path)

    report = _verify(db_path, min_retention=timedelta(0))

    assert (report.ok, report.rows_checked, report.anchors_checked) == (True, 10, 1)
    # The published head's row survived: only a head among the deleted rows would show it.
    assert _verify(db_path, expected_head=head, min_retention=timedelta(0)).ok is True


# -- the documented limits (docs/integrity.md, "What verify() does not detect") -------------------


def test_an_anchor_that_lies_about_its_times_passes_unless_the_published_head_was_deleted(
    db_path: Path,
) -> None:
    head = _fresh(db_path)
    now = utcnow()
    _forged_anchor(db_path, 40, newest=now - 100 * DAY, cutoff=now - 91 * DAY, created=now)

    assert _verify(db_path).ok is True
    assert _verify(db_path, expected_head=head).ok is True  # row 50 survived


def test_deleting_every_cleanup_run_is_not_detected(db_path: Path) -> None:
    _purged(db_path)
    _tamper(db_path, ("DELETE FROM audit_cleanup_runs", ()))

    report = _verify(db_path)

    assert (report.ok, report.anchors_checked, report.cleanup_runs_checked) == (True, 1, 0)


# -- the anchor checks, one by one ----------------------------------------------------------------


def _purged(db_path: Path) -> None:
    """Five old rows purged by the engine, three kept."""
    _write(db_path, [T0] * 5 + [utcnow()] * 3)
    with AuditStore(db_path) as audit:
        audit.purge(90 * DAY)


def _anchor_values(db_path: Path) -> list[Any]:
    return list(
        _query(
            db_path,
            "SELECT id, last_deleted_id, last_deleted_hash, rows_deleted, newest_purged, cutoff, "
            "older_than_us, created_at, prev_hash FROM audit_anchors ORDER BY id",
        )[-1]
    )


def _rewrite_anchor(db_path: Path, **changes: Any) -> None:
    """Change anchor fields and recompute its hash (a careful forger)."""
    names = ["id", *anchors.ANCHOR_COLUMNS, "prev_hash"]
    values = _anchor_values(db_path)
    for name, value in changes.items():
        values[names.index(name)] = value
    sets = ", ".join(f"{name} = ?" for name in names[1:])
    _tamper(
        db_path,
        (
            f"UPDATE audit_anchors SET {sets}, hash = ? WHERE id = ?",
            (*values[1:], anchors.anchor_hash(values), values[0]),
        ),
    )


def test_an_engine_purge_verifies_under_its_own_retention(db_path: Path) -> None:
    _purged(db_path)

    report = _verify(db_path, min_retention=90 * DAY)

    assert (report.ok, report.rows_checked, report.anchors_checked) == (True, 3, 1)
    assert report.cleanup_runs_checked == 1
    assert report.warnings == ()
    [anchor] = _query(
        db_path,
        "SELECT last_deleted_id, rows_deleted, newest_purged, older_than_us FROM audit_anchors",
    )
    assert anchor == (5, 5, store.format_timestamp(T0), 90 * 86400 * 10**6)


def test_a_manual_short_purge_fails_a_longer_minimum_retention(db_path: Path) -> None:
    _write(db_path, [utcnow() - 2 * DAY] * 2 + [utcnow()])
    with AuditStore(db_path) as audit:
        audit.purge(DAY)

    report = _verify(db_path, min_retention=90 * DAY)

    assert report.ok is False
    assert report.reason is not None
    assert report.reason.startswith(
        "anchor 1 purged rows younger than the minimum retention of 90 days"
    )
    assert _verify(db_path, min_retention=DAY).ok is True


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        (
            {"rows_deleted": 4},
            "anchor 1 claims 4 rows deleted but spans ids 1..5 (5 rows)",
        ),
        (
            {
                "newest_purged": "2024-05-02T00:00:00.000000Z",
                "cutoff": "2024-05-01T00:00:00.000000Z",
            },
            "anchor 1 claims rows up to 2024-05-02T00:00:00.000000Z were purged, not older than "
            "its cutoff 2024-05-01T00:00:00.000000Z",
        ),
        (
            {"created_at": "2999-01-01T00:00:00+00:00"},
            "anchor 1 is dated in the future (2999-01-01T00:00:00+00:00)",
        ),
        (
            {"cutoff": "2999-01-01T00:00:00.000000Z"},
            "anchor 1's cutoff 2999-01-01T00:00:00.000000Z is after the purge that wrote it",
        ),
        (
            {"created_at": "yesterday"},
            "anchor 1 holds an unreadable time ('yesterday')",
        ),
        (
            {"last_deleted_id": 0, "rows_deleted": 0},
            "anchor 1 does not move past the anchor before it (last id 0 after 0)",
        ),
    ],
)
def test_a_rehashed_anchor_with_impossible_values_is_refused(
    db_path: Path, changes: dict[str, Any], reason: str
) -> None:
    _purged(db_path)
    _rewrite_anchor(db_path, **changes)

    report = _verify(db_path)

    assert (report.ok, report.reason) == (False, reason)


def test_a_modified_anchor_is_detected(db_path: Path) -> None:
    _purged(db_path)
    _tamper(db_path, ("UPDATE audit_anchors SET cutoff = ?", ("2024-01-01T00:00:00.000000Z",)))

    assert _verify(db_path).reason == (
        "anchor 1 was modified (its hash does not match its contents)"
    )


def test_an_anchor_dated_before_the_one_before_it_is_refused(db_path: Path) -> None:
    _write(db_path, [T0] * 2 + [T0 + DAY] * 2 + [utcnow()])
    with AuditStore(db_path) as audit:
        audit.purge(T0 + timedelta(hours=1))
        audit.purge(T0 + 2 * DAY)
    _rewrite_anchor(db_path, created_at="2024-06-01T00:00:00+00:00")

    assert _verify(db_path).reason == (
        "anchor 2 is dated before the anchor before it (2024-06-01T00:00:00+00:00)"
    )


def test_a_deleted_middle_anchor_breaks_the_anchor_chain(db_path: Path) -> None:
    _write(db_path, [T0] * 2 + [T0 + DAY] * 2 + [utcnow()])
    with AuditStore(db_path) as audit:
        audit.purge(T0 + timedelta(hours=1))
        audit.purge(T0 + 2 * DAY)
    _tamper(db_path, ("DELETE FROM audit_anchors WHERE id = 1", ()))

    assert _verify(db_path).reason == (
        "anchor 2 does not link to the anchor before it (prev_hash mismatch)"
    )


def test_a_tampered_cleanup_run_is_detected(db_path: Path) -> None:
    _purged(db_path)
    _tamper(db_path, ("UPDATE audit_cleanup_runs SET rows_deleted = 0", ()))

    report = _verify(db_path)

    assert (report.ok, report.reason) == (
        False,
        "cleanup run 1 was modified (its hash does not match its contents)",
    )


def test_a_forged_cleanup_run_is_detected(db_path: Path) -> None:
    _purged(db_path)
    _tamper(
        db_path,
        (
            "INSERT INTO audit_cleanup_runs (started_at, finished_at, cutoff, rows_deleted, "
            "batches, duration_s) VALUES ('a', 'b', 'c', 0, 0, 0.0)",
            (),
        ),
    )

    assert _verify(db_path).reason == (
        "cleanup run 2 is not part of the cleanup-run chain (it has no hash: a purge did not "
        "write it)"
    )


def test_a_deleted_cleanup_run_breaks_the_run_chain(db_path: Path) -> None:
    _purged(db_path)
    with AuditStore(db_path) as audit:
        audit.purge(90 * DAY)  # a second run, deleting nothing
    _tamper(db_path, ("DELETE FROM audit_cleanup_runs WHERE id = 1", ()))

    assert _verify(db_path).reason == (
        "cleanup run 2 does not link to the run before it (prev_hash mismatch)"
    )


def test_a_second_purge_run_in_the_same_transaction_span_keeps_one_chain(db_path: Path) -> None:
    _write(db_path, [T0] * 25 + [utcnow()] * 2)
    with AuditStore(db_path) as audit:
        audit.purge(T0 + timedelta(hours=1), batch_size=10)
        report = audit.verify()

    assert (report.ok, report.anchors_checked, report.rows_checked) == (True, 1, 2)


# -- the expected head must still be a row ----------------------------------------------------


def test_a_head_purged_by_the_engine_can_no_longer_be_checked(db_path: Path) -> None:
    _write(db_path, [T0] * 3)
    with AuditStore(db_path) as audit:
        head = audit.head()
        audit.purge(90 * DAY)
        assert head is not None
        report = audit.verify(expected_head=head)

    assert (report.ok, report.first_bad_id) == (False, 3)
    assert report.reason is not None
    assert report.reason.startswith("row 3, the expected head, is gone")


# -- migrating a version-2 file -------------------------------------------------------------------


# The engine records its schema version in its own table, not in PRAGMA user_version.
_SCHEMA_VERSION_SQL = "SELECT value FROM audit_engine_meta WHERE key = 'schema_version'"


def _v2_database(db_path: Path) -> None:
    """A version-2 file with one legacy anchor (3 rows purged) and one legacy cleanup run."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    db = sqlite_utils.Database(conn)
    conn.execute("BEGIN")
    for step in schema._MIGRATIONS[:2]:
        step(db)
    conn.execute("PRAGMA user_version = 2")
    conn.execute("COMMIT")
    rows = link([store.entry_row(e) for e in _entries([T0] * 3 + [utcnow()] * 2)], 0, GENESIS_HASH)
    conn.executemany(f"INSERT INTO audit_entries VALUES ({', '.join('?' * 14)})", rows)
    conn.execute("DELETE FROM audit_entries WHERE id <= 3")
    created = utcnow().isoformat()
    conn.execute(
        "INSERT INTO audit_anchors (last_deleted_id, last_deleted_hash, rows_deleted, cutoff, "
        "created_at) VALUES (3, ?, 3, ?, ?)",
        (rows[2][-1], store.format_timestamp(T0 + DAY), created),
    )
    conn.execute(
        "INSERT INTO audit_cleanup_runs (started_at, finished_at, cutoff, rows_deleted, "
        "batches, duration_s) VALUES (?, ?, ?, 3, 1, 0.0123456789)",
        (created, created, store.format_timestamp(T0 + DAY)),
    )
    conn.close()


def _entries(timestamps: Sequence[datetime]) -> list[AuditEntry]:
    return [
        AuditEntry(event_id=f"v2-{n:03d}", timestamp=ts, action="thing.do")
        for n, ts in enumerate(timestamps, start=1)
    ]


def test_a_version_2_file_migrates_and_its_legacy_anchor_is_chained(db_path: Path) -> None:
    _v2_database(db_path)

    report = _verify(db_path, min_retention=DAY)

    assert _query(db_path, _SCHEMA_VERSION_SQL) == [(str(schema.SCHEMA_VERSION),)]
    assert (report.ok, report.rows_checked, report.anchors_checked) == (True, 2, 1)
    assert report.cleanup_runs_checked == 1
    assert report.warnings == (
        "anchor 1 was written before schema version 3: it does not record the newest purged "
        "timestamp, so only its cutoff and creation time are checked",
    )


def test_a_migrated_legacy_anchor_is_still_tamper_evident(db_path: Path) -> None:
    _v2_database(db_path)
    store.open_connection(db_path).close()  # migrate
    _tamper(db_path, ("UPDATE audit_anchors SET rows_deleted = 2", ()))

    assert _verify(db_path).reason == (
        "anchor 1 was modified (its hash does not match its contents)"
    )


def test_rows_written_after_the_migration_chain_from_the_legacy_anchor(db_path: Path) -> None:
    _v2_database(db_path)
    _write(db_path, [utcnow()])

    report = _verify(db_path)

    assert (report.ok, report.rows_checked) == (True, 3)


# -- edges ----------------------------------------------------------------------------------------


def test_a_naive_time_in_an_anchor_is_refused(db_path: Path) -> None:
    _purged(db_path)
    _rewrite_anchor(db_path, created_at="2024-06-01T00:00:00")

    assert _verify(db_path).reason == (
        "anchor 1 holds a time without a time zone ('2024-06-01T00:00:00')"
    )


def test_a_minimum_retention_shorter_than_a_day_is_spelled_out(db_path: Path) -> None:
    _write(db_path, [utcnow() - DAY, utcnow()])
    with AuditStore(db_path) as audit:
        audit.purge(timedelta(hours=1))

    report = _verify(db_path, min_retention=timedelta(hours=12))

    assert report.reason is not None
    assert report.reason.startswith(
        "anchor 1 purged rows younger than the minimum retention of 12:00:00: its cutoff "
    )
    assert _verify(db_path, min_retention=timedelta(hours=1)).ok is True


@pytest.mark.parametrize("bad", [timedelta(seconds=-1), 90])
def test_a_bad_minimum_retention_is_an_error(db_path: Path, bad: Any) -> None:
    _purged(db_path)

    with AuditStore(db_path) as audit, pytest.raises(AuditStoreError) as exc:
        audit.verify(min_retention=bad)

    assert str(exc.value) == f"min_retention must be a duration of zero or more (got {bad!r})"


def test_a_rehashed_cleanup_run_with_impossible_times_is_refused(db_path: Path) -> None:
    _purged(db_path)
    row = list(
        _query(
            db_path,
            f"SELECT id, {', '.join(anchors.RUN_COLUMNS)}, prev_hash FROM audit_cleanup_runs",
        )[0]
    )
    row[1], row[2] = "2024-06-02T00:00:00+00:00", "2024-06-01T00:00:00+00:00"
    _tamper(
        db_path,
        (
            "UPDATE audit_cleanup_runs SET started_at = ?, finished_at = ?, hash = ?",
            (row[1], row[2], anchors.run_hash(row)),
        ),
    )

    assert _verify(db_path).reason == (
        "cleanup run 1 has impossible times (2024-06-02T00:00:00+00:00 to "
        "2024-06-01T00:00:00+00:00)"
    )


def test_a_refused_cleanup_run_record_keeps_the_purge_and_raises(db_path: Path) -> None:
    _write(db_path, [T0] * 2 + [utcnow()])
    _tamper(
        db_path,
        (
            "CREATE TRIGGER no_run BEFORE INSERT ON audit_cleanup_runs "
            "BEGIN SELECT RAISE(ABORT, 'run refused'); END",
            (),
        ),
    )

    with AuditStore(db_path) as audit, pytest.raises(AuditStoreError) as exc:
        audit.purge(90 * DAY)

    assert str(exc.value) == f"cannot purge {db_path}: run refused"
    # The batches committed with their anchor: the trail still verifies.
    assert _query(db_path, "SELECT count(*) FROM audit_cleanup_runs") == [(0,)]
    assert _verify(db_path).ok is True
