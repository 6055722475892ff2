"""Inclusion proofs: one entry shown to be in a signed checkpoint, checked without the database.

:func:`prove` builds, from the trail, the RFC 6962 audit path of one entry's leaf up to the root a
signed checkpoint commits to; :func:`verify_proof` checks it offline with the signing public key
alone — what an auditor receives to confirm one entry exists without seeing the rest. A proof
is a JSON object::

    {"format": "audit-engine-proof/1",
     "entry": <the entry as an export line: id, fields, prev_hash (and hash: version 1)>,
     "chain_version": "1" | "2", "leaf_index": i, "tree_size": n,
     "path": [hex, ...], "checkpoint": "<the signed note>"}

The leaf data is the entry's content digest (:func:`audit_engine.storage.chain.content_digest`),
computable without the chain key; a keyed row's stored hash is an HMAC nobody else can check, so
a version "2" proof leaves it out, and every byte a proof carries is covered by the check. The
leaf index follows from the entry's id and the checkpoint's head and size (the tree covers rows
``head_id - size + 1 .. head_id``), so a proof cannot move an entry to another place.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from audit_engine.errors import AuditStoreError
from audit_engine.formats import export_lines
from audit_engine.storage.chain import content_digest
from audit_engine.storage.checkpoint_verify import (
    CheckpointProblem,
    CheckpointSource,
    head_of,
    origin_of,
    public_key_of,
    read_log,
    verify_note,
)
from audit_engine.storage.dialect import dialect_of
from audit_engine.storage.exported import export_row
from audit_engine.storage.keys import checkpoint_notes
from audit_engine.storage.leaves import anchor_frontier, leaves, trail_id
from audit_engine.storage.merkle import Frontier, FrontierError, inclusion_proof_after
from audit_engine.storage.merkle import verify_inclusion as _verify_inclusion
from audit_engine.storage.sqlite.schema import STORED_COLUMNS, TABLE

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from audit_engine.storage.dialect import AnyConnection

__all__ = ["PROOF_FORMAT", "ProofReport", "prove", "verify_proof"]

PROOF_FORMAT = "audit-engine-proof/1"
_NAMES = ("id", *STORED_COLUMNS, "prev_hash", "hash")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEYS = {"format", "entry", "chain_version", "leaf_index", "tree_size", "path", "checkpoint"}
# The trail's own checkpoint copies looked at, newest first, for one whose note is usable.
_LOOKBACK = 64


class ProofReport(BaseModel):
    """The result of :func:`verify_proof`: whether the proof holds, and what it proves."""

    model_config = ConfigDict(frozen=True)

    ok: bool
    reason: str | None = None
    #: The proven entry's row id and event id, and the trail it is in (the checkpoint's origin).
    entry_id: int | None = None
    event_id: str | None = None
    origin: str | None = None
    leaf_index: int | None = None
    tree_size: int | None = None
    #: The chain head and time the checkpoint signs.
    head_id: int | None = None
    checkpoint_time: str | None = None


# -- prove ---------------------------------------------------------------------------------------


def prove(
    conn: AnyConnection,
    event_id: str,
    checkpoints: CheckpointSource | None = None,
    public_key: Any = None,
) -> dict[str, Any]:
    """The inclusion proof of the entry ``event_id`` against the newest checkpoint that covers
    it: from the checkpoint log ``checkpoints`` (a path or its lines), else from the copies the
    writer keeps in the trail; with ``public_key`` (a key or its PEM file), only checkpoints
    whose signature verifies with it. Call in a read snapshot. :class:`AuditStoreError` says why
    there is no proof (no such entry, purged, no checkpoint covers it yet, a log line that is
    not a well-formed checkpoint of this trail)."""
    key = None if public_key is None else public_key_of(public_key)
    select = dialect_of(conn).stored_row
    row = conn.execute(f"SELECT {select} FROM {TABLE} WHERE event_id = ?", [event_id]).fetchone()
    anchor = anchor_frontier(conn)
    if row is None:
        purged = (
            f" (the rows up to id {anchor.head_id} were purged: a proof made before the purge "
            "still verifies)"
            if anchor.head_id
            else ""
        )
        raise AuditStoreError(f"no entry has the event id {event_id!r}{purged}")
    row_id = int(row[0])
    if row_id <= anchor.head_id:
        raise AuditStoreError(
            f"entry {event_id} (row {row_id}) was purged: only the anchor after row "
            f"{anchor.head_id} vouches for it, no proof can be made"
        )
    head_id, note = _checkpoint_for(conn, row_id, anchor.base, checkpoints, key)
    size = head_id - anchor.base
    start = _nearest_frontier(conn, anchor, row_id)
    later = [data for _, data in leaves(conn, start.head_id, head_id)]
    path = inclusion_proof_after(start, later, row_id - anchor.base - 1, size)
    version = _version_of(conn, row_id)
    entry = json.loads(next(export_lines("jsonl", _NAMES, [tuple(row)])))
    if version != "1":
        del entry["hash"]  # an HMAC: nobody without the chain key can check it
    return {
        "format": PROOF_FORMAT,
        "entry": entry,
        "chain_version": version,
        "leaf_index": row_id - anchor.base - 1,
        "tree_size": size,
        "path": [node.hex() for node in path],
        "checkpoint": note,
    }


def _checkpoint_for(
    conn: AnyConnection,
    row_id: int,
    base: int,
    checkpoints: CheckpointSource | None,
    key: Ed25519PublicKey | None,
) -> tuple[int, str]:
    """The head id and note of the newest usable checkpoint whose tree holds row ``row_id``
    (``base``: the rows before the tree's first leaf)."""
    if checkpoints is None:
        found = conn.execute(
            "SELECT id, note FROM audit_checkpoints WHERE head_id >= ? "
            "ORDER BY head_id DESC LIMIT ?",
            [row_id, _LOOKBACK],
        ).fetchall()
        candidates = [(f"the trail's checkpoint {ident}", str(note)) for ident, note in found]
        where = "the trail's checkpoints"
    else:
        candidates = [(f"checkpoint line {c.line}", c.note) for c in read_log(checkpoints)]
        where = "the checkpoint log"
    origin = origin_of(trail_id(conn))
    best: tuple[int, str] | None = None
    for name, note in candidates:
        try:
            head = _usable_head(note, origin, row_id, base, key)
        except CheckpointProblem as bad:
            if checkpoints is None:
                continue  # the trail's copies are not trusted: an older one may still do
            raise AuditStoreError(
                f"{name} is not a signed checkpoint of this trail: {bad}"
            ) from None
        if head is not None and (best is None or head > best[0]):
            best = (head, note)
    if best is None:
        signed = "" if key is None else " signed with that public key"
        raise AuditStoreError(
            f"no checkpoint{signed} in {where} covers row {row_id} yet: the writer signs one "
            "every checkpoint_every entries, every checkpoint_interval seconds and at close"
        )
    return best


def _usable_head(
    note: str, origin: str, row_id: int, base: int, key: Ed25519PublicKey | None
) -> int | None:
    """The head id of ``note`` when it covers row ``row_id`` (None: it does not, is another
    trail's, or does not verify with ``key``); :class:`CheckpointProblem` when it is not a
    well-formed checkpoint, or its size is not that of its head in this trail's tree."""
    notes = checkpoint_notes("prove")
    try:
        checkpoint = notes.parse(note)
    except notes.CheckpointError as exc:
        raise CheckpointProblem(str(exc)) from None
    if checkpoint.origin != origin:
        return None
    head = head_of(checkpoint)
    if head.id < row_id:
        return None
    if checkpoint.size != head.id - base:
        raise CheckpointProblem(
            f"its size {checkpoint.size} does not match its head id {head.id} (this trail's "
            f"tree starts after row {base}: a checkpoint of that head has size {head.id - base})"
        )
    if key is not None:
        try:
            verify_note(note, key)
        except CheckpointProblem:
            return None  # only checkpoints the key vouches for are used
    return head.id


def _nearest_frontier(conn: AnyConnection, anchor: Frontier, row_id: int) -> Frontier:
    """The frontier to start from: the stored one of the newest checkpoint before the row
    (fewer rows to read), else the anchor's. A stored frontier that was tampered with only makes
    a proof that fails to verify: it is never trusted."""
    found = conn.execute(
        "SELECT merkle FROM audit_checkpoints WHERE head_id < ? AND head_id >= ? "
        "ORDER BY head_id DESC LIMIT 1",
        [row_id, anchor.head_id],
    ).fetchone()
    if found is None:
        return anchor
    try:
        stored = Frontier.from_text(str(found[0]))
    except FrontierError:
        return anchor
    return stored if stored.base == anchor.base else anchor


def _version_of(conn: AnyConnection, row_id: int) -> str:
    found = conn.execute(
        "SELECT version FROM audit_chain_versions WHERE first_id <= ? "
        "ORDER BY first_id DESC LIMIT 1",
        [row_id],
    ).fetchone()
    return "1" if found is None else str(found[0])


# -- verify --------------------------------------------------------------------------------------


def verify_proof(proof: str | bytes | Mapping[str, Any], public_key: Any) -> ProofReport:
    """Check an inclusion proof (its JSON text, or the parsed object) offline.

    ``public_key``: the checkpoint signer's Ed25519 public key, or its PEM file (``signing.pub``
    of ``audit-engine keygen``). The report is ok only when the checkpoint's signature verifies,
    the entry's fields hash to the leaf, and the path leads from that leaf at the entry's place
    to the signed root. A bad key file raises :class:`~audit_engine.errors.SettingsError`.
    """
    key = public_key_of(public_key)
    try:
        value = json.loads(proof) if isinstance(proof, str | bytes) else dict(proof)
        if not isinstance(value, dict):
            raise CheckpointProblem("it is not a JSON object")
        return _check(value, key)
    except ValueError as exc:
        return ProofReport(ok=False, reason=f"not an inclusion proof: {exc}")
    except CheckpointProblem as bad:
        return ProofReport(ok=False, reason=str(bad))


def _field(value: Mapping[str, Any], name: str, kind: type) -> Any:
    found = value.get(name)
    if type(found) is not kind:
        raise CheckpointProblem(f"the proof's {name!r} is missing or not a {kind.__name__}")
    return found


def _check(value: dict[str, Any], key: Any) -> ProofReport:
    if value.get("format") != PROOF_FORMAT:
        raise CheckpointProblem(f"not an inclusion proof of this engine (format {PROOF_FORMAT!r})")
    if set(value) - _KEYS:
        raise CheckpointProblem(f"the proof has unknown fields: {sorted(set(value) - _KEYS)}")
    entry: dict[str, Any] = _field(value, "entry", dict)
    version: str = _field(value, "chain_version", str)
    index: int = _field(value, "leaf_index", int)
    size: int = _field(value, "tree_size", int)
    path: list[Any] = _field(value, "path", list)
    if not all(isinstance(node, str) and _HEX64.fullmatch(node) for node in path):
        raise CheckpointProblem("the proof's path must be hashes of 64 lowercase hex characters")
    if version not in ("1", "2"):
        raise CheckpointProblem(f"chain version {version!r} is not one this release knows (1, 2)")
    checkpoint = verify_note(_field(value, "checkpoint", str), key)
    head = head_of(checkpoint)
    if checkpoint.size != size:
        raise CheckpointProblem(f"the tree size {size} is not the checkpoint's ({checkpoint.size})")
    wanted = set(_NAMES) if version == "1" else set(_NAMES) - {"hash"}
    if set(entry) != wanted:
        odd = sorted(set(entry) ^ wanted)
        raise CheckpointProblem(
            f"the entry's fields are not those of a version {version} row: {odd}"
        )
    if type(entry["id"]) is not int:
        raise CheckpointProblem("entry.id must be an integer")
    if type(entry["critical"]) is not bool:
        raise CheckpointProblem("entry.critical must be true or false")
    try:
        row = export_row({"hash": None, **entry})
        leaf = content_digest(row[:-1], version)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointProblem(f"the entry is not a stored row ({exc!r})") from None
    row_id: int = row[0]
    if index != row_id - (head.id - size) - 1:
        raise CheckpointProblem(
            f"leaf index {index} is not the place of row {row_id} in a tree of {size} rows "
            f"ending at row {head.id}"
        )
    if version == "1" and entry["hash"] != leaf.hex():
        raise CheckpointProblem(f"row {row_id}'s hash does not match its contents")
    if row_id == head.id and version == "1" and entry["hash"] != head.hash:
        raise CheckpointProblem(f"row {row_id} is the checkpoint's head but its hash differs")
    nodes = [bytes.fromhex(node) for node in path]
    if not _verify_inclusion(index, size, leaf, nodes, checkpoint.root):
        raise CheckpointProblem(
            f"the audit path does not lead from row {row_id} to the checkpoint's signed root"
        )
    return ProofReport(
        ok=True,
        entry_id=row_id,
        event_id=entry.get("event_id"),
        origin=checkpoint.origin,
        leaf_index=index,
        tree_size=size,
        head_id=head.id,
        checkpoint_time=checkpoint.time,
    )


def load_proof(path: str | os.PathLike[str]) -> str:
    """The text of a proof file (for the CLI: an unreadable file names itself)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditStoreError(f"cannot read the proof file {os.fspath(path)}: {exc}") from None
