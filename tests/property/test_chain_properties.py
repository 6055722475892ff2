"""Properties of the hash chain on real files.

* Any single-row tampering — one column of one row changed, one row deleted, one forged row
  inserted, or two rows' contents swapped — makes ``verify(expected_head=head)`` fail; without the
  head only deleting the newest row (a truncation) can pass.
* A purge at any cutoff deletes exactly the prefix before the first row at or after the cutoff
  and leaves a chain that verifies, against the old head too, and keeps taking new rows.
* The per-row loops generated from the column definitions (``link_into``, verify's check) agree
  with the reference canonical form (``chain.row_hash``) on any stored values, of any type.
"""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from support import rows_of
from tamper import unguarded

from audit_engine import AuditEntry, AuditStore, Operation, Outcome
from audit_engine.columns import ENTRY_COLUMNS, STORED_COLUMNS, STORED_ROW, Column
from audit_engine.models import utcnow
from audit_engine.storage import chain
from audit_engine.storage import sqlite as store

COLUMNS = STORED_ROW
NULLABLE = {column.name for column in ENTRY_COLUMNS if column.nullable} | {"prev_hash", "hash"}
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# Stored text never holds control characters (the model rejects them); a tamperer's may.
_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=12)
_name = st.text(alphabet=st.characters(categories=("L", "N", "P", "S")), min_size=1, max_size=12)
_json: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**12), max_value=10**12)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_text, children, max_size=3),
    max_leaves=6,
)
_timestamps = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
)
_fields = st.fixed_dictionaries(
    {
        "timestamp": _timestamps,
        "actor": st.none() | _name,
        "action": _name,
        "operation": st.sampled_from(Operation),
        "outcome": st.sampled_from(Outcome),
        "resource_type": st.none() | _name,
        "resource_id": st.none() | _text,
        "correlation_id": st.none() | _text,
        "details": st.dictionaries(_text, _json, max_size=4),
        "critical": st.booleans(),
    }
)
_entries = st.lists(_fields, min_size=2, max_size=30).map(
    lambda rows: [AuditEntry(event_id=f"e{n}", **fields) for n, fields in enumerate(rows)]
)
_hex = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
# What an attacker may write: any text, including the canonical form's NULL ("\x00") and its
# separator ("\x1f"), which could otherwise make a changed row hash like the original.
_forged_text = st.text(max_size=12) | st.sampled_from(["\x00", "\x1f", "a\x1fb", "\x00\x1f"])


@contextlib.contextmanager
def _database(entries: list[AuditEntry]) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.db"
        conn = store.open_connection(path)
        try:
            store.write_batch(conn, rows_of(entries))
        finally:
            conn.close()
        yield path


def _draw_new_value(data: st.DataObject, column: str, old: Any, count: int) -> Any:
    """A value for ``column`` other than ``old``."""
    if column == "id":  # an id no other row has
        return data.draw(
            st.integers(min_value=-5, max_value=0) | st.integers(count + 1, count + 5), label="id"
        )
    if column == "critical":
        value = data.draw(st.integers(min_value=-2, max_value=3), label="critical")
    elif column in ("prev_hash", "hash"):
        value = data.draw(st.none() | _hex, label=column)
    else:
        values = st.none() | _forged_text if column in NULLABLE else _forged_text
        value = data.draw(values, label=column)
    assume(value != old)
    return value


