"""copy_trail: a trail into another, across backends, against a real PostgreSQL server.

Sources are written through the engine's own chained insert; the PostgreSQL side is a fresh
database of the test (``pg_url``, and one more from ``pg_cluster`` for PostgreSQL to PostgreSQL).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trails
from pgcluster import PgCluster

from audit_engine import AuditEntry, AuditStore, AuditStoreError, CopyReport, copy_trail
from audit_engine.rows import entry_row
from audit_engine.storage import backends, dialect

Database = Path | str

T0 = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


def _entries(count: int, prefix: str = "doc") -> list[AuditEntry]:
    """Entries that use every field: missing ones, nested and non-ASCII details, both flags."""
    return [
        AuditEntry(
            action=f"{prefix}.save",
            actor=None if i % 5 == 0 else f"user-{i % 3}",
            operation=("create", "update", "delete", "read")[i % 4],
            outcome="failure" if i % 7 == 0 else "success",
            resource_type="doc" if i % 2 else None,
            resource_id=f"{prefix}-{i}" if i % 2 else None,
            correlation_id=f"req-{i // 3}",
            timestamp=T0 + timedelta(seconds=i, microseconds=i),
            details={"n": i, "title": "Grüße ✓", "tags": ["a", {"deep": [1.5, None]}]}
            if i % 3
            else {},
            critical=i % 4 == 0,
        )
        for i in range(count)
    ]


def _write(database: Database, entries: Sequence[AuditEntry]) -> None:
    """Append ``entries`` to the trail's chain (created if need be), as the engine does."""
    conn = backends.open_trail(database, create=True)
    try:
        if entries:
            dialect.write_rows(conn, [entry_row(entry) for entry in entries])
    finally:
        conn.close()


def _stored(database: Database) -> list[AuditEntry]:
    with AuditStore(database) as store:
        return list(store.query())


def _tamper(database: Database, row_id: int) -> None:
    """Change one stored field behind the engine's back."""
    trails.execute(
        database, ("UPDATE audit_entries SET action = 'doc.forged' WHERE id = ?", (row_id,))
    )


def _verified(database: Database) -> int:
    with AuditStore(database) as store:
        report = store.verify()
    assert report.ok, report
    return report.rows_checked


def _absent(database: Database) -> bool:
    """Whether ``database`` holds no trail (no file, or no engine tables)."""
    if isinstance(database, Path):
        return not database.exists()
    with pytest.raises(AuditStoreError, match="no audit trail at"):
        AuditStore(database)
    return True


@pytest.fixture
def second_pg(pg_cluster: PgCluster) -> Iterator[str]:
    url = pg_cluster.create_database()
    yield url
    pg_cluster.drop_database(url.rsplit("/", 1)[1])


def _trail(request: pytest.FixtureRequest, kind: str, name: str, tmp_path: Path) -> Database:
    if kind == "sqlite":
        return tmp_path / f"{name}.db"
    url: str = request.getfixturevalue("pg_url" if name == "source" else "second_pg")
    return url


@pytest.fixture(params=[("sqlite", "pg"), ("pg", "sqlite")], ids=["sqlite-to-pg", "pg-to-sqlite"])
def ends(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Database, Database]:
    """(source, destination) across the two backends, each way."""
    source_kind, dest_kind = request.param
    return (
        _trail(request, source_kind, "source", tmp_path),
        _trail(request, dest_kind, "dest", tmp_path),
    )


@pytest.fixture(
    params=[("sqlite", "pg"), ("pg", "sqlite"), ("sqlite", "sqlite"), ("pg", "pg")],
    ids=["sqlite-to-pg", "pg-to-sqlite", "sqlite-to-sqlite", "pg-to-pg"],
)
def any_ends(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Database, Database]:
    """(source, destination) in every direction, within a backend too."""
    source_kind, dest_kind = request.param
    return (
        _trail(request, source_kind, "source", tmp_path),
        _trail(request, dest_kind, "dest", tmp_path),
    )


# -- what a copy holds ------------------------------------------------------------------------


