"""Verify a trail against the signed checkpoints kept outside it (issue 14, item 3).

A checkpoint log (``checkpoint_file``: one JSON object per line, its ``note`` the signed C2SP
checkpoint) is what the writer committed to, held where someone who can write the database
cannot reach. Only the signed note is trusted; the other fields of a line are a convenience.
:func:`check` holds the trail to every checkpoint, in the order of their heads:

- its signature verifies with the public key, and its origin is this trail's
  (``audit-engine/<trail_id>``): a file swapped for another trail fails here;
- a checkpoint above the trail's tail: the trail was truncated or rolled back;
- above the newest purge anchor: the tree head recomputed from the anchor's frontier and the
  rows equals the signed root, and row ``head_id``'s hash equals the signed head (a rewritten
  row, even with the chain recomputed, or a forged anchor frontier, changes the root);
- exactly at the anchor: the anchor's frontier root and last deleted hash;
- below it (purged): the signature only, counted apart.

The leaves are read once, in id order, for all checkpoints together; the first checkpoint that
disagrees is named by its line number and size. Checking a signature needs the optional
``cryptography`` package, imported on first use (the engine runs without it).
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit_engine.errors import AuditStoreError
from audit_engine.storage.chain import ChainHead, VerifyReport
from audit_engine.storage.keys import SIGNING_NOTE_KEY, checkpoint_notes, load_public_key
from audit_engine.storage.leaves import anchor_frontier, leaves, trail_id

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from audit_engine.storage.checkpoints import Checkpoint
    from audit_engine.storage.dialect import AnyConnection

__all__ = [
    "CheckpointFindings",
    "CheckpointProblem",
    "CheckpointSource",
    "LoggedCheckpoint",
    "check",
    "head_of",
    "merged",
    "origin_of",
    "prepared",
    "public_key_of",
    "read_log",
    "verify_note",
]

#: Where checkpoints come from: a checkpoint log file, or its lines.
CheckpointSource = str | os.PathLike[str] | Iterable[str]

_TABLE = "audit_entries"


class CheckpointProblem(Exception):
    """A checkpoint whose signature, origin or head is wrong: the reason."""


@dataclass(frozen=True)
class LoggedCheckpoint:
    """One line of a checkpoint log: its number, the signed note, the size it says it has."""

    line: int
    note: str
    size: int | None


@dataclass(frozen=True)
class CheckpointFindings:
    """What :func:`check` found: how many checkpoints held, and the first that did not."""

    checked: int = 0
    purged: int = 0
    problem: str | None = None
    line: int | None = None
    size: int | None = None


def public_key_of(source: Any) -> Ed25519PublicKey:
    """``source`` as a public key: a key already, or the PEM file (``--public-key``) to load."""
    if isinstance(source, str | os.PathLike):
        return load_public_key(source)
    crypto = importlib.import_module("cryptography.hazmat.primitives.asymmetric.ed25519")
    if not isinstance(source, crypto.Ed25519PublicKey):
        raise TypeError(
            f"public_key must be an Ed25519 public key or a PEM file (got {type(source).__name__})"
        )
    key: Ed25519PublicKey = source
    return key


def verify_note(note: str, public_key: Ed25519PublicKey) -> Checkpoint:
    """The checkpoint in ``note`` once its signature verifies, else :class:`CheckpointProblem`."""
    module = checkpoint_notes("checking checkpoints")
    try:
        checkpoint: Checkpoint = module.verify(note, SIGNING_NOTE_KEY, public_key)
    except module.CheckpointError as exc:
        raise CheckpointProblem(
            f"its signature does not verify with the public key ({exc})"
        ) from None
    return checkpoint


def origin_of(trail: str) -> str:
    """The origin line the checkpoints of trail ``trail`` (its ``trail_id``) carry."""
    return f"audit-engine/{trail}"


def head_of(checkpoint: Checkpoint) -> ChainHead:
    """The chain head a checkpoint signs (its ``head <id> <hash>`` line)."""
    ident, _, digest = checkpoint.head.partition(" ")
    if not (ident.isascii() and ident.isdigit()) or len(digest) != 64:
        raise CheckpointProblem(f"its head line is not '<id> <hash>' (got {checkpoint.head!r})")
    return ChainHead(id=int(ident), hash=digest)


def read_log(source: CheckpointSource) -> list[LoggedCheckpoint]:
    """The checkpoints of a log file (a path) or of its lines, in order.

    A line that is not a checkpoint line (JSON with a ``note``) raises :class:`AuditStoreError`
    naming the file and line: that is a wrong file, not a tampered trail. So does a log with no
    checkpoint at all (verifying against nothing would prove nothing).
    """
    if isinstance(source, str | os.PathLike):
        name = str(source)
        try:
            lines: Iterable[str] = Path(source).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise AuditStoreError(f"cannot read the checkpoint file {name}: {exc}") from None
    else:
        name, lines = "the checkpoint log", source
    found = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            note = record["note"]
            if not isinstance(note, str):
                raise TypeError("its note is not text")
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditStoreError(
                f"{name} line {number} is not a checkpoint (a JSON object with a signed "
                f"'note', as the writer appends to checkpoint_file): {exc!r}"
            ) from None
        size = record.get("size")
        found.append(LoggedCheckpoint(number, note, size if type(size) is int else None))
    if not found:
        raise AuditStoreError(f"{name} holds no checkpoint: there is nothing to verify against")
    return found


@dataclass(frozen=True)
class _Signed:
    line: int
    size: int
    head: ChainHead
    root: bytes


def check(
    conn: AnyConnection, log: list[LoggedCheckpoint], public_key: Ed25519PublicKey, tail_id: int
) -> CheckpointFindings:
    """Hold the trail on ``conn`` (in the caller's read snapshot; its chain ends at
    ``tail_id``) to every checkpoint of ``log``; see the module doc."""
    origin = origin_of(trail_id(conn))
    signed: list[_Signed] = []
    for logged in log:
        try:
            checkpoint = verify_note(logged.note, public_key)
            if checkpoint.origin != origin:
                raise CheckpointProblem(
                    f"it was signed for another trail ({checkpoint.origin}; this trail is {origin})"
                )
            head = head_of(checkpoint)
        except CheckpointProblem as bad:
            return _failed(logged.line, logged.size, str(bad), 0, 0)
        signed.append(_Signed(logged.line, checkpoint.size, head, checkpoint.root))
    signed.sort(key=lambda s: (s.head.id, s.line))
    return _hold(conn, signed, tail_id)


def _failed(
    line: int, size: int | None, reason: str, checked: int, purged: int
) -> CheckpointFindings:
    sized = f" (size {size})" if size is not None else ""
    return CheckpointFindings(
        checked=checked,
        purged=purged,
        problem=f"checkpoint line {line}{sized}: {reason}",
        line=line,
        size=size,
    )


def _hold(conn: AnyConnection, signed: list[_Signed], tail_id: int) -> CheckpointFindings:
    try:
        frontier = anchor_frontier(conn)
    except AuditStoreError as exc:  # a forged anchor's frontier that does not even parse
        return CheckpointFindings(problem=f"the newest purge anchor: {exc}")
    anchor_id = frontier.head_id
    anchor_hash = _anchor_hash(conn, anchor_id)
    upto = min(signed[-1].head.id, tail_id)
    rows = leaves(conn, anchor_id, upto) if upto > anchor_id else iter(())
    checked = purged = 0
    for cp in signed:
        if cp.head.id < anchor_id:
            purged += 1  # its rows are gone: the anchor's frontier vouches for them
            continue
        if cp.size != cp.head.id - frontier.base:
            reason = (
                f"its size does not match its head id {cp.head.id} (this trail's tree starts "
                f"after row {frontier.base}: a checkpoint of that head has size "
                f"{cp.head.id - frontier.base})"
            )
            return _failed(cp.line, cp.size, reason, checked, purged)
        if cp.head.id > tail_id:
            reason = (
                f"the trail ends at id {tail_id}, before its head {cp.head.id}: rows were "
                "deleted from the end (truncated) or the trail was rolled back to an older copy"
            )
            return _failed(cp.line, cp.size, reason, checked, purged)
        try:
            # extend(): one loop over the leaves up to the head, no call per leaf.
            frontier.extend(data for _, data in islice(rows, cp.head.id - frontier.head_id))
        except AuditStoreError as exc:  # a hole in the ids
            return _failed(cp.line, cp.size, str(exc), checked, purged)
        if frontier.root() != cp.root:
            where = "the anchor's frontier" if cp.head.id == anchor_id else "the rows"
            reason = (
                f"the tree head recomputed from {where} differs from the signed root: "
                f"rows up to id {cp.head.id} (or the purge anchor) were changed"
            )
            return _failed(cp.line, cp.size, reason, checked, purged)
        stored = anchor_hash if cp.head.id == anchor_id else _row_hash(conn, cp.head.id)
        if stored != cp.head.hash:
            reason = f"row {cp.head.id}'s hash differs from the signed head"
            return _failed(cp.line, cp.size, reason, checked, purged)
        checked += 1
    return CheckpointFindings(checked=checked, purged=purged)


def _row_hash(conn: AnyConnection, row_id: int) -> str | None:
    row = conn.execute(f"SELECT hash FROM {_TABLE} WHERE id = ?", [row_id]).fetchone()
    return None if row is None else str(row[0])


def _anchor_hash(conn: AnyConnection, anchor_id: int) -> str | None:
    if anchor_id == 0:
        return None  # no checkpoint has size 0 at genesis: nothing is compared
    row = conn.execute(
        "SELECT last_deleted_hash FROM audit_anchors WHERE last_deleted_id = ?", [anchor_id]
    ).fetchone()
    return None if row is None else str(row[0])


def prepared(
    checkpoints: CheckpointSource | None, public_key: Any
) -> tuple[list[LoggedCheckpoint], Ed25519PublicKey] | None:
    """``verify()``'s checkpoint arguments read up front (a bad file or key raises before the
    trail is read), or None when there are none."""
    if checkpoints is None and public_key is None:
        return None
    if checkpoints is None or public_key is None:
        raise AuditStoreError(
            "checkpoints and public_key go together: the checkpoint log and the public key "
            "its checkpoints were signed with"
        )
    return read_log(checkpoints), public_key_of(public_key)


def merged(report: VerifyReport, found: CheckpointFindings) -> VerifyReport:
    """The chain's report with what the checkpoints showed; not ok if either says so (a chain
    that broke first keeps its reason: the earlier finding)."""
    update: dict[str, Any] = {
        "checkpoints_checked": found.checked,
        "checkpoints_purged": found.purged,
        "checkpoint_line": found.line,
        "checkpoint_problem": found.problem,
    }
    if found.problem is not None:
        update["ok"] = False
        if report.ok or report.reason is None:
            update["reason"] = found.problem
    return report.model_copy(update=update)
