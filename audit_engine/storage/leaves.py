"""The Merkle tree's leaves as the trail stores them, on either backend.

A row's leaf data is its content digest (:func:`audit_engine.storage.chain.content_digest`)
under the chain version it was hashed with: for the unkeyed version "1" that is the stored
``hash`` itself, so only that column is read; a keyed version's ``hash`` is an HMAC, so its
rows are read whole and digested again (no key needed).

The tree covers the rows after ``base``: the last id of the newest anchor written before
anchors kept a frontier (0 when there is none). An anchor that keeps one (``merkle``) holds the
tree over every row it and the anchors before it replaced, so the rows it deleted are never
needed again. Ids are contiguous: a gap means rows were deleted outside a purge, and the tree
is then refused rather than computed over what is left.
"""

from __future__ import annotations

from collections.abc import Iterator

from audit_engine.errors import AuditStoreError
from audit_engine.storage.anchors import ANCHORS
from audit_engine.storage.chain import CHAIN_VERSION, content_digest
from audit_engine.storage.dialect import AnyConnection, dialect_of, stream
from audit_engine.storage.merkle import Frontier, FrontierError
from audit_engine.storage.sqlite.schema import TABLE

__all__ = [
    "KEYED_VERSION",
    "META",
    "anchor_frontier",
    "chain_versions",
    "frontier_through",
    "leaves",
    "trail_id",
]

META = "audit_engine_meta"
#: The keyed chain version (docs/integrity.md): its leaf data is recomputed from the row.
KEYED_VERSION = "2"
_KNOWN = (CHAIN_VERSION, KEYED_VERSION)


def chain_versions(conn: AnyConnection) -> list[tuple[int, str]]:
    """The trail's ``(first_id, version)`` ranges, oldest first."""
    rows = conn.execute("SELECT first_id, version FROM audit_chain_versions ORDER BY first_id")
    return [(int(first), str(version)) for first, version in rows.fetchall()]


def trail_id(conn: AnyConnection) -> str:
    """The trail's random identity (the origin its checkpoints name)."""
    row = conn.execute(f"SELECT value FROM {META} WHERE key = 'trail_id'").fetchone()
    if row is None:
        # Every open migrates, and the migration gives a trail its id: a missing row was
        # removed (the guard refuses that since schema version 5), so no command brings it back.
        raise AuditStoreError(
            f"this trail has no trail_id: the trail's identity row ({META}, key 'trail_id') "
            "was removed, which is tampering or damage; the checkpoints signed for this trail "
            "name that identity and cannot be matched to it without it (restore the database "
            "from a backup)"
        )
    return str(row[0])


def anchor_frontier(conn: AnyConnection) -> Frontier:
    """The tree over every purged row: the newest anchor's frontier, else the empty tree at
    its last id (an anchor written before anchors kept one), else the empty tree at 0."""
    row = conn.execute(
        f"SELECT id, last_deleted_id, merkle FROM {ANCHORS} ORDER BY id DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return Frontier()
    anchor_id, last_id, text = row
    if text is None:
        return Frontier(base=int(last_id))
    try:
        frontier = Frontier.from_text(text)
    except FrontierError as exc:
        raise AuditStoreError(
            f"anchor {anchor_id}'s Merkle frontier is unreadable: {exc}"
        ) from None
    if frontier.head_id != last_id:
        raise AuditStoreError(
            f"anchor {anchor_id}'s Merkle frontier ends at id {frontier.head_id}, "
            f"not at its last deleted id {last_id}"
        )
    return frontier


def leaves(conn: AnyConnection, after: int, upto: int | None = None) -> Iterator[tuple[int, bytes]]:
    """``(id, leaf data)`` of the rows ``after < id <= upto`` (``upto`` None: to the end), in
    id order, streamed; in the caller's transaction, if any.

    Raises :class:`AuditStoreError` when an id in the range is missing or a row is hashed with
    a chain version this release does not know.
    """
    versions = chain_versions(conn) or [(1, CHAIN_VERSION)]
    expected = after + 1
    for index, (first_id, version) in enumerate(versions):
        end = versions[index + 1][0] - 1 if index + 1 < len(versions) else None
        if end is not None and end < expected:
            continue
        if upto is not None and first_id > upto:
            break
        if version not in _KNOWN:
            raise AuditStoreError(
                f"rows from id {first_id} on are hashed with chain version {version!r}, which "
                "this release cannot read: use the release that wrote them"
            )
        low = max(expected, first_id)
        high = end if upto is None else (upto if end is None else min(end, upto))
        for row_id, data in _range(conn, version, low, high):
            if row_id != expected:
                raise _gap(expected, row_id)
            expected += 1
            yield row_id, data
    if upto is not None and expected <= upto:
        raise _gap(expected, None)


def _range(
    conn: AnyConnection, version: str, low: int, high: int | None
) -> Iterator[tuple[int, bytes]]:
    where = "id >= ?" if high is None else "id >= ? AND id <= ?"
    params = (low,) if high is None else (low, high)
    if version == CHAIN_VERSION:
        rows = stream(conn, f"SELECT id, hash FROM {TABLE} WHERE {where} ORDER BY id", params)
        fromhex = bytes.fromhex
        for row_id, stored_hash in rows:
            yield row_id, fromhex(stored_hash)
        return
    select = dialect_of(conn).stored_row
    for row in stream(conn, f"SELECT {select} FROM {TABLE} WHERE {where} ORDER BY id", params):
        yield row[0], content_digest(row[:-1], version)


def _gap(expected: int, found: int | None) -> AuditStoreError:
    where = "the trail ends" if found is None else f"the next row is {found}"
    return AuditStoreError(
        f"row {expected} is missing ({where}): rows were deleted outside a purge, so the "
        "Merkle tree cannot be computed (run verify)"
    )


def frontier_through(conn: AnyConnection, upto: int) -> Frontier:
    """The tree over every row up to ``upto``, from the newest anchor's frontier: read in the
    caller's transaction (a purge's, before it deletes those rows)."""
    frontier = anchor_frontier(conn)
    if upto > frontier.head_id:
        frontier.extend(data for _, data in leaves(conn, frontier.head_id, upto))
    return frontier
