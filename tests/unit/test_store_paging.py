"""AuditStore.query pages through the trail (keyset pagination on id) with flat memory."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import tracemalloc
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trails

from audit_engine import AuditEntry, AuditStore, AuditStoreError, verify_exported_lines
from audit_engine.storage import reads

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _entry(number: int, **fields: Any) -> AuditEntry:
    values: dict[str, Any] = {
        "event_id": f"evt-{number:06d}",
        "timestamp": T0 + timedelta(seconds=number),
        "action": "thing.do",
        "actor": "alice" if number % 3 == 0 else "bob",
    }
    values.update(fields)
    return AuditEntry(**values)


def _ids(entries: Iterator[AuditEntry] | Sequence[AuditEntry]) -> list[int]:
    return [int(entry.event_id.removeprefix("evt-")) for entry in entries]


def _write(database: Path | str, numbers: range) -> None:
    trails.write(database, [_entry(n) for n in numbers])


class _Counted:
    """Wraps a store's page fetch: how many rows each statement returned."""

    def __init__(self, store: AuditStore) -> None:
        self.rows: list[int] = []
        self._fetch = store._fetch_page

    def __call__(self, what: str, sql: str, params: list[Any]) -> list[Any]:
        rows = self._fetch(what, sql, params)
        self.rows.append(len(rows))
        return rows


def _counted(store: AuditStore, monkeypatch: pytest.MonkeyPatch) -> _Counted:
    counted = _Counted(store)
    monkeypatch.setattr(store, "_fetch_page", counted)
    return counted


# -- what comes out ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, list(range(23))),
        ({"newest_first": True}, list(range(22, -1, -1))),
        ({"limit": 9}, list(range(9))),
        ({"limit": 8}, list(range(8))),  # ends exactly at a page boundary
        ({"limit": 9, "newest_first": True}, list(range(22, 13, -1))),
        ({"limit": 0}, []),
        ({"limit": 100}, list(range(23))),
        ({"actor": "alice"}, list(range(0, 23, 3))),
        ({"actor": "alice", "newest_first": True, "limit": 5}, [21, 18, 15, 12, 9]),
        ({"since": T0 + timedelta(seconds=5), "until": "2024-05-01T12:00:17Z"}, list(range(5, 17))),
    ],
)
def test_pages_give_the_rows_a_single_statement_would(
    trail_db: Path | str, options: dict[str, Any], expected: list[int]
) -> None:
    _write(trail_db, range(23))

    with AuditStore(trail_db) as reader:
        assert _ids(reader.query(page_size=4, **options)) == expected
        assert _ids(reader.query(page_size=1000, **options)) == expected


