"""Tamper evidence on real files: AuditStore.verify/head against every kind of tampering, chains
written by several writers, export (JSON lines, CSV) with offline verification, unusable files,
and the version-1 to version-2 migration.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import itertools
import json
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trails
from support import rows_of
from tamper import unguarded

from audit_engine import AuditEntry, AuditService, AuditStore, AuditStoreError
from audit_engine.storage import sqlite as store
from audit_engine.storage.chain import (
    GENESIS_HASH,
    ChainHead,
    VerifyReport,
    row_hash,
)
from audit_engine.storage.exported import verify_exported_lines

MakeService = Callable[..., AuditService]

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
ROWS = 8
STORED = (
    "event_id, timestamp, actor, action, operation, outcome, resource_type, resource_id, "
    "correlation_id, details, critical"
)
CSV_HEADER = (
    "id,event_id,timestamp,actor,action,operation,outcome,resource_type,resource_id,"
    "correlation_id,details,critical,prev_hash,hash\n"
)


# -- helpers ------------------------------------------------------------------------------------


def _query(db_path: Path | str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    return trails.query(db_path, sql, params)


def _tamper(db_path: Path | str, *statements: str | tuple[str, Sequence[Any]]) -> None:
    """Change the trail behind the engine's back, as an attacker with write access would."""
    trails.execute(db_path, *statements)


def _verify(db_path: Path, expected_head: ChainHead | None = None) -> VerifyReport:
    with AuditStore(db_path) as audit:
        return audit.verify(expected_head=expected_head)


def _head(db_path: Path) -> ChainHead | None:
    with AuditStore(db_path) as audit:
        return audit.head()


def _row(db_path: Path | str, row_id: int) -> tuple[Any, ...]:
    select = trails.stored_row(db_path)
    return _query(db_path, f"SELECT {select} FROM audit_entries WHERE id = ?", (row_id,))[0]


def _write_trail(make_service: MakeService, database: Path | str) -> Path | str:
    service = make_service(database=database, cleanup_enabled=False, buffer_max_size=3)
    for n in range(1, ROWS + 1):
        service.record(
            event_id=f"evt-{n}",
            timestamp=T0 + timedelta(minutes=n),
            actor=None if n % 4 == 0 else ("alice" if n % 2 else "bob"),
            action="doc.save",
            operation="update",
            resource_type="doc",
            resource_id=str(n),
            correlation_id="req-1" if n < 5 else None,
            details={"n": n, "note": "zoë", "nested": {"b": [1, 2.5, None], "a": True}},
            critical=n == 3,
        )
    assert service.close(timeout=10) is True
    return database


@pytest.fixture
def written(make_service: MakeService, trail_db: Path | str) -> Path | str:
    """ROWS entries written by the async writer in small batches, service closed; on each
    backend."""
    return _write_trail(make_service, trail_db)


@pytest.fixture
def written_file(make_service: MakeService, db_path: Path) -> Path | str:
    """As ``written``, SQLite only: for tampering that needs SQLite's types (a BLOB, a NUL)."""
    return _write_trail(make_service, db_path)


def _forged_row(
    row_id: int, prev_hash: str, hash_: str | None = None, event_id: str = "forged"
) -> tuple[str, Sequence[Any]]:
    fields = (
        row_id,
        event_id,
        store.format_timestamp(T0),
        "mallory",
        "doc.save",
        "update",
        "success",
        "doc",
        "1",
        None,
        "{}",
        0,
        prev_hash,
    )
    digest = row_hash(fields) if hash_ is None else hash_
    return (
        f"INSERT INTO audit_entries (id, {STORED}, prev_hash, hash) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (*fields, digest),
    )


# -- an untouched chain -------------------------------------------------------------------------


def test_a_service_written_chain_verifies(written: Path | str) -> None:
    last = _row(written, ROWS)

    report = _verify(written)

    assert report == VerifyReport(
        ok=True, rows_checked=ROWS, head=ChainHead(id=ROWS, hash=last[-1])
    )