def test_the_destination_holds_every_entry_as_it_was_and_verifies(
    any_ends: tuple[Database, Database],
) -> None:
    source, dest = any_ends
    entries = _entries(25)
    _write(source, entries)
    with AuditStore(source) as store:
        source_head = store.head()
    batches: list[int] = []

    report = copy_trail(source, dest, batch_size=10, on_batch=batches.append)

    assert _stored(dest) == entries  # event_id, timestamp, details, every field, in order
    assert _verified(dest) == 25
    with AuditStore(dest) as store:
        dest_head = store.head()
    assert report == CopyReport(
        source=str(source),
        destination=str(dest),
        source_rows=25,
        copied=25,
        already_present=0,
        batches=3,
        source_head=source_head,
        dest_head=dest_head,
        dest_rows_verified=25,
        duration_s=report.duration_s,
    )
    assert batches == [10, 10, 5]


def test_an_empty_destination_gets_the_same_chain_as_a_source_never_purged(
    ends: tuple[Database, Database],
) -> None:
    # Same ids, same content, same genesis: the destination's own hashes come out the same.
    source, dest = ends
    _write(source, _entries(6))

    report = copy_trail(source, dest)

    assert report.source_head is not None
    assert report.dest_head == report.source_head


def test_running_the_copy_twice_copies_nothing_twice(ends: tuple[Database, Database]) -> None:
    source, dest = ends
    entries = _entries(12)
    _write(source, entries)
    first = copy_trail(source, dest, batch_size=5)

    second = copy_trail(source, dest, batch_size=5)

    assert (second.copied, second.already_present, second.batches) == (0, 12, 3)
    assert second.dest_head == first.dest_head
    assert _stored(dest) == entries


def test_a_later_copy_takes_only_what_the_source_gained_since(
    ends: tuple[Database, Database],
) -> None:
    source, dest = ends
    older, newer = _entries(8), _entries(5, prefix="sheet")
    _write(source, older)
    copy_trail(source, dest)
    _write(source, newer)

    report = copy_trail(source, dest, batch_size=4)

    assert (report.copied, report.already_present) == (5, 8)
    assert _stored(dest) == older + newer
    assert _verified(dest) == 13


def test_copied_entries_are_appended_to_the_destinations_own_chain(
    ends: tuple[Database, Database],
) -> None:
    source, dest = ends
    own, shipped = _entries(3, prefix="local"), _entries(7)
    _write(dest, own)
    _write(source, shipped)

    report = copy_trail(source, dest, batch_size=4)

    assert _stored(dest) == own + shipped
    with AuditStore(dest) as store:
        ids = [ident for ident, _ in store.entries_after(0, limit=100)]
    assert ids == list(range(1, 11))  # the destination's ids: after its own three
    assert report.copied == 7
    assert report.dest_head is not None
    assert report.source_head is not None
    assert (report.dest_head.id, report.source_head.id) == (10, 7)
    assert report.dest_head.hash != report.source_head.hash  # re-chained onto other rows
    assert _verified(dest) == 10


def test_a_large_trail_is_copied_in_batches(tmp_path: Path, pg_url: str) -> None:
    # One direction: the batching is the same both ways, and smaller copies cover each way.
    source, dest = tmp_path / "source.db", pg_url
    entries = _entries(12_000)
    _write(source, entries)
    batches: list[int] = []

    report = copy_trail(source, dest, batch_size=5000, on_batch=batches.append)

    assert batches == [5000, 5000, 2000]
    assert (report.copied, report.batches, report.dest_rows_verified) == (12_000, 3, 12_000)
    assert _stored(dest) == entries


def test_entries_recorded_during_the_copy_wait_for_the_next_one(tmp_path: Path) -> None:
    # The copy goes up to the head it verified: later entries are not half-copied. Batches of
    # four over six entries: the second batch would read the one recorded after the first.
    source, dest = tmp_path / "source.db", tmp_path / "dest.db"
    entries, later = _entries(6), _entries(2, prefix="late")
    _write(source, entries)
    pending = iter(later)

    report = copy_trail(
        source, dest, batch_size=4, on_batch=lambda _: _write(source, [next(pending)])
    )

    assert (report.source_rows, report.batches) == (6, 2)
    assert _stored(dest) == entries
    assert copy_trail(source, dest).copied == 2  # the two recorded meanwhile


