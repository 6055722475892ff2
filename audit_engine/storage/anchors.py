"""The maintenance records — purge anchors and cleanup runs — as two hash chains, and their checks.

A purge deletes a prefix of the entry chain and leaves an *anchor*: what it replaced (the last
deleted id and hash, how many rows, the newest purged timestamp, the cutoff, the age it was run
with, when). Anchors form a hash chain of their own, and so do the rows of the cleanup-runs
table; both start from the genesis hash. The canonical forms, documented in docs/integrity.md:

    anchor = "\\x1f".join(["anchor-1", id, last_deleted_id, last_deleted_hash, rows_deleted,
                          newest_purged, cutoff, older_than_us, created_at, prev_hash])
    run    = "\\x1f".join(["run-1", id, started_at, finished_at, cutoff, rows_deleted, batches,
                          duration_s, prev_hash])

with every value as its stored text, integers in decimal, ``duration_s`` with six decimals, NULL
as ``"\\x00"``, encoded as UTF-8, hashed with SHA-256 (hex).

On a keyed trail an anchor over keyed rows (its last deleted id at or after the first keyed
row) is keyed too: ``"anchor-2"`` in the version slot, and its hash the HMAC-SHA256 of that
text's SHA-256 under the chain key, as entries of chain version 2. Anyone who can write the
database could otherwise delete recent keyed rows behind an anchor with made-up dates (and the
right Merkle frontier, which needs no key); without the key they cannot write one that verifies.

:func:`check_maintenance` checks both chains and that every anchor is possible: its ids follow the
anchor before it and span exactly ``rows_deleted`` rows (ids are contiguous), the newest purged
row is older than the cutoff, the cutoff is not after the purge, the purge is not in the future nor
before the anchor before it, and — given a minimum retention — the cutoff is at least that long
before the purge. It reads one row per anchor and per run, never per entry.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from audit_engine.storage.chain import GENESIS_HASH, KEYED_VERSION, ChainHead

if TYPE_CHECKING:  # the dialect module imports the SQLite backend, which imports this one
    from audit_engine.storage.dialect import AnyConnection
    from audit_engine.storage.keys import ChainKeys

ANCHORS = "audit_anchors"
CLEANUP_RUNS = "audit_cleanup_runs"
ANCHOR_VERSION = "anchor-1"
KEYED_ANCHOR_VERSION = "anchor-2"
RUN_VERSION = "run-1"
# The stored fields of each record, in the order of its canonical form (after id).
ANCHOR_COLUMNS = (
    "last_deleted_id",
    "last_deleted_hash",
    "rows_deleted",
    "newest_purged",
    "cutoff",
    "older_than_us",
    "created_at",
)
RUN_COLUMNS = ("started_at", "finished_at", "cutoff", "rows_deleted", "batches", "duration_s")
_SEP = "\x1f"
_NULL = "\x00"


def _text(value: Any) -> str:
    if value is None:
        return _NULL
    if isinstance(value, float):
        return f"{value:.6f}"  # one spelling for every language's float printer
    return str(value)


def _digest(version: str, values: Sequence[Any]) -> str:
    text = _SEP.join([version, *(_text(v) for v in values)])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def anchor_hash(values: Sequence[Any], key: bytes | None = None) -> str:
    """The hash of an anchor ``(id, *ANCHOR_COLUMNS, prev_hash)`` as stored; with ``key``,
    the keyed form (see the module doc)."""
    if key is None:
        return _digest(ANCHOR_VERSION, values)
    text = _SEP.join([KEYED_ANCHOR_VERSION, *(_text(v) for v in values)])
    return hmac.digest(key, hashlib.sha256(text.encode("utf-8")).digest(), "sha256").hex()


def keyed_from(conn: AnyConnection) -> int | None:
    """The first id of the trail's first keyed range (None: never keyed); an anchor whose last
    deleted id is at or after it is keyed."""
    row = conn.execute(
        f"SELECT min(first_id) FROM audit_chain_versions WHERE version = '{KEYED_VERSION}'"
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def run_hash(values: Sequence[Any]) -> str:
    """The hash of a cleanup run ``(id, *RUN_COLUMNS, prev_hash)`` as stored."""
    return _digest(RUN_VERSION, values)


def record_run(conn: AnyConnection, values: Sequence[Any]) -> None:
    """Append a cleanup run (the :data:`RUN_COLUMNS` values) to its chain, in the current
    write transaction (the caller holds ``BEGIN IMMEDIATE``, so the tail cannot move).
    """
    tail = conn.execute(f"SELECT id, hash FROM {CLEANUP_RUNS} ORDER BY id DESC LIMIT 1").fetchone()
    run_id, prev = (tail[0] + 1, tail[1]) if tail else (1, GENESIS_HASH)
    row = (run_id, *values, prev)
    conn.execute(
        f"INSERT INTO {CLEANUP_RUNS} (id, {', '.join(RUN_COLUMNS)}, prev_hash, hash) "
        f"VALUES ({', '.join('?' * (len(row) + 1))})",
        (*row, run_hash(row)),
    )


def extend_anchor(
    conn: AnyConnection,
    anchor_id: int | None,
    *,
    last: tuple[int, str],
    count: int,
    newest: str,
    cutoff: str,
    older_than_us: int | None,
    created_at: str,
    merkle: str | None = None,
    key: bytes | None = None,
) -> int:
    """Record a purge batch, in its write transaction; returns the anchor's id.

    The run's anchor (``anchor_id``) grows while it is still the newest anchor; otherwise — the
    run's first batch, or another purge anchored in between — a new anchor is chained on.
    ``merkle``: the Merkle tree's frontier over every row up to ``last`` (stored beside the
    anchor, outside its hash: signed checkpoints vouch for it, see storage/leaves.py). ``key``:
    the chain key of a keyed anchor (see the module doc), else None.
    """
    tail = conn.execute(
        f"SELECT id, {', '.join(ANCHOR_COLUMNS)}, prev_hash, hash FROM {ANCHORS} "
        "ORDER BY id DESC LIMIT 1"
    ).fetchone()
    if tail is not None and anchor_id is not None and tail[0] == anchor_id:
        values = (
            anchor_id,
            last[0],
            last[1],
            tail[3] + count,
            max(tail[4], newest) if tail[4] is not None else newest,
            cutoff,
            older_than_us,
            created_at,
            tail[-2],
        )
        sets = ", ".join(f"{name} = ?" for name in ANCHOR_COLUMNS)
        conn.execute(
            f"UPDATE {ANCHORS} SET {sets}, hash = ?, merkle = ? WHERE id = ?",
            (*values[1:-1], anchor_hash(values, key), merkle, anchor_id),
        )
        return anchor_id
    new_id, prev = (tail[0] + 1, tail[-1]) if tail is not None else (1, GENESIS_HASH)
    values = (new_id, last[0], last[1], count, newest, cutoff, older_than_us, created_at, prev)
    conn.execute(
        f"INSERT INTO {ANCHORS} (id, {', '.join(ANCHOR_COLUMNS)}, prev_hash, hash, merkle) "
        f"VALUES ({', '.join('?' * (len(values) + 2))})",
        (*values, anchor_hash(values, key), merkle),
    )
    return new_id


@dataclass(frozen=True)
class MaintenanceCheck:
    """What :func:`check_maintenance` found: where the entries must chain from, or a problem."""

    start: ChainHead
    anchors: int
    runs: int
    problem: str | None = None
    warnings: tuple[str, ...] = field(default=())


class _Refused(Exception):
    """A maintenance record that fails a check (the message says which and why)."""


def _when(record: str, value: Any) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise _Refused(f"{record} holds an unreadable time ({value!r})") from None
    if moment.tzinfo is None:
        raise _Refused(f"{record} holds a time without a time zone ({value!r})")
    return moment


def _age(span: timedelta) -> str:
    if span % timedelta(days=1):
        return str(span)
    days = span // timedelta(days=1)
    return f"{days} day" if days == 1 else f"{days} days"


def _linked(
    records: Iterable[Sequence[Any]],
    noun: str,
    chain: str,
    hashed: Callable[[Sequence[Any]], bool | None],
) -> Iterable[Sequence[Any]]:
    """Yield each record after checking its link and its hash (``hashed(record)``: whether the
    stored hash is the record's; None: it cannot be checked here, the link is)."""
    prev = GENESIS_HASH
    for record in records:
        name = f"{noun} {record[0]}"
        if record[-1] is None:
            raise _Refused(
                f"{name} is not part of the {chain} chain "
                "(it has no hash: a purge did not write it)"
            )
        if record[-2] != prev:
            raise _Refused(
                f"{name} does not link to the {noun.split()[-1]} before it (prev_hash mismatch)"
            )
        if hashed(record) is False:
            raise _Refused(f"{name} was modified (its hash does not match its contents)")
        yield record
        prev = record[-1]


def _anchor_hashed(
    first_keyed: int | None, keys: ChainKeys | None, warnings: list[str]
) -> Callable[[Sequence[Any]], bool | None]:
    """How each anchor's hash is checked: unkeyed before the first keyed row; keyed (by any key
    of ``keys``) from it on; without keys, a keyed anchor's hash cannot be checked (warned)."""

    def hashed(record: Sequence[Any]) -> bool | None:
        body, stored = record[:-1], record[-1]
        if first_keyed is None or body[1] < first_keyed:
            return bool(anchor_hash(body) == stored)
        if keys is None:
            warnings.append(
                f"anchor {body[0]} is keyed: its hash cannot be checked without the chain key"
            )
            return None
        return any(anchor_hash(body, key.secret) == stored for key in keys.keys)

    return hashed


def _check_anchors(
    conn: AnyConnection, now: datetime, min_retention: timedelta | None, keys: ChainKeys | None
) -> tuple[ChainHead, int, list[str]]:
    start = ChainHead(id=0, hash=GENESIS_HASH)
    previous_created: datetime | None = None
    checked = 0
    warnings: list[str] = []
    hashed = _anchor_hashed(keyed_from(conn), keys, warnings)
    rows = conn.execute(
        f"SELECT id, {', '.join(ANCHOR_COLUMNS)}, prev_hash, hash FROM {ANCHORS} ORDER BY id"
    ).fetchall()
    for record in _linked(rows, "anchor", "anchor", hashed):
        (anchor_id, last_id, last_hash, deleted, newest, cutoff_text, _, created_text) = record[:8]
        name = f"anchor {anchor_id}"
        if not isinstance(last_id, int) or last_id <= start.id:
            raise _Refused(
                f"{name} does not move past the anchor before it (last id {last_id} after "
                f"{start.id})"
            )
        if deleted != last_id - start.id:
            raise _Refused(
                f"{name} claims {deleted} rows deleted but spans ids {start.id + 1}..{last_id} "
                f"({last_id - start.id} rows)"
            )
        created = _when(name, created_text)
        cutoff = _when(name, cutoff_text)
        if created > now:
            raise _Refused(f"{name} is dated in the future ({created_text})")
        if previous_created is not None and created < previous_created:
            raise _Refused(f"{name} is dated before the anchor before it ({created_text})")
        if cutoff > created:
            raise _Refused(f"{name}'s cutoff {cutoff_text} is after the purge that wrote it")
        if newest is None:
            warnings.append(
                f"{name} was written before schema version 3: it does not record the newest "
                "purged timestamp, so only its cutoff and creation time are checked"
            )
        elif _when(name, newest) >= cutoff:
            raise _Refused(
                f"{name} claims rows up to {newest} were purged, not older than its cutoff "
                f"{cutoff_text}"
            )
        if min_retention is not None and cutoff > created - min_retention:
            age = _age(min_retention)
            raise _Refused(
                f"{name} purged rows younger than the minimum retention of {age}: its cutoff "
                f"{cutoff_text} is less than {age} before the purge at "
                f"{created_text} (if that purge was intended, verify with a shorter minimum "
                "retention)"
            )
        start = ChainHead(id=last_id, hash=last_hash)
        previous_created = created
        checked += 1
    return start, checked, warnings


def _check_runs(conn: AnyConnection, now: datetime) -> int:
    checked = 0
    rows = conn.execute(
        f"SELECT id, {', '.join(RUN_COLUMNS)}, prev_hash, hash FROM {CLEANUP_RUNS} ORDER BY id"
    )
    for record in _linked(rows, "cleanup run", "cleanup-run", lambda r: run_hash(r[:-1]) == r[-1]):
        name = f"cleanup run {record[0]}"
        started, finished = _when(name, record[1]), _when(name, record[2])
        if not started <= finished <= now:
            raise _Refused(f"{name} has impossible times ({record[1]} to {record[2]})")
        checked += 1
    return checked


def check_maintenance(
    conn: AnyConnection,
    now: datetime,
    min_retention: timedelta | None = None,
    keys: ChainKeys | None = None,
) -> MaintenanceCheck:
    """Check the anchor and cleanup-run chains on ``conn`` (in the caller's read snapshot);
    ``keys`` check the keyed anchors."""
    start = ChainHead(id=0, hash=GENESIS_HASH)
    anchors = runs = 0
    warnings: list[str] = []
    try:
        start, anchors, warnings = _check_anchors(conn, now, min_retention, keys)
        runs = _check_runs(conn, now)
    except _Refused as refused:
        return MaintenanceCheck(start=start, anchors=anchors, runs=runs, problem=str(refused))
    return MaintenanceCheck(start=start, anchors=anchors, runs=runs, warnings=tuple(warnings))
