"""The chain's per-row loops, generated from the column definitions when imported.

The canonical form of a row (see :mod:`audit_engine.storage.chain`) is written once, by
:func:`_canonical_source`, from :data:`audit_engine.columns.ENTRY_COLUMNS`: a text column needs
no ``str()``, a NOT NULL one no test for None. Four loops are generated from one template each,
so none can drift from the others or from the columns:

- ``link_into`` / ``keyed_link_into``: the writer's, giving a batch its ids, links and hashes;
- ``check_all`` / ``keyed_check_all``: verify()'s.

The unkeyed ones (chain version "1") store ``sha256(text)`` as hex; the keyed twins (version
"2") ``HMAC-SHA256(key, sha256(text))`` as hex, ``text`` holding "2" in the version slot. They
run as fast as hand-inlined code (no function call per row): the engine's per-row Python cost,
shared with the application's threads through the GIL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from audit_engine.columns import ENTRY_COLUMNS, STORED_ROW, Column

__all__ = [
    "CHAIN_VERSION",
    "CHECK_SOURCE",
    "HEAD_MISMATCH",
    "KEYED_CHECK_SOURCE",
    "KEYED_LINK_SOURCE",
    "KEYED_VERSION",
    "LINK_SOURCE",
    "NULL",
    "SEP",
    "check_all",
    "keyed_check_all",
    "keyed_link_into",
    "link_into",
    "sha256",
]

CHAIN_VERSION = "1"  # unkeyed: the stored hash is SHA-256 of the canonical text
KEYED_VERSION = "2"  # keyed: HMAC-SHA256(chain key, SHA-256 of the canonical text)
SEP = "\x1f"
NULL = "\x00"
sha256 = hashlib.sha256
HEAD_MISMATCH = "row {} differs from the expected head (hash mismatch)"
_BLOCK = 64  # SHA-256's block size in bytes


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
# The stored hash of a canonical text `text`, unkeyed and keyed.
_DIGESTS = {
    CHAIN_VERSION: 'sha256({text}.encode("utf-8")).hexdigest()',
    # HMAC-SHA256 by its definition (RFC 2104) over the key's pads, made once per call: two
    # hashes of short byte strings per row, twice as fast as hmac.digest() (which pads the key
    # for every row).
    KEYED_VERSION: 'sha256(opad + sha256(ipad + sha256({text}.encode("utf-8")).digest()).digest())'
    ".hexdigest()",
}

# Both loops bind what they use per row to locals first (LOAD_FAST, not LOAD_GLOBAL).
_LINK_TEMPLATE = """
def {name}(params, values, tail_id, tail_hash{key}):
    prev = tail_hash
    next_id = tail_id
    add, extend = params.append, params.extend
    sha256, sep, nul, version, (ipad, opad) = _sha256, _SEP, _NULL, {version!r}, _pads(key)
    for fields in values:
        next_id += 1
        {fields}, = fields
        digest = {digest}
        add(next_id)
        extend(fields)
        add(prev)
        add(digest)
        prev = digest
    return next_id, prev
"""

# A row as the engine stores it is checked inline; one that fails a check, or holds a value of
# another type (join raises), goes through the verifier's check() — the reference — which says
# why. The engine never stores U+0000 or U+001F in a value (see chain.ChainVerifier.check): the
# counts of separators and NULL markers must be those of the form.
_CHECK_TEMPLATE = """
def {name}(verifier, rows, head_id, head_hash{key}):
    prev_id, prev_hash = verifier.prev_id, verifier.prev_hash
    sep, nul, sha256, version, (ipad, opad) = _SEP, _NULL, _sha256, {version!r}, _pads(key)
    good = 0
    try:
        for row in rows:
            if len(row) == {width} and row[0] == prev_id + 1 and row[{prev_at}] == prev_hash:
                row_id, {fields}, _, stored_hash = row
                try:
                    text = {text}
                except TypeError:
                    text = ""
                if (
                    text.count(sep) == {separators}
                    and text.count(nul) == row.count(None)
                    and {checked} == stored_hash
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


def _pads(key: bytes | None) -> tuple[bytes, bytes]:
    """HMAC-SHA256's inner and outer pads of ``key`` (RFC 2104); empty for the unkeyed loops."""
    if key is None:
        return b"", b""
    if len(key) > _BLOCK:
        key = sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def _link_source(name: str, version: str) -> str:
    return _LINK_TEMPLATE.format(
        name=name,
        key=", key" if version == KEYED_VERSION else ", key=None",
        version=version,
        fields=_FIELDS,
        digest=_DIGESTS[version].format(text=_canonical_source("next_id", "prev")),
    )


def _check_source(name: str, version: str) -> str:
    return _CHECK_TEMPLATE.format(
        name=name,
        key=", key" if version == KEYED_VERSION else ", key=None",
        version=version,
        width=_WIDTH,
        prev_at=_WIDTH - 2,
        separators=_WIDTH - 1,
        fields=_FIELDS,
        text=_canonical_source("row_id", "prev_hash"),
        checked=_DIGESTS[version].format(text="text"),
    )


LINK_SOURCE = _link_source("link_into", CHAIN_VERSION)
KEYED_LINK_SOURCE = _link_source("keyed_link_into", KEYED_VERSION)
CHECK_SOURCE = _check_source("check_all", CHAIN_VERSION)
KEYED_CHECK_SOURCE = _check_source("keyed_check_all", KEYED_VERSION)


def _generate(source: str, name: str) -> Callable[..., Any]:
    namespace: dict[str, Any] = {
        "_sha256": sha256,
        "_pads": _pads,
        "_SEP": SEP,
        "_NULL": NULL,
        "HEAD_MISMATCH": HEAD_MISMATCH,
    }
    exec(compile(source, f"<audit_engine.storage.chainloops.{name}>", "exec"), namespace)
    function: Callable[..., Any] = namespace[name]
    return function


link_into = _generate(LINK_SOURCE, "link_into")
keyed_link_into = _generate(KEYED_LINK_SOURCE, "keyed_link_into")
check_all = _generate(CHECK_SOURCE, "check_all")
keyed_check_all = _generate(KEYED_CHECK_SOURCE, "keyed_check_all")