def test_every_row_links_to_the_one_before(written: Path | str) -> None:
    rows = _query(written, f"SELECT {trails.stored_row(written)} FROM audit_entries ORDER BY id")

    assert [row[0] for row in rows] == list(range(1, ROWS + 1))
    assert rows[0][-2] == GENESIS_HASH
    for before, row in itertools.pairwise(rows):
        assert row[-2] == before[-1]
    for row in rows:
        canonical = "\x1f".join(
            ["1", *("\x00" if v is None else str(v) for v in row[:-1])]
        ).encode()
        assert row[-1] == hashlib.sha256(canonical).hexdigest()


def test_head(written: Path | str, db_path: Path) -> None:
    assert _head(written) == ChainHead(id=ROWS, hash=_row(written, ROWS)[-1])


def test_head_of_an_empty_database(db_path: Path) -> None:
    store.open_connection(db_path).close()

    assert _head(db_path) is None
    assert _verify(db_path) == VerifyReport(ok=True, rows_checked=0)


def test_verify_against_the_current_head(written: Path | str) -> None:
    head = _head(written)

    assert _verify(written, expected_head=head).ok is True


def test_verify_against_an_older_head_after_more_writes(
    written: Path | str, make_service: MakeService
) -> None:
    head = _head(written)
    service = make_service(database=written, async_writes=False, cleanup_enabled=False)
    service.record(action="later", event_id="later-1")
    service.close()

    report = _verify(written, expected_head=head)

    assert report.ok is True
    assert report.rows_checked == ROWS + 1


# -- tampering ----------------------------------------------------------------------------------

MODIFIED_3 = "row 3 was modified (its hash does not match its contents)"


@pytest.mark.parametrize(
    "update",
    [
        pytest.param("UPDATE audit_entries SET actor = 'mallory' WHERE id = 3", id="actor"),
        pytest.param("UPDATE audit_entries SET actor = NULL WHERE id = 3", id="actor-null"),
        pytest.param(
            "UPDATE audit_entries SET {details} = replace({details}, 'zoë', 'zoe') WHERE id = 3",
            id="details",
        ),
        pytest.param(
            "UPDATE audit_entries SET timestamp = '2024-05-01T12:03:00.000001Z' WHERE id = 3",
            id="timestamp",
        ),
        pytest.param(
            "UPDATE audit_entries SET critical = NOT critical WHERE id = 3", id="critical"
        ),
        pytest.param("UPDATE audit_entries SET outcome = 'failure' WHERE id = 3", id="outcome"),
        pytest.param("UPDATE audit_entries SET event_id = 'evt-x' WHERE id = 3", id="event_id"),
        pytest.param("UPDATE audit_entries SET hash = ? WHERE id = 3", id="hash"),
    ],
)
def test_a_modified_field_is_detected(written: Path | str, update: str) -> None:
    update = update.replace("{details}", trails.details_column(written))
    _tamper(written, (update, ("a" * 64,)) if "?" in update else update)

    report = _verify(written)

    assert report.ok is False
    assert report.first_bad_id == 3
    assert report.reason == MODIFIED_3
    assert report.rows_checked == 2
    assert report.head is None


def test_a_modified_prev_hash_is_detected(written: Path | str) -> None:
    _tamper(written, ("UPDATE audit_entries SET prev_hash = ? WHERE id = 5", ("b" * 64,)))

    report = _verify(written)

    assert (report.ok, report.first_bad_id) == (False, 5)
    assert report.reason == "row 5 does not link to the row before it (prev_hash mismatch)"


def test_a_modified_row_with_a_recomputed_hash_breaks_the_next_link(written: Path | str) -> None:
    row = list(_row(written, 3))
    row[3] = "mallory"
    new_hash = row_hash(row[:-1])
    _tamper(
        written, ("UPDATE audit_entries SET actor = 'mallory', hash = ? WHERE id = 3", (new_hash,))
    )

    report = _verify(written)

    assert (report.ok, report.first_bad_id, report.rows_checked) == (False, 4, 3)
    assert report.reason == "row 4 does not link to the row before it (prev_hash mismatch)"


