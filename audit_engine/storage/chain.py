"""The tamper-evident hash chain: canonical form, linking a batch to the tail, verifying.

Each row's ``hash`` is SHA-256 over its canonical form, which includes the previous row's hash, so
changing, deleting, inserting or reordering any row breaks every link after it. The canonical form
is documented in docs/integrity.md so anyone can verify a file with their own code:

    canonical = "\\x1f".join([CHAIN_VERSION, id, event_id, timestamp, actor, action, operation,
                             outcome, resource_type, resource_id, correlation_id, details,
                             critical, prev_hash])

with every value as its stored text (integers in decimal), NULL as ``"\\x00"``, encoded as UTF-8.
Stored text never contains U+0000 or U+001F (the model rejects control characters and ``details``
is JSON, which escapes them), so the form is unambiguous. The fields and their order are
:data:`audit_engine.columns.CHAIN_FIELDS`.

The form is written once, in :mod:`audit_engine.storage.chainloops`, from the column
definitions (:data:`audit_engine.columns.ENTRY_COLUMNS`): the per-row loops of the writer
(:func:`link_into`) and of ``verify()`` are generated from it, with their keyed twins. Here,
:func:`_canonical_text`, the reference for any value of any type, applies the same rule value by
value; a property test holds them equal.

The keyed chain (version "2", docs/integrity.md "Keyed chain") hashes the same text with "2" in
the version slot and stores ``HMAC-SHA256(key, SHA-256(text))``: without the key nobody can
recompute a link, and ``content_digest(row, "2")`` (a proof's leaf) still needs no key. The
versions table (``audit_chain_versions``: first id, version, key id) says which rows are which;
:func:`verify_rows` checks each range with its own loop.
"""

from __future__ import annotations

import hmac
import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from audit_engine.storage import chainloops
from audit_engine.storage.chainloops import CHAIN_VERSION, KEYED_VERSION
from audit_engine.storage.chainloops import CHECK_SOURCE as _CHECK_SOURCE
from audit_engine.storage.chainloops import HEAD_MISMATCH as _HEAD_MISMATCH
from audit_engine.storage.chainloops import LINK_SOURCE as _LINK_SOURCE
from audit_engine.storage.chainloops import NULL as _NULL
from audit_engine.storage.chainloops import SEP as _SEP
from audit_engine.storage.chainloops import sha256 as _sha256
from audit_engine.storage.keys import ChainKeys

__all__ = [
    "CHAIN_VERSION",
    "GENESIS_HASH",
    "KEYED_VERSION",
    "ChainHead",
    "ChainVerifier",
    "VerifyReport",
    "canonical",
    "content_digest",
    "link",
    "link_into",
    "row_hash",
    "verify_rows",
]

GENESIS_HASH = "0" * 64
_LOOP_SOURCES = (_LINK_SOURCE, _CHECK_SOURCE)  # generated in chainloops; tests read them here
# A range of the chain: (first id, chain version, key id or None), from audit_chain_versions.
VersionRange = tuple[int, str, str | None]


def _canonical_text(row: Sequence[Any], version: str = CHAIN_VERSION) -> str:
    # The reference: any value of any type, by the rule of the module doc.
    return _SEP.join([version, *(_NULL if v is None else str(v) for v in row)])


def content_digest(row: Sequence[Any], version: str = CHAIN_VERSION) -> bytes:
    """SHA-256 of the canonical form of ``row`` = (id, event_id, ..., critical, prev_hash)
    under chain ``version``: the row's leaf data in the Merkle tree of checkpoints and proofs.

    For the unkeyed version "1" it is the stored hash (as bytes); a keyed version's link is an
    HMAC over it, so a proof of one entry can be checked without the chain key.
    """
    return _sha256(_canonical_text(row, version).encode("utf-8")).digest()


def canonical(row: Sequence[Any]) -> bytes:
    """The bytes hashed for ``row`` = (id, event_id, ..., critical, prev_hash) as stored."""
    return _canonical_text(row).encode("utf-8")


def row_hash(row: Sequence[Any]) -> str:
    """The hex SHA-256 of :func:`canonical` (``row`` ends with the previous row's hash)."""
    return _sha256(canonical(row)).hexdigest()