@pytest.mark.parametrize("rows", [0, 1, 7, 8, 9])
def test_each_statement_reads_at_most_a_page(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, rows: int
) -> None:
    trails.create(db_path)
    _write(db_path, range(rows))

    with AuditStore(db_path) as reader:
        counted = _counted(reader, monkeypatch)
        assert _ids(reader.query(page_size=4)) == list(range(rows))

    # Full pages, then a short one (or an empty one when the rows end on a boundary).
    assert counted.rows == [4] * (rows // 4) + [rows % 4]


def test_a_limit_asks_only_for_the_rows_it_still_needs(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(db_path, range(20))

    with AuditStore(db_path) as reader:
        counted = _counted(reader, monkeypatch)
        assert _ids(reader.query(page_size=4, limit=10)) == list(range(10))

    assert counted.rows == [4, 4, 2]  # the last statement asks for 2, and no more follow


def test_nothing_is_read_before_the_iterator_is(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(db_path, range(3))

    with AuditStore(db_path) as reader:
        counted = _counted(reader, monkeypatch)
        entries = reader.query(page_size=2)
        assert counted.rows == []
        assert _ids([next(entries)]) == [0]
        assert counted.rows == [2]


def test_pages_ask_the_database_for_ids_after_the_last_one_seen() -> None:
    statements: list[tuple[str, list[Any]]] = []
    table = [(n,) for n in range(1, 6)]

    def fetch(sql: str, params: list[Any]) -> list[tuple[int]]:
        statements.append((sql, params))
        after = params[-2] if "id >" in sql else 0
        return [row for row in table if row[0] > after][: params[-1]]

    pages = list(
        reads.pages(fetch, "SELECT id FROM t", " WHERE a = ?", ["x"], newest_first=False,
                    limit=None, page_size=2)
    )  # fmt: skip

    assert pages == [[(1,), (2,)], [(3,), (4,)], [(5,)]]
    assert statements == [
        ("SELECT id FROM t WHERE a = ? ORDER BY id ASC LIMIT ?", ["x", 2]),
        ("SELECT id FROM t WHERE a = ? AND id > ? ORDER BY id ASC LIMIT ?", ["x", 2, 2]),
        ("SELECT id FROM t WHERE a = ? AND id > ? ORDER BY id ASC LIMIT ?", ["x", 4, 2]),
    ]


def test_newest_first_pages_ask_for_ids_before_the_last_one_seen() -> None:
    statements: list[str] = []

    def fetch(sql: str, params: list[Any]) -> list[tuple[int]]:
        statements.append(sql)
        return [(9,)] if len(statements) == 1 else []

    assert list(reads.pages(fetch, "SELECT id FROM t", "", [], newest_first=True, limit=None,
                            page_size=1)) == [[(9,)]]  # fmt: skip
    assert statements == [
        "SELECT id FROM t ORDER BY id DESC LIMIT ?",
        "SELECT id FROM t WHERE id < ? ORDER BY id DESC LIMIT ?",
    ]


# -- arguments are checked when query() is called ------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"page_size": 0}, ValueError, "page_size must be from 1 to 100000 (got 0)"),
        ({"page_size": 100_001}, ValueError, "page_size must be from 1 to 100000 (got 100001)"),
        ({"page_size": 2.0}, TypeError, "page_size must be an int (got float)"),
        ({"page_size": True}, TypeError, "page_size must be an int (got bool)"),
        ({"limit": -1}, ValueError, "limit must be zero or more (got -1)"),
        ({"limit": "5"}, TypeError, "limit must be an int (got str)"),
        (
            {"operation": "explode"},
            ValueError,
            "query() filter operation: 'explode' is not a valid Operation "
            "(one of create, read, update, delete, execute)",
        ),
        (
            {"since": datetime(2024, 5, 1)},
            AuditStoreError,
            "since must be timezone-aware (got a naive datetime)",
        ),
        (
            {"actr": "alice"},
            TypeError,
            "query() got an unexpected keyword argument 'actr' (the filters are actor, action, "
            "operation, outcome, resource_type, resource_id, correlation_id, since, until)",
        ),
    ],
)
def test_bad_arguments_are_refused_before_any_row_is_read(
    db_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    arguments: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    _write(db_path, range(3))

    with AuditStore(db_path) as reader:
        counted = _counted(reader, monkeypatch)
        with pytest.raises(error) as raised:
            reader.query(**arguments)  # not iterated: the call itself refuses

    assert type(raised.value) is error
    assert str(raised.value) == message
    assert counted.rows == []


def test_count_and_export_refuse_an_unknown_filter_too(db_path: Path) -> None:
    _write(db_path, range(1))

    with AuditStore(db_path) as reader:
        with pytest.raises(TypeError, match=r"^count\(\) got an unexpected keyword argument 'x'"):
            reader.count(x=1)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match=r"^export\(\) got an unexpected keyword argument"):
            reader.export(x=1)


# A value the drivers would refuse only while iterating (a list: SQLite's "type 'list' is not
# supported"; an int against a text column: PostgreSQL's "operator does not exist"), or that no
# database stores: refused by the call, the same on both backends (review15b L3).
BAD_FILTERS = [
    ({"actor": ["a"]}, TypeError, "filter actor must be a str, int or UUID (got list)"),
    ({"resource_id": 3.0}, TypeError, "filter resource_id must be a str, int or UUID (got float)"),
    (
        {"correlation_id": True},
        TypeError,
        "filter correlation_id must be a str, int or UUID (got bool)",
    ),
    ({"action": 5}, TypeError, "filter action must be a str (got int)"),
    ({"resource_type": b"note"}, TypeError, "filter resource_type must be a str (got bytes)"),
    ({"operation": 1}, TypeError, "filter operation must be a str or an Operation (got int)"),
    (
        {"outcome": "x"},
        ValueError,
        "filter outcome: 'x' is not a valid Outcome (one of success, failure)",
    ),
    ({"actor": "al\x00ice"}, ValueError, "filter actor must be text a database can hold (no NUL"),
    ({"action": "\ud800"}, ValueError, "filter action must be text a database can hold (no NUL"),
]


@pytest.mark.parametrize(("filters", "error", "message"), BAD_FILTERS)
@pytest.mark.parametrize("method", ["query", "count", "export"])
def test_a_filter_value_of_a_wrong_type_is_refused_by_the_call(
    trail_db: Path | str,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    filters: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    _write(trail_db, range(3))

    with AuditStore(trail_db) as reader:
        counted = _counted(reader, monkeypatch)
        with pytest.raises(error) as raised:
            getattr(reader, method)(**filters)  # not iterated: the call itself refuses

    assert type(raised.value) is error
    assert str(raised.value).startswith(f"{method}() {message}")
    assert counted.rows == []


def test_an_id_filter_takes_an_int_or_a_uuid_as_record_stores_it(trail_db: Path | str) -> None:
    request = uuid.UUID("0190a3e2-7c1e-7000-8000-000000000001")
    trails.write(
        trail_db,
        [_entry(0), _entry(1, actor=42, resource_id=7, correlation_id=request), _entry(2)],
    )

    with AuditStore(trail_db) as reader:
        assert _ids(reader.query(actor=42)) == [1]
        assert reader.count(resource_id=7) == 1
        assert reader.count(actor=42, resource_id=7, correlation_id=request) == 1
        assert reader.count(resource_id=8) == 0
        lines = list(reader.export(correlation_id=request))

    assert [json.loads(line)["correlation_id"] for line in lines] == [str(request)]


@pytest.mark.parametrize("method", ["query", "export"])
def test_an_iterator_read_after_close_says_the_store_is_closed(
    trail_db: Path | str, method: str
) -> None:
    _write(trail_db, range(5))
    reader = AuditStore(trail_db)
    unread = getattr(reader, method)()
    started = reader.query(page_size=2)
    assert _ids([next(started)]) == [0]

    reader.close()

    for lines in (unread, started):
        with pytest.raises(AuditStoreError) as raised:
            list(lines)
        assert str(raised.value).endswith(f"{reader.path}: the store is closed")
    assert str(raised.value) == f"cannot query {reader.path}: the store is closed"


def test_an_export_dropped_unfinished_after_close_ends_quietly(trail_db: Path | str) -> None:
    """Closing the store ended the export's snapshot; the garbage collector closing the iterator
    later must not raise (it would be an 'Exception ignored' with nobody to tell)."""
    _write(trail_db, range(3))
    reader = AuditStore(trail_db)
    lines = reader.export()
    assert json.loads(next(lines))["event_id"] == "evt-000000"
    reader.close()

    lines.close()  # what the garbage collector does with a dropped generator


def test_a_database_error_between_pages_is_an_audit_store_error(trail_db: Path | str) -> None:
    _write(trail_db, range(5))

    with AuditStore(trail_db) as reader:
        entries = reader.query(page_size=2)
        assert _ids([next(entries), next(entries)]) == [0, 1]
        # No transaction of the reader's stands in the way (PostgreSQL would wait for it).
        trails.execute(trail_db, "ALTER TABLE audit_entries RENAME TO audit_entries_gone")
        with pytest.raises(AuditStoreError) as raised:
            list(entries)

    assert str(raised.value).startswith(f"cannot query {reader.path}: ")
    assert "audit_entries" in str(raised.value)


# -- rows committed while a reader pages ---------------------------------------------------------


def test_in_commit_order_rows_committed_meanwhile_appear(trail_db: Path | str) -> None:
    _write(trail_db, range(5))

    with AuditStore(trail_db) as reader:
        entries = reader.query(page_size=2)
        first = _ids([next(entries), next(entries)])
        _write(trail_db, range(5, 8))
        rest = _ids(entries)

    assert first + rest == list(range(8))


def test_newest_first_rows_committed_meanwhile_do_not_appear(trail_db: Path | str) -> None:
    _write(trail_db, range(5))

    with AuditStore(trail_db) as reader:
        entries = reader.query(page_size=2, newest_first=True)
        first = _ids([next(entries)])
        _write(trail_db, range(5, 8))
        rest = _ids(entries)

    assert first + rest == [4, 3, 2, 1, 0]


def _truncating_checkpoint(db_path: Path) -> int:
    """1 when a reader's snapshot keeps the WAL from being reset, else 0."""
    # A short busy timeout: the control case would otherwise wait out the default 5 s.
    with contextlib.closing(sqlite3.connect(db_path, timeout=0.1)) as other:
        busy, _, _ = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return int(busy)


def test_a_paging_reader_holds_no_snapshot_between_pages(db_path: Path) -> None:
    _write(db_path, range(6))

    with AuditStore(db_path) as reader:
        entries = reader.query(page_size=2)
        next(entries)
        _write(db_path, range(6, 9))  # frames in the WAL that only a reset could drop
        assert not reader._conn.in_transaction
        assert _truncating_checkpoint(db_path) == 0
        assert _ids(entries) == list(range(1, 9))

    # The control: a statement left half read keeps its snapshot, and the reset waits for it.
    with contextlib.closing(sqlite3.connect(db_path)) as holder:
        cursor = holder.execute("SELECT id FROM audit_entries")
        cursor.fetchone()
        _write(db_path, range(9, 10))
        assert _truncating_checkpoint(db_path) == 1


# -- flat memory -------------------------------------------------------------------------------


def _peak_growth(read: Any) -> int:
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        read()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - base


def test_iterating_holds_a_page_where_a_list_holds_every_row(db_path: Path) -> None:
    rows = 10_000
    _write(db_path, range(rows))

    with AuditStore(db_path) as reader:
        seen: list[int] = []
        paged = _peak_growth(lambda: seen.append(sum(1 for _ in reader.query(page_size=200))))
        listed = _peak_growth(lambda: seen.append(len(list(reader.query(page_size=200)))))

    assert seen == [rows, rows]
    # Side by side: the list grows with every row; the iterator holds one page (200 rows) and
    # one entry, whatever the number of rows.
    assert paged < 2 * 1024 * 1024, paged
    assert listed > 10 * paged, (listed, paged)


# -- export: one snapshot ---------------------------------------------------------------------


def test_an_export_is_one_snapshot_a_purge_meanwhile_leaves_no_gap(
    trail_db: Path | str,
) -> None:
    # T0 is long past: a purge of everything older than a day takes rows the export has not
    # reached yet (it reads 1000 rows per page), and another writer appends meanwhile.
    _write(trail_db, range(2500))
    with AuditStore(trail_db) as exporting, AuditStore(trail_db) as other:
        lines = exporting.export("jsonl")
        first = next(lines)
        purged = other.purge(timedelta(days=1))
        trails.write(trail_db, [_entry(9999, timestamp=datetime.now(UTC))])
        rest = list(lines)
        assert (purged.rows_deleted, other.count()) == (2500, 1)
    exported = [first, *rest]
    assert len(exported) == 2500  # as the trail was when the export started
    assert verify_exported_lines(exported).ok


@pytest.mark.parametrize("value", ["no", 0, None])
def test_newest_first_must_be_a_bool(db_path: Path, value: object) -> None:
    _write(db_path, range(3))
    with (
        AuditStore(db_path) as reader,
        pytest.raises(TypeError, match="newest_first must be a bool"),
    ):
        reader.query(newest_first=value)  # type: ignore[arg-type]
