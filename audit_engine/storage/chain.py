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

The form is written once, by :func:`_canonical_source`, from the column definitions
(:data:`audit_engine.columns.ENTRY_COLUMNS`). The per-row loops of the writer
(:func:`link_into`) and of ``verify()`` (:func:`_check_all`) are generated from it when this
module is imported — a text column needs no ``str()``, a NOT NULL one no test for None — so
they run as fast as the hand-inlined code they replaced (no function call per row) and
cannot drift from each other or from the columns. :func:`_canonical_text`, the reference for any
value of any type, applies the same rule value by value; a property test holds them equal.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from audit_engine.columns import ENTRY_COLUMNS, STORED_ROW, Column
from audit_engine.models import dump_details

CHAIN_VERSION = "1"
GENESIS_HASH = "0" * 64
_SEP = "\x1f"
_NULL = "\x00"
_sha256 = hashlib.sha256


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
    return hashlib.sha256(canonical(row)).hexdigest()


# -- the per-row loops, generated from the column definitions ---------------------------------


def _local(column: Column) -> str:
    # The generated code's local variable for a column (prefixed: no clash with its own names).
    return f"v_{column.name}"


def _value_source(column: Column) -> str:
    """One stored value as canonical text: a Python expression over the column's local.

    The reference's rule specialised by the column's definition: a text value needs no str()
    (a value of another type makes join() raise: verify then asks the reference), and only a
    nullable column is tested for None (the others are NOT NULL).
    """
    name = _local(column)
    text = name if column.sql_type == "TEXT" else f"str({name})"
    return f"({text} if {name} is not None else nul)" if column.nullable else text


def _canonical_source(row_id: str, prev_hash: str) -> str:
    """The canonical text of a row (its values in the columns' locals): written once."""
    values = "".join(f"{_value_source(column)}, " for column in ENTRY_COLUMNS)
    return f"sep.join((version, str({row_id}), {values}{prev_hash}))"


_FIELDS = ", ".join(_local(column) for column in ENTRY_COLUMNS)
_WIDTH = len(STORED_ROW)  # a stored row: id, the fields, prev_hash, hash

# Both loops bind what they use per row to locals first (LOAD_FAST, not LOAD_GLOBAL).
_LINK_SOURCE = f"""
def link_into(params, values, tail_id, tail_hash):
    prev = tail_hash
    next_id = tail_id
    add, extend = params.append, params.extend
    sha256, sep, nul, version = _sha256, _SEP, _NULL, CHAIN_VERSION
    for fields in values:
        next_id += 1
        {_FIELDS}, = fields
        digest = sha256({_canonical_source("next_id", "prev")}.encode("utf-8")).hexdigest()
        add(next_id)
        extend(fields)
        add(prev)
        add(digest)
        prev = digest
    return next_id, prev
"""

# A row as the engine stores it is checked inline; one that fails a check, or holds a value of
# another type (join raises), goes through ChainVerifier.check — the reference — which says why.
# The engine never stores U+0000 or U+001F in a value (see ChainVerifier.check): the counts of
# separators and NULL markers must be those of the form.
_CHECK_SOURCE = f"""
def check_all(verifier, rows, head_id, head_hash):
    prev_id, prev_hash = verifier.prev_id, verifier.prev_hash
    sep, nul, sha256, version = _SEP, _NULL, _sha256, CHAIN_VERSION
    good = 0
    try:
        for row in rows:
            if len(row) == {_WIDTH} and row[0] == prev_id + 1 and row[{_WIDTH - 2}] == prev_hash:
                row_id, {_FIELDS}, _, stored_hash = row
                try:
                    text = {_canonical_source("row_id", "prev_hash")}
                except TypeError:
                    text = ""
                if (
                    text.count(sep) == {_WIDTH - 1}
                    and text.count(nul) == row.count(None)
                    and sha256(text.encode("utf-8")).hexdigest() == stored_hash
                ):
                    if row_id == head_id and stored_hash != head_hash:
                        return row, HEAD_MISMATCH.format(row_id)
                    prev_id, prev_hash = row_id, stored_hash
                    good += 1
                    continue
            verifier.prev_id, verifier.prev_hash = prev_id, prev_hash
            verifier.rows_checked += good
            good = 0
            reason = verifier.check(row)
            if reason is not None:
                return row, reason
            prev_id, prev_hash = verifier.prev_id, verifier.prev_hash
            if prev_id == head_id and prev_hash != head_hash:
                return row, HEAD_MISMATCH.format(prev_id)
        return None
    finally:
        verifier.prev_id, verifier.prev_hash = prev_id, prev_hash
        verifier.rows_checked += good
"""