def link(
    values: Iterable[Sequence[Any]], tail_id: int, tail_hash: str, key: bytes | None = None
) -> list[tuple[Any, ...]]:
    """Give each row of ``values`` (stored fields without id) its id, prev_hash and hash.

    Ids continue from ``tail_id``; the first row chains from ``tail_hash``. Returns the full rows
    ``(id, *values, prev_hash, hash)`` ready for the insert; keyed (version "2") with ``key``.
    """
    rows = []
    for fields in values:
        full: list[Any] = []
        if key is None:
            tail_id, tail_hash = link_into(full, (fields,), tail_id, tail_hash)
        else:
            tail_id, tail_hash = chainloops.keyed_link_into(
                full, (fields,), tail_id, tail_hash, key
            )
        rows.append(tuple(full))
    return rows


def link_into(
    params: list[Any], values: Iterable[Sequence[Any]], tail_id: int, tail_hash: str
) -> tuple[int, str]:
    """:func:`link`, appending the full rows' values one after another to ``params``.

    Each row of ``values`` is an entry's stored form: the fields of
    :data:`audit_engine.columns.STORED_COLUMNS`. The writer binds them as one multi-row
    INSERT. Returns the new tail (last id, last hash). Unkeyed; see :class:`Linker
    <audit_engine.storage.linker.Linker>` for the writer's choice of version.
    """
    # The writer's per-row Python cost (it shares the GIL with callers): the generated loop.
    result: tuple[int, str] = chainloops.link_into(params, values, tail_id, tail_hash)
    return result


class ChainHead(BaseModel):
    """The newest link of a chain: publish or store it apart to detect truncation later."""

    model_config = ConfigDict(frozen=True)

    id: int
    hash: str


class VerifyReport(BaseModel):
    """The result of :meth:`AuditStore.verify`."""

    model_config = ConfigDict(frozen=True)

    ok: bool
    rows_checked: int
    first_bad_id: int | None = None
    reason: str | None = None
    head: ChainHead | None = None
    # The maintenance chains (purge anchors, cleanup runs) checked before the rows, and what
    # could not be checked (anchors older than schema version 3).
    anchors_checked: int = 0
    cleanup_runs_checked: int = 0
    warnings: tuple[str, ...] = ()
    # Keyed rows (from this id on) whose links were followed but whose hashes could not be
    # checked: no chain key, or not the key they were written with. ``ok`` is then False.
    unchecked_from: int | None = None
    # Against a signed checkpoint log (verify(checkpoints=...)): checkpoints held, purged ones
    # (signature only), and the first that disagrees (its line in the log, and why).
    checkpoints_checked: int = 0
    checkpoints_purged: int = 0
    checkpoint_line: int | None = None
    checkpoint_problem: str | None = None


class ChainVerifier:
    """Checks rows one at a time, in id order, in constant memory.

    ``version`` and ``key`` say how the rows at hand are hashed (set per range of the chain);
    with ``key=None`` on a keyed range, ``links_only`` follows the links without the hashes.
    """

    def __init__(self, start_id: int, start_hash: str) -> None:
        self.prev_id = start_id
        self.prev_hash = start_hash
        self.rows_checked = 0
        self.version = CHAIN_VERSION
        self.key: bytes | None = None
        self.links_only = False

    def check(self, row: Sequence[Any]) -> str | None:
        """Check a stored row ``(id, *fields, prev_hash, hash)``; returns why it is bad, or None."""
        row_id, prev_hash, stored_hash = row[0], row[-2], row[-1]
        if row_id != self.prev_id + 1:
            if row_id <= self.prev_id:
                return f"row {row_id} comes before the chain's starting point (id {self.prev_id})"
            missing = (
                f"row {row_id - 1} is"
                if row_id - 1 == self.prev_id + 1
                else f"rows {self.prev_id + 1}..{row_id - 1} are"
            )
            return f"{missing} missing (deleted from the chain)"
        if prev_hash != self.prev_hash:
            return f"row {row_id} does not link to the row before it (prev_hash mismatch)"
        if not self.links_only:
            body = row[:-1]
            text = _canonical_text(body, self.version)
            # The engine never stores U+0000 or U+001F in a value; one there could make two
            # rows share a canonical form (a NULL and the text "\x00", or a field split in two).
            if text.count(_SEP) != len(body) or text.count(_NULL) != body.count(None):
                return (
                    f"row {row_id} was modified (it holds a control character the engine "
                    "never writes)"
                )
            digest = _sha256(text.encode("utf-8"))
            if self.key is None:
                expected = digest.hexdigest()
            else:
                expected = hmac.digest(self.key, digest.digest(), "sha256").hex()
            if expected != stored_hash:
                return f"row {row_id} was modified (its hash does not match its contents)"
            self.rows_checked += 1
        self.prev_id = row_id
        self.prev_hash = stored_hash
        return None