CONTROL_4 = "row 4 was modified (it holds a control character the engine never writes)"


def test_a_null_field_changed_to_a_nul_character_is_detected(written_file: Path | str) -> None:
    # NULL is "\x00" in the canonical form: the text "\x00" in its place keeps the same hash.
    _tamper(written_file, "UPDATE audit_entries SET actor = char(0) WHERE id = 4")  # actor was NULL
    assert _query(written_file, "SELECT actor FROM audit_entries WHERE id = 4") == [("\x00",)]

    report = _verify(written_file)

    assert (report.ok, report.first_bad_id, report.rows_checked) == (False, 4, 3)
    assert report.reason == CONTROL_4


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("'a' || char(31) || 'b'", id="separator"),
        pytest.param("'a' || char(0)", id="nul-inside"),
    ],
)
def test_a_field_holding_a_control_character_is_detected(
    written_file: Path | str, value: str
) -> None:
    _tamper(written_file, f"UPDATE audit_entries SET resource_id = {value} WHERE id = 4")

    report = _verify(written_file)

    assert (report.ok, report.first_bad_id) == (False, 4)
    assert report.reason == CONTROL_4


def test_a_value_of_another_type_is_detected(written_file: Path | str) -> None:
    # The same characters as a BLOB: not a value the engine writes (and not text to join).
    _tamper(written_file, "UPDATE audit_entries SET resource_id = CAST('7' AS BLOB) WHERE id = 7")
    assert _query(written_file, "SELECT resource_id FROM audit_entries WHERE id = 7") == [(b"7",)]

    report = _verify(written_file)

    assert (report.ok, report.first_bad_id, report.rows_checked) == (False, 7, 6)
    assert report.reason == "row 7 was modified (its hash does not match its contents)"


def test_a_deleted_middle_row_is_detected(written: Path | str) -> None:
    _tamper(written, "DELETE FROM audit_entries WHERE id = 4")

    report = _verify(written)

    assert report == VerifyReport(
        ok=False,
        rows_checked=3,
        first_bad_id=5,
        reason="row 4 is missing (deleted from the chain)",
    )


def test_deleted_middle_rows_are_detected(written: Path | str) -> None:
    _tamper(written, "DELETE FROM audit_entries WHERE id BETWEEN 3 AND 6")

    report = _verify(written)

    assert report.first_bad_id == 7
    assert report.reason == "rows 3..6 are missing (deleted from the chain)"


def test_a_deleted_first_row_is_detected(written: Path | str) -> None:
    _tamper(written, "DELETE FROM audit_entries WHERE id = 1")

    report = _verify(written)

    assert (report.ok, report.first_bad_id) == (False, 2)
    assert report.reason == "row 1 is missing (deleted from the chain)"


def test_a_forged_row_after_the_end_with_a_wrong_link_is_detected(written_file: Path | str) -> None:
    _tamper(written_file, _forged_row(ROWS + 1, prev_hash="c" * 64))

    report = _verify(written_file)

    assert (report.ok, report.first_bad_id, report.rows_checked) == (False, ROWS + 1, ROWS)
    assert report.reason == (
        f"row {ROWS + 1} does not link to the row before it (prev_hash mismatch)"
    )


def test_a_forged_row_after_the_end_with_a_wrong_hash_is_detected(written_file: Path | str) -> None:
    tail_hash = _row(written_file, ROWS)[-1]
    _tamper(written_file, _forged_row(ROWS + 1, prev_hash=tail_hash, hash_="d" * 64))

    report = _verify(written_file)

    assert (report.ok, report.first_bad_id) == (False, ROWS + 1)
    assert report.reason == f"row {ROWS + 1} was modified (its hash does not match its contents)"