_HEAD_MISMATCH = "row {} differs from the expected head (hash mismatch)"


def _generate(source: str, name: str) -> Callable[..., Any]:
    namespace: dict[str, Any] = {
        "_sha256": _sha256,
        "_SEP": _SEP,
        "_NULL": _NULL,
        "CHAIN_VERSION": CHAIN_VERSION,
        "HEAD_MISMATCH": _HEAD_MISMATCH,
    }
    exec(compile(source, f"<audit_engine.storage.chain.{name}>", "exec"), namespace)
    function: Callable[..., Any] = namespace[name]
    return function


_link_into = _generate(_LINK_SOURCE, "link_into")
_check_rows = _generate(_CHECK_SOURCE, "check_all")


def link(values: Iterable[Sequence[Any]], tail_id: int, tail_hash: str) -> list[tuple[Any, ...]]:
    """Give each row of ``values`` (stored fields without id) its id, prev_hash and hash.

    Ids continue from ``tail_id``; the first row chains from ``tail_hash``. Returns the full rows
    ``(id, *values, prev_hash, hash)`` ready for the insert.
    """
    rows = []
    for fields in values:
        full: list[Any] = []
        tail_id, tail_hash = link_into(full, (fields,), tail_id, tail_hash)
        rows.append(tuple(full))
    return rows


def link_into(
    params: list[Any], values: Iterable[Sequence[Any]], tail_id: int, tail_hash: str
) -> tuple[int, str]:
    """:func:`link`, appending the full rows' values one after another to ``params``.

    Each row of ``values`` is an entry's stored form: the fields of
    :data:`audit_engine.columns.STORED_COLUMNS`. The writer binds them as one multi-row
    INSERT. Returns the new tail (last id, last hash).
    """
    # The writer's per-row Python cost (it shares the GIL with callers): the generated loop.
    result: tuple[int, str] = _link_into(params, values, tail_id, tail_hash)
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


class ChainVerifier:
    """Checks rows one at a time, in id order, in constant memory."""

    def __init__(self, start_id: int, start_hash: str) -> None:
        self.prev_id = start_id
        self.prev_hash = start_hash
        self.rows_checked = 0

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
        body = row[:-1]
        text = _canonical_text(body)
        # The engine never stores U+0000 or U+001F in a value; one there could make two different
        # rows share a canonical form (a NULL and the text "\x00", or a field split in two).
        if text.count(_SEP) != len(body) or text.count(_NULL) != body.count(None):
            return (
                f"row {row_id} was modified (it holds a control character the engine never writes)"
            )
        if _sha256(text.encode("utf-8")).hexdigest() != stored_hash:
            return f"row {row_id} was modified (its hash does not match its contents)"
        self.prev_id = row_id
        self.prev_hash = stored_hash
        self.rows_checked += 1
        return None