def _tamper(conn: sqlite3.Connection, kind: str, data: st.DataObject, count: int) -> bool:
    """Apply one tampering of ``kind``; returns whether it removed the newest row only."""
    if kind == "update":
        row_id = data.draw(st.integers(1, count), label="row")
        column = data.draw(st.sampled_from(COLUMNS), label="column")
        old = conn.execute(f"SELECT {column} FROM audit_entries WHERE id = ?", (row_id,)).fetchone()
        value = _draw_new_value(data, column, old[0], count)
        try:
            conn.execute(f"UPDATE audit_entries SET {column} = ? WHERE id = ?", (value, row_id))
        except sqlite3.IntegrityError:  # a NOT NULL or UNIQUE column: not a possible state
            assume(False)
        return False
    if kind == "delete":
        row_id = data.draw(st.integers(1, count), label="row")
        conn.execute("DELETE FROM audit_entries WHERE id = ?", (row_id,))
        return row_id == count
    if kind == "insert":
        row_id = data.draw(
            st.integers(min_value=-3, max_value=0) | st.integers(count + 1, count + 3),
            label="id",
        )
        tail = conn.execute("SELECT hash FROM audit_entries WHERE id = ?", (count,)).fetchone()[0]
        prev_hash = data.draw(st.sampled_from([tail, "0" * 64]) | _hex, label="prev_hash")
        entry = data.draw(_fields, label="forged")
        values = store.entry_row(AuditEntry(event_id="forged", **entry))
        # The forged hash is made up: a correctly hashed row after the end is an append.
        conn.execute(
            f"INSERT INTO audit_entries (id, {', '.join(COLUMNS[1:])}) "
            f"VALUES ({', '.join('?' * len(COLUMNS))})",
            (row_id, *values, prev_hash, data.draw(_hex, label="hash")),
        )
        return False
    a = data.draw(st.integers(1, count - 1), label="a")
    b = data.draw(st.integers(a + 1, count), label="b")
    columns = COLUMNS[1:] if data.draw(st.booleans(), label="with hashes") else STORED_COLUMNS
    select = f"SELECT {', '.join(columns)} FROM audit_entries WHERE id = ?"
    values_a = conn.execute(select, (a,)).fetchone()
    values_b = conn.execute(select, (b,)).fetchone()
    assignments = ", ".join(f"{c} = ?" for c in columns)
    conn.execute("UPDATE audit_entries SET event_id = 'parked' WHERE id = ?", (a,))
    conn.execute(f"UPDATE audit_entries SET {assignments} WHERE id = ?", (*values_a, b))
    conn.execute(f"UPDATE audit_entries SET {assignments} WHERE id = ?", (*values_b, a))
    return False


@pytest.mark.parametrize("kind", ["update", "delete", "insert", "swap"])
@settings(SETTINGS, max_examples=12)
@given(entries=_entries, data=st.data())
def test_any_single_row_tampering_is_detected(
    kind: str, entries: list[AuditEntry], data: Any
) -> None:
    with _database(entries) as path:
        with AuditStore(path) as audit:
            head = audit.head()
            assert head is not None
            assert audit.verify(expected_head=head).ok is True

        with contextlib.closing(sqlite3.connect(path)) as conn, unguarded(conn):
            truncated = _tamper(conn, kind, data, len(entries))

        with AuditStore(path) as audit:
            against_head = audit.verify(expected_head=head)
            alone = audit.verify()

    assert against_head.ok is False, kind
    assert against_head.reason
    assert against_head.first_bad_id is not None
    assert alone.ok is truncated, kind