def test_a_forged_row_beyond_a_gap_is_detected(written_file: Path | str) -> None:
    _tamper(written_file, _forged_row(ROWS + 5, prev_hash=_row(written_file, ROWS)[-1]))

    report = _verify(written_file)

    assert report.first_bad_id == ROWS + 5
    assert report.reason == f"rows {ROWS + 1}..{ROWS + 4} are missing (deleted from the chain)"


def test_a_correctly_hashed_row_forged_into_a_gap_is_detected(written_file: Path | str) -> None:
    # The attacker replaces row 4 and even hashes it properly: row 5 no longer links.
    prev = _row(written_file, 3)[-1]
    _tamper(written_file, "DELETE FROM audit_entries WHERE id = 4", _forged_row(4, prev_hash=prev))

    report = _verify(written_file)

    assert (report.ok, report.first_bad_id, report.rows_checked) == (False, 5, 4)
    assert report.reason == "row 5 does not link to the row before it (prev_hash mismatch)"


def test_a_forged_row_before_the_first_is_detected(written_file: Path | str) -> None:
    _tamper(written_file, _forged_row(0, prev_hash=GENESIS_HASH))

    report = _verify(written_file)

    assert (report.ok, report.first_bad_id, report.rows_checked) == (False, 0, 0)
    assert report.reason == "row 0 comes before the chain's starting point (id 0)"


def _swap(db_path: Path, a: int, b: int, columns: Sequence[str]) -> None:
    """Exchange the given columns of rows a and b (event_id is unique: park one first)."""
    names = ", ".join(columns)
    assignments = ", ".join(f"{c} = ?" for c in columns)
    with contextlib.closing(sqlite3.connect(db_path)) as conn, unguarded(conn):
        select = f"SELECT {names} FROM audit_entries WHERE id = ?"
        values_a = conn.execute(select, (a,)).fetchone()
        values_b = conn.execute(select, (b,)).fetchone()
        conn.execute("UPDATE audit_entries SET event_id = 'parked' WHERE id = ?", (a,))
        conn.execute(f"UPDATE audit_entries SET {assignments} WHERE id = ?", (*values_a, b))
        conn.execute(f"UPDATE audit_entries SET {assignments} WHERE id = ?", (*values_b, a))


ALL_BUT_ID = [c.strip() for c in STORED.split(",")] + ["prev_hash", "hash"]


def test_swapped_rows_are_detected(written_file: Path | str) -> None:
    before = {n: _row(written_file, n) for n in (3, 6)}
    _swap(written_file, 3, 6, ALL_BUT_ID)
    assert _row(written_file, 3)[1:] == before[6][1:]  # the swap did happen
    assert _row(written_file, 6)[1:] == before[3][1:]

    report = _verify(written_file)

    assert (report.ok, report.first_bad_id, report.rows_checked) == (False, 3, 2)
    assert report.reason == "row 3 does not link to the row before it (prev_hash mismatch)"


def test_adjacent_rows_swapped_with_their_hashes_kept_in_place_are_detected(
    written_file: Path | str,
) -> None:
    fields = [c.strip() for c in STORED.split(",")]
    _swap(written_file, 4, 5, fields)
    assert _row(written_file, 4)[1] == "evt-5"

    report = _verify(written_file)

    assert (report.ok, report.first_bad_id) == (False, 4)
    assert report.reason == "row 4 was modified (its hash does not match its contents)"


def test_truncation_is_detected_only_against_an_expected_head(written: Path | str) -> None:
    head = _head(written)
    _tamper(written, f"DELETE FROM audit_entries WHERE id > {ROWS - 2}")

    alone = _verify(written)
    against_head = _verify(written, expected_head=head)

    assert alone.ok is True  # without a head kept elsewhere, a shorter chain is still a chain
    assert alone.rows_checked == ROWS - 2
    assert against_head == VerifyReport(
        ok=False,
        rows_checked=ROWS - 2,
        first_bad_id=ROWS - 1,
        reason=(
            f"the chain ends at id {ROWS - 2}, before the expected head {ROWS}: rows were "
            "deleted from its end"
        ),
    )


