"""Verifying a JSON-lines export offline: the rows of a contiguous range, back in stored form.

An export line (``AuditStore.export(fmt="jsonl")``) holds the row's ``id``, every stored field
(``details`` as an object, ``critical`` as a boolean), ``prev_hash`` and ``hash``; it does not say
which chain version hashed the row. With chain keys, each row is recognised by its hash: an
unkeyed (version 1) row's hash is the SHA-256 of its canonical form, a keyed (version 2) row's an
HMAC over it under one of the keys — and an unkeyed row after keyed ones is refused, as in
``verify()``. Without keys every row must be unkeyed: a keyed row cannot be told from a forged one.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from audit_engine.columns import ENTRY_COLUMNS
from audit_engine.models import dump_details
from audit_engine.storage.chain import (
    CHAIN_VERSION,
    KEYED_VERSION,
    ChainHead,
    ChainVerifier,
    VerifyReport,
    content_digest,
    verify_rows,
)
from audit_engine.storage.keys import ChainKeys

__all__ = ["export_row", "verify_exported_lines"]


def verify_exported_lines(
    lines: Iterable[str], start: ChainHead | None = None, *, keys: ChainKeys | None = None
) -> VerifyReport:
    """Verify a JSON-lines export (``AuditStore.export(fmt="jsonl")``) of a contiguous range.

    Without ``start``, the first line's ``prev_hash`` is trusted as the starting point; pass the
    anchor or the last row before the range to prove the link into it as well. ``keys``
    (:func:`audit_engine.storage.keys.load_chain_keys`) checks keyed rows; without them a keyed
    row reads as modified, and the reason says to verify with the chain key.
    """
    iterator = _rows(lines)
    try:
        first = next(iterator, None)
        if first is None:
            return VerifyReport(ok=True, rows_checked=0)
        if start is None:
            start = ChainHead(id=first[0] - 1, hash=first[-2])
        if keys is not None:
            return _verify_keyed(_chain_first(first, iterator), start, keys)
        report = verify_rows(_chain_first(first, iterator), start)
    except _BadLine as bad:
        return VerifyReport(ok=False, rows_checked=0, reason=str(bad))
    if report.reason is not None and report.reason.endswith(_MISMATCH):
        hint = "; if the trail is keyed, verify the export with its chain key"
        return report.model_copy(update={"reason": report.reason + hint})
    return report


_MISMATCH = "(its hash does not match its contents)"


def _verify_keyed(
    rows: Iterable[tuple[Any, ...]], start: ChainHead, keys: ChainKeys
) -> VerifyReport:
    # Row by row, since the versions are not in the export: each row's hash says which it is
    # (an unkeyed row's is its plain digest; any other is checked as keyed).
    verifier = ChainVerifier(start.id, start.hash)
    keyed = False
    for row in rows:
        if content_digest(row[:-1]).hex() == row[-1]:
            if keyed:
                return VerifyReport(
                    ok=False,
                    rows_checked=verifier.rows_checked,
                    first_bad_id=row[0],
                    reason=f"the chain switches back to unkeyed at id {row[0]} (after keyed rows)",
                )
            verifier.version, verifier.key = CHAIN_VERSION, None
        else:
            keyed = True
            verifier.version, verifier.key = KEYED_VERSION, _key_of(row, keys)
        reason = verifier.check(row)
        if reason is not None:
            return VerifyReport(
                ok=False, rows_checked=verifier.rows_checked, first_bad_id=row[0], reason=reason
            )
    head = ChainHead(id=verifier.prev_id, hash=verifier.prev_hash) if verifier.prev_id else None
    return VerifyReport(ok=True, rows_checked=verifier.rows_checked, head=head)


def _key_of(row: tuple[Any, ...], keys: ChainKeys) -> bytes | None:
    """The key among ``keys`` whose HMAC is the row's hash (None: none of them made it)."""
    digest = content_digest(row[:-1], KEYED_VERSION)
    for key_id in keys.ids:
        key = keys.get(key_id)
        if key is not None and hmac.compare_digest(
            hmac.digest(key, digest, "sha256").hex(), str(row[-1])
        ):
            return key
    return None


class _BadLine(Exception):
    """A line of an export that is not JSON or lacks a field."""


def _rows(lines: Iterable[str]) -> Iterator[tuple[Any, ...]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield export_row(json.loads(line))
        except (ValueError, KeyError, TypeError) as exc:
            raise _BadLine(f"line {number} is not an export line ({exc!r})") from None


# How an export line's values go back to their stored form, by the column's rendering.
_STORED_FROM_EXPORT: dict[str, Callable[[Any], Any]] = {
    "text": lambda value: value,
    "json": lambda value: dump_details(value) if value else "{}",
    "flag": lambda value: 1 if value else 0,
}
_EXPORT_FIELDS = tuple(
    (column.name, _STORED_FROM_EXPORT[column.render]) for column in ENTRY_COLUMNS
)


def export_row(record: dict[str, Any]) -> tuple[Any, ...]:
    """An export line's record back in stored form: ``(id, *fields, prev_hash, hash)``."""
    return (
        record["id"],
        *(stored(record[name]) for name, stored in _EXPORT_FIELDS),
        record["prev_hash"],
        record["hash"],
    )


def _chain_first(first: tuple[Any, ...], rest: Iterable[tuple[Any, ...]]) -> Iterable[Any]:
    yield first
    yield from rest
