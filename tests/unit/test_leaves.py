"""The Merkle tree's leaves as the trail stores them, on both backends: the stored hash of an
unkeyed row, the content digest of a keyed one, and no tree over a trail with a hole in it."""

from __future__ import annotations

from pathlib import Path

import pytest
import trails

from audit_engine import AuditEntry
from audit_engine.errors import AuditStoreError
from audit_engine.storage import backends, leaves, merkle
from audit_engine.storage.chain import content_digest


def _entries(start: int, count: int) -> list[AuditEntry]:
    return [AuditEntry(action="a", event_id=f"e{n}") for n in range(start, start + count)]


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


def test_a_keyed_rows_leaf_is_its_content_digest_under_its_version(trail_db: Path | str) -> None:
    # Rows 4.. are declared keyed: their leaf is digested again from the row, whatever its hash.
    trails.write(trail_db, _entries(0, 3))
    trails.execute(trail_db, "INSERT INTO audit_chain_versions (first_id, version) VALUES (4, '2')")
    trails.write(trail_db, _entries(3, 3))
    rows = trails.query(trail_db, f"SELECT {trails.stored_row(trail_db)} FROM audit_entries")
    expected = [
        (row[0], bytes.fromhex(row[-1]) if row[0] < 4 else content_digest(row[:-1], "2"))
        for row in sorted(rows)
    ]

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
    trails.write(trail_db, _entries(0, 2))
    trails.execute(trail_db, "INSERT INTO audit_chain_versions (first_id, version) VALUES (3, '9')")
    trails.write(trail_db, _entries(2, 1))
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


def test_a_purge_keeps_the_tree_of_what_it_deleted(trail_db: Path | str) -> None:
    trails.write(trail_db, _entries(0, 12))
    before = [data for _, data in _leaves(trail_db, 0)]
    conn = backends.open_trail(trail_db)
    try:
        assert leaves.anchor_frontier(conn) == merkle.Frontier()
        assert leaves.frontier_through(conn, 12).root() == merkle.root(before)
    finally:
        conn.close()