def test_a_rewritten_tail_is_detected_against_an_expected_head(written_file: Path | str) -> None:
    head = _head(written_file)
    prev = _row(written_file, ROWS - 1)[-1]
    _tamper(
        written_file,
        f"DELETE FROM audit_entries WHERE id = {ROWS}",
        _forged_row(ROWS, prev_hash=prev),
    )
    assert _verify(written_file).ok is True  # a well-forged tail is a valid chain on its own

    report = _verify(written_file, expected_head=head)

    assert (report.ok, report.first_bad_id) == (False, ROWS)
    assert report.reason == f"row {ROWS} differs from the expected head (hash mismatch)"


def test_verify_does_not_leave_a_transaction_open(written: Path | str) -> None:
    with AuditStore(written) as audit:
        audit.verify()
        # A read snapshot left open by the first verify() would hide this change.
        _tamper(written, "DELETE FROM audit_entries WHERE id = 2")
        assert audit.verify().first_bad_id == 3


# -- several writers, one chain -----------------------------------------------------------------


def test_sync_injected_and_async_writes_extend_one_chain(
    make_service: MakeService, db_path: Path
) -> None:
    asynchronous = make_service(cleanup_enabled=False, buffer_max_size=2)
    synchronous = make_service(async_writes=False, cleanup_enabled=False)
    app = sqlite3.connect(db_path, isolation_level=None, timeout=10)
    try:
        injected = make_service(connection=app, cleanup_enabled=False)
        expected = []
        for n in range(4):
            asynchronous.record(action="a", event_id=f"async-{n}")
            assert asynchronous.flush(10)
            synchronous.record(action="s", event_id=f"sync-{n}")
            app.execute("BEGIN IMMEDIATE")
            injected.record(action="i", event_id=f"injected-{n}")
            app.execute("COMMIT")
            expected += [f"async-{n}", f"sync-{n}", f"injected-{n}"]
        app.execute("BEGIN IMMEDIATE")
        injected.record(action="i", event_id="rolled-back")
        app.execute("ROLLBACK")  # the tail it took is released with it
        synchronous.record(action="s", event_id="sync-last")
        expected.append("sync-last")
    finally:
        app.close()
    assert asynchronous.close(timeout=10) is True

    rows = _query(db_path, "SELECT event_id FROM audit_entries ORDER BY id")
    assert [row[0] for row in rows] == expected
    assert _verify(db_path) == VerifyReport(
        ok=True, rows_checked=len(expected), head=_head(db_path)
    )


