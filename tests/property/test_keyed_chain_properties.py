"""The keyed chain's generated loops agree with the reference: HMAC-SHA256(key, content_digest).

``chain.link(..., key=...)`` (the writer's generated keyed loop) must store, for every row, the
HMAC of the row's content digest under version "2" — computed here by the documented rule, value
by value — and verify's keyed loop must accept exactly those rows, and refuse them under another
key or unkeyed.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import rows_of

from audit_engine import AuditEntry, Operation, Outcome
from audit_engine.storage import chain

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=12)
_name = st.text(alphabet=st.characters(categories=("L", "N", "P", "S")), min_size=1, max_size=12)
_entries = st.lists(
    st.fixed_dictionaries(
        {
            "timestamp": st.datetimes(
                min_value=datetime(2000, 1, 1),
                max_value=datetime(2030, 1, 1),
                timezones=st.just(UTC),
            ),
            "actor": st.none() | _name,
            "action": _name,
            "operation": st.sampled_from(Operation),
            "outcome": st.sampled_from(Outcome),
            "resource_id": st.none() | _text,
            "details": st.dictionaries(_text, st.none() | st.integers() | _text, max_size=3),
            "critical": st.booleans(),
        }
    ),
    min_size=1,
    max_size=20,
).map(lambda rows: [AuditEntry(event_id=f"e{n}", **fields) for n, fields in enumerate(rows)])
_keys = st.binary(min_size=32, max_size=32)
_hex = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)


@SETTINGS
@given(entries=_entries, key=_keys, tail_id=st.integers(0, 10**9), tail_hash=_hex)
def test_the_keyed_loop_stores_the_hmac_of_the_content_digest(
    entries: list[AuditEntry], key: bytes, tail_id: int, tail_hash: str
) -> None:
    linked = chain.link(rows_of(entries), tail_id, tail_hash, key=key)
    prev = tail_hash
    for offset, row in enumerate(linked):
        assert row[0] == tail_id + offset + 1
        assert row[-2] == prev
        digest = chain.content_digest(row[:-1], chain.KEYED_VERSION)
        assert row[-1] == hmac.new(key, digest, "sha256").hexdigest()
        prev = row[-1]


@SETTINGS
@given(entries=_entries, key=_keys, other=_keys)
def test_keyed_verify_accepts_its_key_only(
    entries: list[AuditEntry], key: bytes, other: bytes
) -> None:
    linked: list[Any] = chain.link(rows_of(entries), 0, chain.GENESIS_HASH, key=key)
    genesis = chain.ChainHead(id=0, hash=chain.GENESIS_HASH)
    versions = [(1, chain.KEYED_VERSION, "k")]

    class Keys:  # the part of ChainKeys verify uses
        path = "keys"

        def __init__(self, secret: bytes) -> None:
            self.secret = secret

        def get(self, key_id: str) -> bytes | None:
            return self.secret if key_id == "k" else None

    good = chain.verify_rows(linked, genesis, None, versions, Keys(key))  # type: ignore[arg-type]
    assert (good.ok, good.rows_checked) == (True, len(entries))
    if other != key:
        bad = chain.verify_rows(linked, genesis, None, versions, Keys(other))  # type: ignore[arg-type]
        assert (bad.ok, bad.first_bad_id) == (False, 1)
    unkeyed = chain.verify_rows(linked, genesis)
    assert (unkeyed.ok, unkeyed.first_bad_id) == (False, 1)