def test_an_empty_source_gives_an_empty_verified_destination(
    ends: tuple[Database, Database],
) -> None:
    source, dest = ends
    _write(source, [])

    report = copy_trail(source, dest)

    assert (report.source_rows, report.copied, report.batches) == (0, 0, 0)
    assert report.source_head is None
    assert report.dest_head is None
    assert _stored(dest) == []


def test_a_source_whose_rows_were_all_purged_copies_nothing_and_succeeds(
    ends: tuple[Database, Database],
) -> None:
    source, dest = ends
    old = [
        AuditEntry(action="doc.save", timestamp=datetime(2020, 1, 1, tzinfo=UTC)) for _ in range(3)
    ]
    _write(source, old)
    with AuditStore(source) as store:
        store.purge(timedelta(days=30))
        head = store.head()
        assert store.count() == 0
        assert head is not None  # the anchor: the chain's head after a full purge

    report = copy_trail(source, dest, min_retention=timedelta(0))

    assert (report.source_rows, report.copied) == (0, 0)
    assert report.source_head == head
    assert _stored(dest) == []


# -- what a copy refuses ------------------------------------------------------------------------


def test_a_tampered_source_is_refused_and_nothing_is_copied(
    ends: tuple[Database, Database],
) -> None:
    source, dest = ends
    _write(source, _entries(5))
    _tamper(source, 3)
    with AuditStore(source) as store:
        reason = store.verify().reason
    assert reason is not None

    with pytest.raises(AuditStoreError) as caught:
        copy_trail(source, dest)

    assert str(caught.value) == (
        f"the source {source} does not verify: chain broken at row 3: {reason}; nothing was copied"
    )
    assert _absent(dest)


def test_an_event_id_the_destination_uses_for_another_entry_is_reported(
    ends: tuple[Database, Database],
) -> None:
    source, dest = ends
    entries = _entries(6)
    impostor = entries[3].model_copy(update={"action": "doc.other"})
    _write(dest, [impostor])
    _write(source, entries)

    with pytest.raises(AuditStoreError) as caught:
        copy_trail(source, dest, batch_size=3)

    assert str(caught.value) == (
        f"event_id {entries[3].event_id} is already used by a different entry in {dest} "
        "(row 1); 3 entries were copied before it, none of its batch"
    )
    assert _stored(dest) == [impostor, *entries[:3]]
    assert _verified(dest) == 4


def test_a_destination_that_does_not_verify_is_reported(tmp_path: Path) -> None:
    source, dest = tmp_path / "source.db", tmp_path / "dest.db"
    _write(dest, _entries(2, prefix="local"))
    _tamper(dest, 1)
    _write(source, _entries(3))

    with pytest.raises(
        AuditStoreError,
        match=re.escape(f"the destination {dest} does not verify after the copy: ")
        + r"chain broken at row 1: .* \(3 entries were copied into it\)$",
    ):
        copy_trail(source, dest)


def test_a_missing_source_creates_no_destination(tmp_path: Path) -> None:
    source, dest = tmp_path / "missing.db", tmp_path / "dest.db"

    with pytest.raises(AuditStoreError, match=f"^no audit database at {re.escape(str(source))}$"):
        copy_trail(source, dest)

    assert not dest.exists()


def test_a_trail_is_not_copied_into_itself(tmp_path: Path) -> None:
    source = tmp_path / "audit.db"
    _write(source, _entries(2))

    with pytest.raises(
        AuditStoreError, match=f"^{re.escape(str(source))} is both the source and the destination"
    ):
        copy_trail(source, tmp_path / "." / "audit.db")


@pytest.mark.parametrize(
    ("batch_size", "error", "message"),
    [
        (0, ValueError, "batch_size must be 1 or more (got 0)"),
        (True, TypeError, "batch_size must be an int (got bool)"),
        ("10", TypeError, "batch_size must be an int (got str)"),
    ],
)
def test_a_bad_batch_size_is_refused_before_anything_is_opened(
    tmp_path: Path, batch_size: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        copy_trail(tmp_path / "missing.db", tmp_path / "dest.db", batch_size=batch_size)  # type: ignore[arg-type]