def test_concurrent_sync_and_async_threads_extend_one_chain(
    make_service: MakeService, db_path: Path
) -> None:
    asynchronous = make_service(cleanup_enabled=False, buffer_max_size=5)
    synchronous = make_service(async_writes=False, cleanup_enabled=False)
    start = threading.Barrier(4)
    failures: list[BaseException] = []

    def work(service: AuditService, name: str) -> None:
        try:
            start.wait(10)
            for n in range(150):
                service.record(action="t", actor=name, event_id=f"{name}-{n}")
        except BaseException as exc:  # reported in the test's thread
            failures.append(exc)

    threads = [
        threading.Thread(target=work, args=(service, f"{kind}{k}"))
        for k in range(2)
        for kind, service in (("a", asynchronous), ("s", synchronous))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert asynchronous.close(timeout=30) is True
    synchronous.close()

    report = _verify(db_path)
    assert report.ok is True
    assert report.rows_checked == 600
    rows = _query(db_path, "SELECT count(DISTINCT event_id) FROM audit_entries")
    assert rows == [(600,)]


# -- export -------------------------------------------------------------------------------------


def test_export_jsonl_keeps_every_stored_field_and_the_hashes(written: Path | str) -> None:
    with AuditStore(written) as audit:
        lines = list(audit.export())

    assert len(lines) == ROWS
    assert all(line.endswith("\n") and line.count("\n") == 1 for line in lines)
    records = [json.loads(line) for line in lines]
    assert list(records[2]) == [
        "id",
        "event_id",
        "timestamp",
        "actor",
        "action",
        "operation",
        "outcome",
        "resource_type",
        "resource_id",
        "correlation_id",
        "details",
        "critical",
        "prev_hash",
        "hash",
    ]
    row = _row(written, 3)
    assert records[2] == {
        "id": 3,
        "event_id": "evt-3",
        "timestamp": "2024-05-01T12:03:00.000000Z",
        "actor": "alice",
        "action": "doc.save",
        "operation": "update",
        "outcome": "success",
        "resource_type": "doc",
        "resource_id": "3",
        "correlation_id": "req-1",
        "details": {"n": 3, "note": "zoë", "nested": {"a": True, "b": [1, 2.5, None]}},
        "critical": True,
        "prev_hash": row[-2],
        "hash": row[-1],
    }
    assert records[3]["actor"] is None
    assert records[3]["critical"] is False
    assert "zoë" in lines[0]  # UTF-8 as is, not \u escapes
    assert verify_exported_lines(lines) == _verify(written)


def test_export_csv(written: Path | str) -> None:
    with AuditStore(written) as audit:
        lines = list(audit.export(fmt="csv"))

    assert lines[0] == CSV_HEADER
    assert len(lines) == ROWS + 1
    assert all(line.endswith("\n") for line in lines)
    parsed = list(csv.reader(lines))
    stored = _query(written, f"SELECT {trails.stored_row(written)} FROM audit_entries ORDER BY id")
    # `critical` reads as in `query` output (true/false, issue 11 item 20), the rest as stored.
    assert parsed[1:] == [
        [
            "" if v is None else ("true" if v else "false") if n == 11 else str(v)
            for n, v in enumerate(row)
        ]
        for row in stored
    ]
    details = json.loads(parsed[3][10])
    assert details == {"n": 3, "note": "zoë", "nested": {"a": True, "b": [1, 2.5, None]}}


def test_export_of_an_empty_database(db_path: Path) -> None:
    store.open_connection(db_path).close()

    with AuditStore(db_path) as audit:
        assert list(audit.export()) == []
        assert list(audit.export(fmt="csv")) == [CSV_HEADER]


def test_export_is_a_lazy_stream(written: Path | str) -> None:
    with AuditStore(written) as audit:
        lines = audit.export()
        assert iter(lines) is lines  # a generator, not a list built in memory
        first = next(lines)
        assert json.loads(first)["id"] == 1
        assert sum(1 for _ in lines) == ROWS - 1


def test_export_since_until_range_verifies_offline_from_the_row_before(written: Path | str) -> None:
    since, until = T0 + timedelta(minutes=3), T0 + timedelta(minutes=7)
    before = _row(written, 2)

    with AuditStore(written) as audit:
        lines = list(audit.export(since=since, until=until))

    assert [json.loads(line)["id"] for line in lines] == [3, 4, 5, 6]  # since in, until out
    assert verify_exported_lines(lines, start=ChainHead(id=2, hash=before[-1])) == VerifyReport(
        ok=True, rows_checked=4, head=ChainHead(id=6, hash=_row(written, 6)[-1])
    )
    assert verify_exported_lines(lines).ok is True
    wrong_start = verify_exported_lines(lines, start=ChainHead(id=2, hash="0" * 64))
    assert (wrong_start.ok, wrong_start.first_bad_id) == (False, 3)


def test_a_tampered_export_fails_offline(written: Path | str) -> None:
    with AuditStore(written) as audit:
        lines = list(audit.export())
    record = json.loads(lines[4])
    record["details"]["n"] = 99
    lines[4] = json.dumps(record) + "\n"

    report = verify_exported_lines(lines)

    assert (report.ok, report.first_bad_id, report.rows_checked) == (False, 5, 4)
    assert report.reason == (
        "row 5 was modified (its hash does not match its contents); "
        "if the trail is keyed, verify the export with its chain key"
    )


def test_a_filtered_export_is_not_a_contiguous_range(written: Path | str) -> None:
    with AuditStore(written) as audit:
        lines = list(audit.export(actor="bob"))

    assert [json.loads(line)["id"] for line in lines] == [2, 6]
    report = verify_exported_lines(lines)
    assert report.ok is False
    assert report.reason == "rows 3..5 are missing (deleted from the chain)"


def test_export_filters(written: Path | str) -> None:
    with AuditStore(written) as audit:
        alice_csv = list(audit.export(fmt="csv", correlation_id="req-1", actor="alice"))
        assert [json.loads(line)["id"] for line in audit.export(resource_id="7")] == [7]

    assert [row[0] for row in csv.reader(alice_csv[1:])] == ["1", "3"]


@pytest.mark.parametrize("fmt", ["xml", "JSONL", ""])
def test_export_of_an_unknown_format_is_an_error(written: Path | str, fmt: str) -> None:
    with AuditStore(written) as audit, pytest.raises(AuditStoreError) as exc:
        audit.export(fmt=fmt)

    assert str(exc.value) == f"unknown export format {fmt!r}: use 'jsonl' or 'csv'"


def test_export_with_a_naive_bound_is_an_error(written: Path | str) -> None:
    with AuditStore(written) as audit, pytest.raises(AuditStoreError) as exc:
        audit.export(since=datetime(2024, 1, 1))

    assert str(exc.value) == "since must be timezone-aware (got a naive datetime)"


# -- files that are not (or no longer) audit databases ------------------------------------------


def _foreign_database(path: Path) -> Path:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.commit()
    return path


@pytest.mark.parametrize("operation", ["verify", "head", "export"])
def test_a_database_that_is_not_an_audit_database(tmp_path: Path, operation: str) -> None:
    path = _foreign_database(tmp_path / "app.db")

    with pytest.raises(AuditStoreError) as exc, AuditStore(path) as audit:
        getattr(audit, operation)()

    assert str(exc.value) == f"{path} is not an audit database (no audit_entries table)"


def test_a_file_that_is_not_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("these are not the pages you are looking for\n" * 50)

    with pytest.raises(AuditStoreError) as exc, AuditStore(path) as audit:
        audit.verify()

    assert str(exc.value) == f"{path} is not a usable audit database: file is not a database"


def _large_database(path: Path) -> None:
    """Hundreds of pages of rows, checkpointed into the main file when the connection closes."""
    conn = store.open_connection(path)
    try:
        store.write_batch(
            conn,
            rows_of(
                [
                    AuditEntry(
                        event_id=f"big-{n:04d}",
                        timestamp=T0 + timedelta(minutes=n),
                        action="thing.do",
                        details={"pad": "x" * 1500},
                    )
                    for n in range(600)
                ]
            ),
        )
    finally:
        conn.close()
    assert not Path(f"{path}-wal").exists()


def _overwrite_middle(path: Path) -> None:
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek(size // 2 // 4096 * 4096)
        f.write(b"\xff" * 4096 * 16)


def test_verify_of_a_corrupt_database_is_an_audit_store_error(db_path: Path) -> None:
    _large_database(db_path)
    _overwrite_middle(db_path)

    with pytest.raises(AuditStoreError) as exc, AuditStore(db_path) as audit:
        audit.verify()

    assert str(exc.value) == f"cannot verify {db_path}: database disk image is malformed"


def test_verify_of_a_truncated_database_is_an_audit_store_error(db_path: Path) -> None:
    _large_database(db_path)
    with db_path.open("r+b") as f:
        f.truncate(db_path.stat().st_size // 2)

    with (
        pytest.raises(AuditStoreError, match="database disk image is malformed"),
        AuditStore(db_path) as audit,
    ):
        audit.verify()


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_of_a_corrupt_database_is_an_audit_store_error(db_path: Path, fmt: str) -> None:
    _large_database(db_path)
    _overwrite_middle(db_path)

    with AuditStore(db_path) as audit, pytest.raises(AuditStoreError) as exc:
        for _ in audit.export(fmt=fmt):
            pass

    assert str(exc.value) == f"cannot export {db_path}: database disk image is malformed"


# -- migration from schema version 1 ------------------------------------------------------------

# The engine records its schema version in its own table, not in PRAGMA user_version.
_SCHEMA_VERSION_SQL = "SELECT value FROM audit_engine_meta WHERE key = 'schema_version'"

_V1_TABLE = """
CREATE TABLE audit_entries (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    actor TEXT,
    action TEXT NOT NULL,
    operation TEXT NOT NULL,
    outcome TEXT NOT NULL,
    resource_type TEXT,
    resource_id TEXT,
    correlation_id TEXT,
    details TEXT NOT NULL,
    critical INTEGER NOT NULL
)
"""
_V1_ROWS = [
    (1, "v1-1", "2024-05-01T12:00:00.000000Z", "alice", "doc.open", "read", "success", "doc",
     "1", "c1", "{}", 0),
    (2, "v1-2", "2024-05-01T12:01:00.000000Z", None, "doc.save", "update", "failure", None,
     None, None, '{"size":10}', 1),
    (3, "v1-3", "2024-05-01T12:02:00.000000Z", "bob", "job.run", "execute", "success", "job",
     "9", None, '{"note":"zoë"}', 0),
]  # fmt: skip


def _v1_database(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(_V1_TABLE)
        conn.execute("CREATE UNIQUE INDEX ux_audit_entries_event_id ON audit_entries (event_id)")
        conn.execute("CREATE INDEX ix_audit_entries_timestamp ON audit_entries (timestamp)")
        conn.executemany(f"INSERT INTO audit_entries VALUES ({', '.join('?' * 12)})", _V1_ROWS)
        conn.execute("PRAGMA user_version = 1")
        conn.commit()


def test_a_version_1_file_is_chained_in_place_when_opened(db_path: Path) -> None:
    _v1_database(db_path)

    report = _verify(db_path)

    assert report.ok is True
    assert report.rows_checked == 3
    assert _query(db_path, _SCHEMA_VERSION_SQL) == [(str(store.SCHEMA_VERSION),)]
    rows = _query(db_path, f"SELECT id, {STORED}, prev_hash, hash FROM audit_entries ORDER BY id")
    assert [row[:12] for row in rows] == _V1_ROWS  # the stored values are untouched
    prev = GENESIS_HASH
    for row in rows:
        text = "\x1f".join(["1", *("\x00" if v is None else str(v) for v in row[:12]), prev])
        assert row[12:] == (prev, hashlib.sha256(text.encode("utf-8")).hexdigest())
        prev = row[13]
    assert report.head == ChainHead(id=3, hash=prev)
    tables = {r[0] for r in _query(db_path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"audit_anchors", "audit_cleanup_runs"} <= tables


def test_a_migrated_file_takes_new_rows_and_detects_tampering(
    db_path: Path, make_service: MakeService
) -> None:
    _v1_database(db_path)
    service = make_service(async_writes=False, cleanup_enabled=False)
    service.record(action="after.migration", event_id="v2-1")
    service.close()

    assert _verify(db_path).rows_checked == 4
    with AuditStore(db_path) as audit:
        assert [e.event_id for e in audit.query()] == ["v1-1", "v1-2", "v1-3", "v2-1"]
        lines = list(audit.export())
    assert verify_exported_lines(lines).ok is True

    _tamper(db_path, "UPDATE audit_entries SET outcome = 'success' WHERE id = 2")
    assert _verify(db_path).first_bad_id == 2


def test_an_empty_version_1_file_migrates(db_path: Path) -> None:
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        conn.execute(_V1_TABLE)
        conn.execute("PRAGMA user_version = 1")
        conn.commit()

    assert _verify(db_path) == VerifyReport(ok=True, rows_checked=0)
    assert _query(db_path, _SCHEMA_VERSION_SQL) == [(str(store.SCHEMA_VERSION),)]