@SETTINGS
@given(entries=_entries, data=st.data())
def test_purge_at_any_cutoff_leaves_a_verifiable_chain(
    entries: list[AuditEntry], data: Any
) -> None:
    if data.draw(st.booleans(), label="in time order"):  # the usual case: commit order
        times = sorted(e.timestamp for e in entries)
        entries = [
            e.model_copy(update={"timestamp": t}) for e, t in zip(entries, times, strict=True)
        ]
    # At a row's timestamp (that row stays), just after it, or anywhere.
    boundaries = [
        e.timestamp + d for e in entries for d in (timedelta(0), timedelta(microseconds=1))
    ]
    # (A permutation's head: sampled_from would mostly pick the first row's, deleting nothing.)
    any_boundary = st.permutations(boundaries).map(lambda shuffled: shuffled[0])
    # A purge deletes the past only (a future cutoff is refused, see test_retention).
    cutoff = min(data.draw(any_boundary | _timestamps, label="cutoff"), utcnow())
    batch_size = data.draw(st.integers(min_value=1, max_value=8), label="batch_size")
    deleted = next((n for n, e in enumerate(entries) if e.timestamp >= cutoff), len(entries))

    with _database(entries) as path, AuditStore(path) as audit:
        head = audit.head()
        report = audit.purge(cutoff, batch_size=batch_size)
        verified = audit.verify(min_retention=timedelta(0))  # any cutoff, however recent
        against_head = audit.verify(expected_head=head, min_retention=timedelta(0))
        head_after = audit.head()
        event(
            "purged nothing"
            if deleted == 0
            else "purged everything"
            if deleted == len(entries)
            else "purged a prefix"
        )

        conn = store.open_connection(path)
        try:
            later = entries[0].timestamp + timedelta(days=1)
            store.write_batch(
                conn, rows_of([AuditEntry(event_id="later", action="x", timestamp=later)])
            )
        finally:
            conn.close()
        after_append = audit.verify(min_retention=timedelta(0))

    assert report.rows_deleted == deleted
    assert report.batches == -(-deleted // batch_size)
    assert verified.ok is True
    assert verified.rows_checked == len(entries) - deleted
    # A published head must still be a row: after a full purge the anchor only claims it.
    assert against_head.ok is (deleted < len(entries))
    assert head is not None
    assert head.id == len(entries)
    assert head_after == head  # the newest row, or after a full purge the anchor with its hash
    assert after_append.ok is True
    assert after_append.rows_checked == len(entries) - deleted + 1


# Stored values of each column's type (text without control characters, as the engine stores).
_stored_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")))


def _typed(column: Column) -> st.SearchStrategy[Any]:
    values = _stored_text if column.sql_type == "TEXT" else st.integers(-(10**18), 10**18)
    return st.none() | values if column.nullable else values


def _any_type(column: Column) -> st.SearchStrategy[Any]:
    # Another tool may store any type in any column (SQLite does not enforce them).
    others = st.integers(-(10**30), 10**30) | st.floats(allow_nan=False) | _stored_text | st.none()
    return _typed(column) | others


_typed_rows = st.lists(st.tuples(*map(_typed, ENTRY_COLUMNS)), max_size=8)
_any_rows = st.lists(st.tuples(*map(_any_type, ENTRY_COLUMNS)), min_size=1, max_size=8)


@SETTINGS
@given(rows=_typed_rows, tail_id=st.integers(0, 10**12), tail_hash=_hex)
def test_the_generated_link_hashes_the_reference_canonical_form(
    rows: list[tuple[Any, ...]], tail_id: int, tail_hash: str
) -> None:
    linked = chain.link(rows, tail_id, tail_hash)

    assert [row[1:-2] for row in linked] == rows
    for row in linked:
        assert row[-1] == chain.row_hash(row[:-1])
    start = chain.ChainHead(id=tail_id, hash=tail_hash)
    assert chain.verify_rows(linked, start).rows_checked == len(rows)


@SETTINGS
@given(rows=_any_rows, data=st.data())
def test_verify_accepts_a_chain_hashed_by_the_reference_whatever_its_types(
    rows: list[tuple[Any, ...]], data: st.DataObject
) -> None:
    stored = []
    prev = chain.GENESIS_HASH
    for row_id, fields in enumerate(rows, start=1):
        body = (row_id, *fields, prev)
        prev = chain.row_hash(body)
        stored.append((*body, prev))
    genesis = chain.ChainHead(id=0, hash=chain.GENESIS_HASH)
    head_id = data.draw(st.integers(1, len(stored)), label="expected head")

    good = chain.verify_rows(
        stored, genesis, chain.ChainHead(id=head_id, hash=stored[head_id - 1][-1])
    )
    bad = chain.verify_rows(stored, genesis, chain.ChainHead(id=head_id, hash="ab" * 32))

    assert good.ok is True
    assert good.rows_checked == len(stored)
    assert bad.ok is False
    assert bad.first_bad_id == head_id
