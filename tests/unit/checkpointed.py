"""A trail with signed checkpoints, and what an attacker who can write the database does to it.

Checkpoints are made here as the writer makes them (the tree over the rows, the C2SP note, one
JSON line each), so the verify and proof tests hold on their own; ``database`` is a SQLite path
or a ``postgresql://`` URL, as the ``trail_db`` fixture gives it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import trails
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit_engine import AuditEntry
from audit_engine.storage import backends, checkpoints
from audit_engine.storage.anchors import anchor_hash
from audit_engine.storage.chain import GENESIS_HASH, row_hash
from audit_engine.storage.leaves import frontier_through, trail_id
from audit_engine.storage.merkle import Frontier
from audit_engine.storage.sqlite import format_timestamp

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def entries(count: int, start: int = 1) -> list[AuditEntry]:
    return [
        AuditEntry(
            event_id=f"evt-{n}",
            timestamp=T0 + timedelta(minutes=n),
            actor="alice" if n % 2 else None,
            action="doc.save",
            operation="update",
            resource_type="doc",
            resource_id=str(n),
            details={"n": n, "note": "zoë"},
            critical=n == 3,
        )
        for n in range(start, start + count)
    ]


def row(database: Path | str, row_id: int) -> tuple[Any, ...]:
    select = trails.stored_row(database)
    return trails.query(database, f"SELECT {select} FROM audit_entries WHERE id = ?", (row_id,))[0]


def checkpoint_line(
    database: Path | str, head_id: int, key: Ed25519PrivateKey = KEY, origin: str | None = None
) -> str:
    """The checkpoint log line the writer would append at ``head_id``."""
    conn = backends.open_trail(database)
    try:
        frontier = frontier_through(conn, head_id)
        trail = trail_id(conn)
    finally:
        conn.close()
    head_hash = row(database, head_id)[-1]
    checkpoint = checkpoints.Checkpoint(
        origin=origin or f"audit-engine/{trail}",
        size=frontier.size,
        root=frontier.root(),
        head=f"{head_id} {head_hash}",
        time="2026-12-01T20:00:00Z",
    )
    note = checkpoints.sign(checkpoint, "audit-engine", key)
    record = {
        "trail_id": trail,
        "size": frontier.size,
        "head_id": head_id,
        "head_hash": head_hash,
        "root": frontier.root().hex(),
        "time": checkpoint.time,
        "note": note,
    }
    return json.dumps(record)


def checkpointed(database: Path | str, rows: int, heads: Sequence[int]) -> list[str]:
    """Write ``rows`` entries and return the checkpoint lines made at ``heads``."""
    trails.write(database, entries(rows))
    return [checkpoint_line(database, head) for head in heads]


def rewrite_from(database: Path | str, first_id: int, actor: str = "mallory") -> None:
    """Change row ``first_id``'s actor and recompute the chain from it to the end: the unkeyed
    chain then verifies, only checkpoints (or a published head) can tell."""
    select = trails.stored_row(database)
    rows = trails.query(
        database, f"SELECT {select} FROM audit_entries WHERE id >= ? ORDER BY id", (first_id,)
    )
    prev = rows[0][-2]
    statements: list[trails.Statement] = []
    for index, stored in enumerate(rows):
        fields = list(stored[:-1])
        if index == 0:
            fields[3] = actor  # the actor column
        fields[-1] = prev
        prev = row_hash(fields)
        statements.append(
            (
                "UPDATE audit_entries SET actor = ?, prev_hash = ?, hash = ? WHERE id = ?",
                (fields[3], fields[-1], prev, stored[0]),
            )
        )
    trails.execute(database, *statements)


def forge_anchor(database: Path | str, upto: int, frontier: Frontier) -> None:
    """Delete rows 1..upto and leave an anchor for them that passes the anchor checks (its own
    chain, ids, times), keeping ``frontier`` as its Merkle frontier."""
    last = row(database, upto)
    values = (
        1,
        upto,
        last[-1],
        upto,
        last[2],  # newest purged: its timestamp
        format_timestamp(T0 + timedelta(days=1)),
        None,
        format_timestamp(datetime.now(UTC)),
        GENESIS_HASH,
    )
    trails.execute(
        database,
        ("DELETE FROM audit_entries WHERE id <= ?", (upto,)),
        (
            "INSERT INTO audit_anchors (id, last_deleted_id, last_deleted_hash, rows_deleted, "
            "newest_purged, cutoff, older_than_us, created_at, prev_hash, hash, merkle) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*values, anchor_hash(values), frontier.to_text()),
        ),
    )


__all__ = [
    "KEY",
    "OTHER_KEY",
    "checkpoint_line",
    "checkpointed",
    "entries",
    "forge_anchor",
    "rewrite_from",
    "row",
]