def _refused(first_id: int, reason: str) -> VerifyReport:
    return VerifyReport(ok=False, rows_checked=0, first_bad_id=first_id, reason=reason)


def _ranges(versions: Iterable[Sequence[Any]]) -> list[VersionRange]:
    # (first_id, version) pairs of older callers are unkeyed ranges.
    found = [(int(v[0]), str(v[1]), v[2] if len(v) > 2 else None) for v in versions]
    return found or [(1, CHAIN_VERSION, None)]


def _unknown_version(ranges: list[VersionRange]) -> VerifyReport | None:
    for first_id, version, _ in ranges:
        if version not in (CHAIN_VERSION, KEYED_VERSION):
            return _refused(
                first_id,
                f"rows from id {first_id} on are hashed with chain version {version!r}, "
                f"which this release cannot check (it knows versions {CHAIN_VERSION} and "
                f"{KEYED_VERSION}): verify with the release that wrote them",
            )
    return None


def _unchecked_reason(first_id: int, key_id: str | None, keys: ChainKeys | None) -> str:
    key_id = key_id or "without a key id"
    if keys is None:
        return (
            f"rows from id {first_id} on are keyed (key {key_id}): they cannot be checked "
            "without the chain key (set AUDIT_TRAIL_CHAIN_KEY_FILE or pass --chain-key-file)"
        )
    return (
        f"rows from id {first_id} on are keyed with key {key_id}, which {keys.path} does not "
        "hold: add that key to the file (old keys stay in it, below the one that writes)"
    )


