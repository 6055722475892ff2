"""The Merkle tree's leaves as the trail stores them, on both backends: the stored hash of an
unkeyed row, the content digest of a keyed one, and no tree over a trail with a hole in it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trails

from audit_engine import AuditEntry, AuditService, AuditStore
from audit_engine.errors import AuditStoreError
from audit_engine.storage import backends, keys, leaves, merkle
from audit_engine.storage.chain import content_digest

_OLD = datetime(2000, 1, 1, tzinfo=UTC)


def _entries(start: int, count: int, *, old: bool = False) -> list[AuditEntry]:
    # Old entries are written old: no UPDATE behind the engine's back (the guard refuses it).
    when = {"timestamp": _OLD} if old else {}
    return [AuditEntry(action="a", event_id=f"e{n}", **when) for n in range(start, start + count)]


def _leaves(database: Path | str, after: int, upto: int | None = None) -> list[tuple[int, bytes]]:
    conn = backends.open_trail(database)
    try:
        return list(leaves.leaves(conn, after, upto))
    finally:
        conn.close()


def test_an_unkeyed_rows_leaf_is_its_stored_hash(trail_db: Path | str) -> None:
    trails.write(trail_db, _entries(0, 5))
    hashes = trails.query(trail_db, "SELECT id, hash FROM audit_entries ORDER BY id")

    assert _leaves(trail_db, 0) == [(i, bytes.fromhex(h)) for i, h in hashes]
    assert _leaves(trail_db, 1, 3) == [(i, bytes.fromhex(h)) for i, h in hashes[1:3]]
    assert _leaves(trail_db, 5) == []


def test_a_keyed_rows_leaf_is_its_content_digest_under_its_version(
    trail_db: Path | str, tmp_path: Path
) -> None:
    # Rows 4.. are keyed: their hash is an HMAC, their leaf the digest of the row, keyless.
    trails.write(trail_db, _entries(0, 3))
    chain_key, _, _ = keys.generate_keys(tmp_path / "keys")
    with AuditService(database=trail_db, chain_key_file=chain_key, cleanup_enabled=False) as svc:
        for entry in _entries(3, 3):
            svc.record(entry)
    rows = trails.query(trail_db, f"SELECT {trails.stored_row(trail_db)} FROM audit_entries")
    expected = [
        (row[0], bytes.fromhex(row[-1]) if row[0] < 4 else content_digest(row[:-1], "2"))
        for row in sorted(rows)
    ]
    assert expected[4][1] != bytes.fromhex(sorted(rows)[4][-1])

    assert _leaves(trail_db, 0) == expected
    assert _leaves(trail_db, 4, 5) == expected[4:5]
    assert _leaves(trail_db, 1, 4) == expected[1:4]


def test_a_hole_in_the_ids_refuses_the_tree(trail_db: Path | str) -> None:
    trails.write(trail_db, _entries(0, 5))
    trails.execute(trail_db, "DELETE FROM audit_entries WHERE id = 3")

    with pytest.raises(AuditStoreError, match=r"row 3 is missing \(the next row is 4\)"):
        _leaves(trail_db, 0)
    with pytest.raises(AuditStoreError, match=r"row 6 is missing \(the trail ends\)"):
        _leaves(trail_db, 3, 6)


def test_an_unknown_chain_version_is_named(trail_db: Path | str) -> None:
    trails.write(trail_db, _entries(0, 3))
    trails.execute(trail_db, "INSERT INTO audit_chain_versions (first_id, version) VALUES (3, '9')")
    with pytest.raises(AuditStoreError, match="from id 3 on are hashed with chain version '9'"):
        _leaves(trail_db, 0)


def test_the_trail_id_is_random_hex(trail_db: Path | str) -> None:
    trails.create(trail_db)
    conn = backends.open_trail(trail_db)
    try:
        trail_id = leaves.trail_id(conn)
    finally:
        conn.close()
    assert len(trail_id) == 32
    int(trail_id, 16)


def _anchor_frontiers(database: Path | str) -> list[merkle.Frontier]:
    rows = trails.query(database, "SELECT merkle FROM audit_anchors ORDER BY id")
    return [merkle.Frontier.from_text(text) for (text,) in rows]


def test_a_purge_stores_the_tree_of_what_it_deleted(trail_db: Path | str) -> None:
    trails.write(trail_db, _entries(0, 9, old=True))
    trails.write(trail_db, _entries(9, 3))
    before = [data for _, data in _leaves(trail_db, 0)]
    conn = backends.open_trail(trail_db)
    try:
        assert leaves.anchor_frontier(conn) == merkle.Frontier()
        with AuditStore(trail_db) as store:
            store.purge(timedelta(days=1), batch_size=4)  # batches of 4, 4, 1: the anchor grows
        assert leaves.anchor_frontier(conn).head_id == 9
        assert leaves.anchor_frontier(conn).root() == merkle.root(before[:9])
        # What is left extends it to the root the whole trail had before the purge.
        rest = [data for _, data in leaves.leaves(conn, 9)]
        assert merkle.root_after(leaves.anchor_frontier(conn), rest) == merkle.root(before)
        assert leaves.frontier_through(conn, 12).root() == merkle.root(before)
    finally:
        conn.close()
    [stored] = _anchor_frontiers(trail_db)
    assert (stored.base, stored.size) == (0, 9)


def test_a_second_purge_grows_the_tree_from_the_anchor_before_it(trail_db: Path | str) -> None:
    trails.write(trail_db, _entries(0, 3, old=True))
    later = [e.model_copy(update={"timestamp": _OLD.replace(year=2001)}) for e in _entries(3, 3)]
    trails.write(trail_db, later)
    trails.write(trail_db, _entries(6, 2))
    before = [data for _, data in _leaves(trail_db, 0)]
    with AuditStore(trail_db) as store:
        store.purge(_OLD.replace(month=6))
        store.purge(timedelta(days=1))
    first, second = _anchor_frontiers(trail_db)
    assert first.root() == merkle.root(before[:3])
    assert second.root() == merkle.root(before[:6])


def test_the_tree_starts_after_an_anchor_of_an_earlier_release(trail_db: Path | str) -> None:
    # An anchor without a frontier (written before schema 4): the tree starts after it.
    trails.write(trail_db, _entries(0, 4, old=True))
    trails.write(trail_db, _entries(4, 2))
    with AuditStore(trail_db) as store:
        store.purge(timedelta(days=1), batch_size=2)
    trails.execute(trail_db, "UPDATE audit_anchors SET merkle = NULL")
    after = [data for _, data in _leaves(trail_db, 4)]
    conn = backends.open_trail(trail_db)
    try:
        assert leaves.anchor_frontier(conn) == merkle.Frontier(base=4)
        assert leaves.frontier_through(conn, 6).root() == merkle.root(after)
    finally:
        conn.close()


def test_an_anchor_frontier_that_does_not_end_at_the_anchor_is_refused(
    trail_db: Path | str,
) -> None:
    trails.write(trail_db, _entries(0, 2, old=True))
    trails.write(trail_db, _entries(2, 2))
    with AuditStore(trail_db) as store:
        store.purge(timedelta(days=1))
    empty = merkle.Frontier().to_text()
    trails.execute(trail_db, ("UPDATE audit_anchors SET merkle = ?", (empty,)))
    conn = backends.open_trail(trail_db)
    try:
        ends = "frontier ends at id 0, not at its last deleted id 2"
        with pytest.raises(AuditStoreError, match=ends):
            leaves.anchor_frontier(conn)
        trails.execute(trail_db, "UPDATE audit_anchors SET merkle = 'x'")
        with pytest.raises(AuditStoreError, match="anchor 1's Merkle frontier is unreadable"):
            leaves.anchor_frontier(conn)
    finally:
        conn.close()
