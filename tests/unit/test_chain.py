"""The hash chain on its own: canonical form, linking, the verifier and its messages, exports.

No database here: rows are tuples shaped like the stored rows ``(id, *fields, prev_hash, hash)``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from support import rows_of

from audit_engine.columns import STORED_ROW
from audit_engine.storage.chain import (
    CHAIN_VERSION,
    GENESIS_HASH,
    ChainHead,
    ChainVerifier,
    VerifyReport,
    canonical,
    link,
    row_hash,
    verify_rows,
)
from audit_engine.storage.exported import verify_exported_lines

# A stored row's columns: id, the stored fields (in canonical order), prev_hash, hash.
NAMES = STORED_ROW
OTHER_HASH = "ab" * 32


def _fields(number: int, **changes: Any) -> tuple[Any, ...]:
    values: dict[str, Any] = {
        "event_id": f"evt-{number}",
        "timestamp": f"2024-05-01T12:00:{number:02d}.000000Z",
        "actor": "alice" if number % 2 else None,
        "action": "doc.save",
        "operation": "update",
        "outcome": "success",
        "resource_type": "doc",
        "resource_id": str(number),
        "correlation_id": None,
        "details": f'{{"n":{number}}}',
        "critical": int(number % 3 == 0),
    }
    values.update(changes)
    return tuple(values.values())


def _chain(count: int, tail_id: int = 0, tail_hash: str = GENESIS_HASH) -> list[tuple[Any, ...]]:
    return link((_fields(tail_id + n) for n in range(1, count + 1)), tail_id, tail_hash)


def _replace(row: tuple[Any, ...], name: str, value: Any) -> tuple[Any, ...]:
    values = list(row)
    values[NAMES.index(name)] = value
    return tuple(values)


# -- canonical form -----------------------------------------------------------------------------


def test_chain_constants() -> None:
    assert CHAIN_VERSION == "1"
    assert GENESIS_HASH == "0" * 64


def test_canonical_form_matches_the_documented_layout() -> None:
    row = (
        1,
        "evt-1",
        "2024-05-01T12:00:00.000000Z",
        None,
        "doc.save",
        "update",
        "success",
        "doc",
        "7",
        None,
        '{"a":1}',
        0,
        GENESIS_HASH,
    )

    expected = (
        b"1\x1f1\x1fevt-1\x1f2024-05-01T12:00:00.000000Z\x1f\x00\x1fdoc.save\x1fupdate\x1f"
        b'success\x1fdoc\x1f7\x1f\x00\x1f{"a":1}\x1f0\x1f' + b"0" * 64
    )
    assert canonical(row) == expected
    assert row_hash(row) == hashlib.sha256(expected).hexdigest()
    # Pinned: a change to the canonical form must bump CHAIN_VERSION, not silently move hashes.
    assert row_hash(row) == "653b5b29cc0c422a7ed8e90b15f55e1d39f69a8ef8045fae39fabea1ae224b06"


def test_canonical_form_is_utf8_and_writes_integers_in_decimal() -> None:
    row = (
        2,
        "evt-2",
        "2024-05-01T12:00:01.000000Z",
        "zoë",
        "doc.save",
        "update",
        "success",
        "doc",
        "7",
        "req-1",
        '{"a":1}',
        1,
        OTHER_HASH,
    )

    text = "\x1f".join(["1", "2", *row[1:11], "1", OTHER_HASH])
    assert canonical(row) == text.encode("utf-8")
    assert "zoë".encode() in canonical(row)
    assert row_hash(row) == "0371471df7f13dc39023833abc83521d863fa08401f5617b7a3b7c4f2925c6c7"


def test_row_hash_depends_on_every_value() -> None:
    row = (*(_chain(1)[0][:-1]),)
    base = row_hash(row)

    for index in range(len(row)):
        changed = list(row)
        changed[index] = "x" if row[index] != "x" else "y"
        assert row_hash(changed) != base, NAMES[index]


# -- link ---------------------------------------------------------------------------------------


def test_link_numbers_and_chains_rows_from_the_tail() -> None:
    fields = [_fields(8), _fields(9), _fields(10)]

    rows = link(fields, 7, OTHER_HASH)

    assert [row[0] for row in rows] == [8, 9, 10]
    assert [row[1:-2] for row in rows] == fields
    assert [row[-2] for row in rows] == [OTHER_HASH, rows[0][-1], rows[1][-1]]
    for row in rows:
        assert row[-1] == row_hash(row[:-1])
        assert len(row[-1]) == 64
    assert len({row[-1] for row in rows}) == 3


def test_link_of_nothing_is_nothing() -> None:
    assert link([], 5, OTHER_HASH) == []


def test_link_from_genesis() -> None:
    rows = _chain(2)

    assert rows[0][0] == 1
    assert rows[0][-2] == GENESIS_HASH


# -- ChainVerifier ------------------------------------------------------------------------------


def test_verifier_accepts_a_valid_chain() -> None:
    rows = _chain(4)
    verifier = ChainVerifier(0, GENESIS_HASH)

    assert [verifier.check(row) for row in rows] == [None] * 4
    assert verifier.rows_checked == 4
    assert (verifier.prev_id, verifier.prev_hash) == (4, rows[-1][-1])


def _first_problem(rows: list[tuple[Any, ...]], start: ChainHead | None = None) -> str | None:
    start = start or ChainHead(id=0, hash=GENESIS_HASH)
    verifier = ChainVerifier(start.id, start.hash)
    for row in rows:
        reason = verifier.check(row)
        if reason is not None:
            return reason
    return None


def test_verifier_reports_a_single_missing_row() -> None:
    rows = _chain(5)
    del rows[2]

    assert _first_problem(rows) == "row 3 is missing (deleted from the chain)"


def test_verifier_reports_a_range_of_missing_rows() -> None:
    rows = _chain(6)
    del rows[1:4]

    assert _first_problem(rows) == "rows 2..4 are missing (deleted from the chain)"


def test_verifier_reports_missing_first_rows() -> None:
    rows = _chain(4)

    assert _first_problem(rows[2:]) == "rows 1..2 are missing (deleted from the chain)"


def test_verifier_reports_a_broken_link() -> None:
    rows = _chain(3)
    rows[1] = _replace(rows[1], "prev_hash", OTHER_HASH)

    assert _first_problem(rows) == "row 2 does not link to the row before it (prev_hash mismatch)"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("actor", "mallory"),
        ("correlation_id", "req-9"),
        ("resource_id", None),
        ("details", '{"n":99}'),
        ("timestamp", "2024-05-01T12:59:59.000000Z"),
        ("critical", 1),
        ("hash", OTHER_HASH),
    ],
)
def test_verifier_reports_a_modified_row(name: str, value: Any) -> None:
    rows = _chain(3)
    rows[1] = _replace(rows[1], name, value)

    assert _first_problem(rows) == "row 2 was modified (its hash does not match its contents)"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("actor", "\x00"),  # row 2's actor is NULL, whose canonical text is "\x00"
        ("resource_id", "2\x00"),
        ("details", '{"n":2}\x1f'),
        ("event_id", "evt\x1f2"),
    ],
)
def test_verifier_reports_a_control_character_even_when_the_hash_matches(
    name: str, value: str
) -> None:
    rows = _chain(3)
    forged = _replace(rows[1], name, value)
    forged = _replace(forged, "hash", row_hash(forged[:-1]))  # the attacker rehashes the row
    rows[1] = forged

    assert _first_problem(rows) == (
        "row 2 was modified (it holds a control character the engine never writes)"
    )


def test_a_null_and_the_text_nul_share_a_canonical_form() -> None:
    # Why the verifier refuses U+0000 in values: the hash alone cannot tell these apart.
    row = _chain(2)[1][:-1]
    assert row[NAMES.index("actor")] is None

    assert canonical(_replace(row, "actor", "\x00")) == canonical(row)


def test_verifier_reports_rows_out_of_order() -> None:
    rows = _chain(4)
    swapped = [rows[0], rows[2], rows[1], rows[3]]

    # Row 3 arriving before row 2 looks like row 2 missing: the first problem met is reported.
    assert _first_problem(swapped) == "row 2 is missing (deleted from the chain)"
    assert (
        _first_problem([rows[0], rows[1], rows[0]])
        == "row 1 comes before the chain's starting point (id 2)"
    )


def test_verifier_reports_a_row_before_the_anchor() -> None:
    anchor = ChainHead(id=10, hash=OTHER_HASH)

    assert (
        _first_problem(_chain(1, tail_id=9), anchor)
        == "row 10 comes before the chain's starting point (id 10)"
    )


def test_verifier_does_not_advance_past_a_bad_row() -> None:
    rows = _chain(2)
    verifier = ChainVerifier(0, GENESIS_HASH)

    assert verifier.check(_replace(rows[0], "actor", "mallory")) is not None
    assert verifier.rows_checked == 0
    assert (verifier.prev_id, verifier.prev_hash) == (0, GENESIS_HASH)


# -- verify_rows ---------------------------------------------------------------------------------

GENESIS = ChainHead(id=0, hash=GENESIS_HASH)


def test_verify_rows_ok_reports_the_head() -> None:
    rows = _chain(3)

    report = verify_rows(iter(rows), GENESIS)

    assert report == VerifyReport(ok=True, rows_checked=3, head=ChainHead(id=3, hash=rows[-1][-1]))


def test_verify_rows_of_an_empty_chain() -> None:
    assert verify_rows([], GENESIS) == VerifyReport(ok=True, rows_checked=0, head=None)


def test_verify_rows_from_an_anchor() -> None:
    anchor = ChainHead(id=20, hash=OTHER_HASH)
    rows = _chain(2, tail_id=20, tail_hash=OTHER_HASH)

    report = verify_rows(rows, anchor)

    assert report == VerifyReport(ok=True, rows_checked=2, head=ChainHead(id=22, hash=rows[1][-1]))


def test_verify_rows_of_no_rows_after_an_anchor_reports_the_anchor() -> None:
    anchor = ChainHead(id=20, hash=OTHER_HASH)

    assert verify_rows([], anchor) == VerifyReport(ok=True, rows_checked=0, head=anchor)


def test_verify_rows_reports_the_first_bad_row() -> None:
    rows = _chain(5)
    rows[3] = _replace(rows[3], "details", "{}")

    report = verify_rows(rows, GENESIS)

    assert report == VerifyReport(
        ok=False,
        rows_checked=3,
        first_bad_id=4,
        reason="row 4 was modified (its hash does not match its contents)",
    )


@pytest.mark.parametrize("head_id", [2, 4])
def test_verify_rows_with_the_expected_head_on_the_chain(head_id: int) -> None:
    rows = _chain(4)
    expected = ChainHead(id=head_id, hash=rows[head_id - 1][-1])

    report = verify_rows(rows, GENESIS, expected)

    assert report.ok is True
    assert report.head == ChainHead(id=4, hash=rows[-1][-1])


def test_verify_rows_with_an_expected_head_that_differs() -> None:
    rows = _chain(4)

    report = verify_rows(rows, GENESIS, ChainHead(id=2, hash=OTHER_HASH))

    assert report.ok is False
    assert report.first_bad_id == 2
    assert report.reason == "row 2 differs from the expected head (hash mismatch)"


def test_an_expected_head_rewritten_with_a_value_of_another_type_is_detected() -> None:
    # A row the fast loop cannot join (an integer in a text column) is checked by the
    # reference; the expected head is compared there too (it used to be skipped).
    rows = _chain(3)
    forged = _replace(rows[1], "actor", 7)
    forged = _replace(forged, "hash", row_hash(forged[:-1]))
    rows = [rows[0], forged]

    report = verify_rows(rows, GENESIS, ChainHead(id=2, hash=_chain(3)[1][-1]))

    assert report.ok is False
    assert report.first_bad_id == 2
    assert report.reason == "row 2 differs from the expected head (hash mismatch)"
    assert verify_rows(rows, GENESIS, ChainHead(id=2, hash=forged[-1])).ok is True
    assert report.head is None


def test_verify_rows_detects_truncation_against_the_expected_head() -> None:
    rows = _chain(5)
    expected = ChainHead(id=5, hash=rows[-1][-1])

    report = verify_rows(rows[:3], GENESIS, expected)

    assert report == VerifyReport(
        ok=False,
        rows_checked=3,
        first_bad_id=4,
        reason="the chain ends at id 3, before the expected head 5: rows were deleted from its end",
    )


def test_verify_rows_detects_truncation_to_nothing() -> None:
    report = verify_rows([], GENESIS, ChainHead(id=2, hash=OTHER_HASH))

    assert report.ok is False
    assert report.first_bad_id == 1
    assert report.reason == (
        "the chain ends at id 0, before the expected head 2: rows were deleted from its end"
    )


@pytest.mark.parametrize("expected_hash", [OTHER_HASH, GENESIS_HASH])
def test_verify_rows_with_an_expected_head_at_the_anchor_fails(expected_hash: str) -> None:
    # The anchor only claims the head's row was purged; a forged anchor equal to a published
    # head would otherwise hide the deletion of every row (issue 11 item 9).
    anchor = ChainHead(id=5, hash=OTHER_HASH)

    report = verify_rows([], anchor, ChainHead(id=5, hash=expected_hash))

    assert report == VerifyReport(
        ok=False,
        rows_checked=0,
        first_bad_id=5,
        reason=(
            "row 5, the expected head, is gone (an anchor claims it was purged): a published "
            "head must still be in the table; publish heads more often than the retention period"
        ),
    )


# -- verify_exported_lines -----------------------------------------------------------------------


def _lines(rows: list[tuple[Any, ...]]) -> list[str]:
    """JSON lines as AuditStore.export(fmt="jsonl") writes them."""
    lines = []
    for row in rows:
        record = dict(zip(NAMES, row, strict=True))
        record["details"] = json.loads(record["details"])
        record["critical"] = bool(record["critical"])
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    return lines


def test_exported_lines_verify() -> None:
    rows = _chain(4)

    report = verify_exported_lines(_lines(rows))

    assert report == VerifyReport(ok=True, rows_checked=4, head=ChainHead(id=4, hash=rows[-1][-1]))


def test_exported_lines_of_a_range_verify_with_and_without_its_start() -> None:
    rows = _chain(6)
    before = ChainHead(id=2, hash=rows[1][-1])

    assert verify_exported_lines(_lines(rows[2:5])).ok is True
    assert verify_exported_lines(_lines(rows[2:5]), start=before) == VerifyReport(
        ok=True, rows_checked=3, head=ChainHead(id=5, hash=rows[4][-1])
    )


def test_exported_lines_with_a_wrong_start_fail() -> None:
    rows = _chain(6)

    report = verify_exported_lines(_lines(rows[2:5]), start=ChainHead(id=2, hash=OTHER_HASH))

    assert report.ok is False
    assert report.first_bad_id == 3
    assert report.reason == "row 3 does not link to the row before it (prev_hash mismatch)"


def test_exported_lines_that_start_elsewhere_than_the_start_fail() -> None:
    rows = _chain(6)

    report = verify_exported_lines(_lines(rows[3:5]), start=ChainHead(id=2, hash=rows[1][-1]))

    assert report.ok is False
    assert report.reason == "row 3 is missing (deleted from the chain)"


def test_a_tampered_exported_line_fails() -> None:
    rows = _chain(3)
    lines = _lines(rows)
    record = json.loads(lines[1])
    record["actor"] = "mallory"
    lines[1] = json.dumps(record) + "\n"

    report = verify_exported_lines(lines)

    assert report.ok is False
    assert report.first_bad_id == 2
    assert report.reason == (
        "row 2 was modified (its hash does not match its contents); "
        "if the trail is keyed, verify the export with its chain key"
    )
    assert report.rows_checked == 1


def test_a_tampered_critical_flag_in_an_export_fails() -> None:
    rows = _chain(3)
    lines = _lines(rows)
    record = json.loads(lines[2])
    record["critical"] = not record["critical"]
    lines[2] = json.dumps(record) + "\n"

    assert verify_exported_lines(lines).first_bad_id == 3


def test_an_exported_null_replaced_by_a_nul_character_fails() -> None:
    lines = _lines(_chain(3))
    record = json.loads(lines[1])
    assert record["actor"] is None
    record["actor"] = "\x00"  # same canonical text, same hash: caught by the character check
    lines[1] = json.dumps(record) + "\n"

    report = verify_exported_lines(lines)

    assert (report.ok, report.first_bad_id) == (False, 2)
    assert report.reason == (
        "row 2 was modified (it holds a control character the engine never writes)"
    )


def test_a_missing_exported_line_fails() -> None:
    lines = _lines(_chain(4))
    del lines[1]

    report = verify_exported_lines(lines)

    assert report.ok is False
    assert report.reason == "row 2 is missing (deleted from the chain)"


def test_empty_export_verifies_as_nothing() -> None:
    assert verify_exported_lines([]) == VerifyReport(ok=True, rows_checked=0)
    assert verify_exported_lines(["\n", "  \n"]) == VerifyReport(ok=True, rows_checked=0)


def test_blank_lines_in_an_export_are_skipped() -> None:
    lines = _lines(_chain(2))

    assert verify_exported_lines(["\n", lines[0], "\n", lines[1], ""]).rows_checked == 2


def test_exported_lines_with_empty_details_and_nulls_verify() -> None:
    rows = link([_fields(1, details="{}", actor=None, correlation_id=None)], 0, GENESIS_HASH)

    assert verify_exported_lines(_lines(rows)).ok is True


def test_a_damaged_export_line_is_a_failed_report_not_a_crash() -> None:

    for lines in (['{"id": 1'], ['{"id": 1}'], ["[1, 2]"]):
        report = verify_exported_lines(lines)
        assert report.ok is False
        assert report.reason is not None
        assert report.reason.startswith("line 1 is not an export line")


def test_an_expected_head_older_than_the_anchor_cannot_be_checked() -> None:
    from audit_engine.storage.chain import ChainHead, verify_rows

    report = verify_rows([], ChainHead(id=5, hash="a" * 64), ChainHead(id=2, hash="b" * 64))
    assert report.ok is False
    assert report.first_bad_id == 2
    assert report.reason is not None
    assert report.reason.startswith("row 2, the expected head, is gone (an anchor claims it")


def test_export_lines_escape_unicode_line_separators(tmp_path: Path) -> None:
    from audit_engine import AuditStore
    from audit_engine.models import AuditEntry
    from audit_engine.storage import sqlite as store

    db = tmp_path / "a.db"
    conn = store.open_connection(db)
    store.write_batch(
        conn, rows_of([AuditEntry(action="x", details={"t": "a\u2028b\u2029c\x85d"})])
    )
    conn.close()
    with AuditStore(db) as reader:
        text = "".join(reader.export("jsonl"))
    assert len(text.splitlines()) == 1
    assert verify_exported_lines(text.splitlines()).ok


def test_verify_rows_refuses_a_chain_version_it_does_not_know() -> None:
    rows = _chain(3)

    report = verify_rows(rows, GENESIS, versions=[(1, "1"), (3, "3")])

    assert report.ok is False
    assert report.rows_checked == 0
    assert report.first_bad_id == 3
    assert report.reason == (
        "rows from id 3 on are hashed with chain version '3', which this release cannot check "
        "(it knows versions 1 and 2): verify with the release that wrote them"
    )
    assert verify_rows(rows, GENESIS, versions=[(1, "1")]).ok is True