def verify_rows(
    rows: Iterable[Sequence[Any]],
    start: ChainHead,
    expected_head: ChainHead | None = None,
    versions: Iterable[Sequence[Any]] = (),
    keys: ChainKeys | None = None,
) -> VerifyReport:
    """Verify stored rows ``(id, *fields, prev_hash, hash)`` in id order, in constant memory.

    ``start`` is where the rows must chain from: genesis (id 0), or the last purge anchor.
    ``expected_head``, kept apart from the database, must still be a row of the chain: a chain
    that ends before it was truncated, and one that starts after it (an anchor claims the head
    was purged) cannot prove it. ``versions``: the file's ``(first_id, chain version, key id)``
    ranges (none: every row is :data:`CHAIN_VERSION`); a version this release does not know is
    reported, never taken for tampering. A keyed range is checked with its key from ``keys``;
    without it only its links are followed, and the report is not ok (``unchecked_from``).
    """
    ranges = _ranges(versions)
    unknown = _unknown_version(ranges)
    if unknown is not None:
        return unknown
    if expected_head is not None and 0 < expected_head.id <= start.id:
        # An anchor only claims what it replaced; a published head must still be a row, or
        # a forged anchor equal to the head would hide the deletion of everything.
        return _refused(
            expected_head.id,
            f"row {expected_head.id}, the expected head, is gone (an anchor claims it was "
            "purged): a published head must still be in the table; publish heads more "
            "often than the retention period",
        )
    verifier = ChainVerifier(start.id, start.hash)
    iterator = iter(rows)
    unchecked: tuple[int, str | None] | None = None
    keyed = False
    for index, (first_id, version, key_id) in enumerate(ranges):
        if version == CHAIN_VERSION and keyed:
            # Never back: an unkeyed row after keyed ones is what a forger without the key writes.
            return VerifyReport(
                ok=False,
                rows_checked=verifier.rows_checked,
                first_bad_id=first_id,
                reason=f"the chain switches back to unkeyed at id {first_id} (after keyed rows)",
            )
        keyed = keyed or version == KEYED_VERSION
        part: Iterator[Sequence[Any]] = iterator
        if index + 1 < len(ranges):
            # A good chain's ids are contiguous: the range holds exactly this many rows (a gap
            # is reported by the loop before a later range's row could be taken for this one's).
            count = ranges[index + 1][0] - max(first_id, verifier.prev_id + 1)
            if count <= 0:
                continue  # purged
            part = itertools.islice(iterator, count)
        key = keys.get(key_id) if keys is not None and key_id is not None else None
        verifier.version, verifier.key = version, key
        verifier.links_only = version == KEYED_VERSION and key is None
        if verifier.links_only and unchecked is None:
            unchecked = (max(first_id, verifier.prev_id + 1), key_id)
        bad = _check_all(verifier, part, expected_head)
        if bad is not None:
            row, reason = bad
            return VerifyReport(
                ok=False, rows_checked=verifier.rows_checked, first_bad_id=row[0], reason=reason
            )
    if expected_head is not None and verifier.prev_id < expected_head.id:
        return VerifyReport(
            ok=False,
            rows_checked=verifier.rows_checked,
            first_bad_id=verifier.prev_id + 1,
            reason=(
                f"the chain ends at id {verifier.prev_id}, before the expected head "
                f"{expected_head.id}: rows were deleted from its end"
            ),
        )
    if ranges[-1][0] > verifier.prev_id + 1:
        # A range is recorded in the transaction of its first rows: they were there.
        return VerifyReport(
            ok=False,
            rows_checked=verifier.rows_checked,
            first_bad_id=verifier.prev_id + 1,
            reason=(
                f"the chain ends at id {verifier.prev_id}, but its versions table records rows "
                f"from id {ranges[-1][0]} on: rows were deleted from its end"
            ),
        )
    head = ChainHead(id=verifier.prev_id, hash=verifier.prev_hash) if verifier.prev_id else None
    if unchecked is not None and unchecked[0] <= verifier.prev_id:
        return VerifyReport(
            ok=False,
            rows_checked=verifier.rows_checked,
            reason=_unchecked_reason(*unchecked, keys),
            head=head,
            unchecked_from=unchecked[0],
        )
    if keys is not None and not keyed and verifier.rows_checked:
        # A forger without the key can rewrite a keyed trail only as an unkeyed one (and its
        # versions table with it): with a key given, an unkeyed trail is not taken for good.
        return VerifyReport(
            ok=False,
            rows_checked=verifier.rows_checked,
            head=head,
            reason=(
                "a chain key was given but no row of this trail is keyed: if no writer of this "
                "trail ever had the key, verify it without the key; otherwise its keyed rows were "
                "rewritten unkeyed by someone without the key (verify against the signed "
                "checkpoints to tell)"
            ),
        )
    return VerifyReport(ok=True, rows_checked=verifier.rows_checked, head=head)


def _check_all(
    verifier: ChainVerifier, rows: Iterable[Sequence[Any]], expected_head: ChainHead | None
) -> tuple[Sequence[Any], str] | None:
    """Run ``rows`` through ``verifier`` (its version and key); the first bad row and why.

    verify()'s per-row cost: the generated loops (:mod:`~audit_engine.storage.chainloops`).
    Keyed rows without their key go through the reference, links only.
    """
    head_id = None if expected_head is None else expected_head.id
    head_hash = None if expected_head is None else expected_head.hash
    found: tuple[Sequence[Any], str] | None
    if verifier.links_only:
        found = _check_links(verifier, rows, head_id, head_hash)
    elif verifier.key is not None:
        found = chainloops.keyed_check_all(verifier, rows, head_id, head_hash, verifier.key)
    else:
        found = chainloops.check_all(verifier, rows, head_id, head_hash)
    return found


def _check_links(
    verifier: ChainVerifier, rows: Iterable[Sequence[Any]], head_id: int | None, head_hash: Any
) -> tuple[Sequence[Any], str] | None:
    for row in rows:
        reason = verifier.check(row)
        if reason is None and verifier.prev_id == head_id and verifier.prev_hash != head_hash:
            reason = _HEAD_MISMATCH.format(head_id)
        if reason is not None:
            return row, reason
    return None