def verify_rows(
    rows: Iterable[Sequence[Any]],
    start: ChainHead,
    expected_head: ChainHead | None = None,
    versions: Iterable[tuple[int, str]] = (),
) -> VerifyReport:
    """Verify stored rows ``(id, *fields, prev_hash, hash)`` in id order, in constant memory.

    ``start`` is where the rows must chain from: genesis (id 0), or the last purge anchor.
    ``expected_head``, kept apart from the database, must still be a row of the chain: a chain
    that ends before it was truncated, and one that starts after it (an anchor claims the head
    was purged) cannot prove it. ``versions``: the file's ``(first_id, chain version)`` ranges
    (none: every row is :data:`CHAIN_VERSION`); a version this release does not know is
    reported, never taken for tampering.
    """
    for first_id, version in versions:
        if version != CHAIN_VERSION:
            return VerifyReport(
                ok=False,
                rows_checked=0,
                first_bad_id=first_id,
                reason=(
                    f"rows from id {first_id} on are hashed with chain version {version!r}, "
                    f"which this release cannot check (it knows version {CHAIN_VERSION}): "
                    "verify with the release that wrote them"
                ),
            )
    if expected_head is not None and 0 < expected_head.id <= start.id:
        # An anchor only claims what it replaced; a published head must still be a row, or
        # a forged anchor equal to the head would hide the deletion of everything.
        return VerifyReport(
            ok=False,
            rows_checked=0,
            first_bad_id=expected_head.id,
            reason=(
                f"row {expected_head.id}, the expected head, is gone (an anchor claims it was "
                "purged): a published head must still be in the table; publish heads more "
                "often than the retention period"
            ),
        )
    verifier = ChainVerifier(start.id, start.hash)
    bad = _check_all(verifier, rows, expected_head)
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
    head = ChainHead(id=verifier.prev_id, hash=verifier.prev_hash) if verifier.prev_id else None
    return VerifyReport(ok=True, rows_checked=verifier.rows_checked, head=head)


def _check_all(
    verifier: ChainVerifier, rows: Iterable[Sequence[Any]], expected_head: ChainHead | None
) -> tuple[Sequence[Any], str] | None:
    """Run ``rows`` through ``verifier``; the first bad row and why, or None.

    verify()'s per-row cost: the generated loop (see the module doc and ``_CHECK_SOURCE``).
    """
    if expected_head is None:
        found: tuple[Sequence[Any], str] | None = _check_rows(verifier, rows, None, None)
    else:
        found = _check_rows(verifier, rows, expected_head.id, expected_head.hash)
    return found


def verify_exported_lines(lines: Iterable[str], start: ChainHead | None = None) -> VerifyReport:
    """Verify a JSON-lines export (``AuditStore.export(fmt="jsonl")``) of a contiguous range.

    Without ``start``, the first line's ``prev_hash`` is trusted as the starting point; pass the
    anchor or the last row before the range to prove the link into it as well.
    """

    def rows() -> Iterable[tuple[Any, ...]]:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield _export_row(json.loads(line))
            except (ValueError, KeyError, TypeError) as exc:
                raise _BadLine(f"line {number} is not an export line ({exc!r})") from None

    iterator = iter(rows())
    try:
        first = next(iterator, None)
        if first is None:
            return VerifyReport(ok=True, rows_checked=0)
        if start is None:
            start = ChainHead(id=first[0] - 1, hash=first[-2])
        return verify_rows(_chain_first(first, iterator), start)
    except _BadLine as bad:
        return VerifyReport(ok=False, rows_checked=0, reason=str(bad))


class _BadLine(Exception):
    """A line of an export that is not JSON or lacks a field."""


# How an export line's values go back to their stored form, by the column's rendering.
_STORED_FROM_EXPORT: dict[str, Callable[[Any], Any]] = {
    "text": lambda value: value,
    "json": lambda value: dump_details(value) if value else "{}",
    "flag": lambda value: 1 if value else 0,
}
_EXPORT_FIELDS = tuple(
    (column.name, _STORED_FROM_EXPORT[column.render]) for column in ENTRY_COLUMNS
)


def _export_row(record: dict[str, Any]) -> tuple[Any, ...]:
    return (
        record["id"],
        *(stored(record[name]) for name, stored in _EXPORT_FIELDS),
        record["prev_hash"],
        record["hash"],
    )


def _chain_first(first: tuple[Any, ...], rest: Iterable[tuple[Any, ...]]) -> Iterable[Any]:
    yield first
    yield from rest
