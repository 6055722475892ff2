"""SQLite storage: opening and checking files, the schema, batch writes and typed queries."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import trails
from hypothesis import given, settings
from hypothesis import strategies as st
from support import rows_of
from tamper import unguarded

from audit_engine import AuditEntry, AuditStore, AuditStoreError, Operation, Outcome
from audit_engine.rows import entry_row
from audit_engine.storage import sqlite as store
from audit_engine.storage.chain import GENESIS_HASH, ChainHead
from audit_engine.storage.sqlite import append, migrations, schema

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
EXPECTED_COLUMNS = [
    # (name, type, not null, primary key)
    ("id", "INTEGER", 0, 1),
    ("event_id", "TEXT", 1, 0),
    ("timestamp", "TEXT", 1, 0),
    ("actor", "TEXT", 0, 0),
    ("action", "TEXT", 1, 0),
    ("operation", "TEXT", 1, 0),
    ("outcome", "TEXT", 1, 0),
    ("resource_type", "TEXT", 0, 0),
    ("resource_id", "TEXT", 0, 0),
    ("correlation_id", "TEXT", 0, 0),
    ("details", "TEXT", 1, 0),
    ("critical", "INTEGER", 1, 0),
    ("prev_hash", "TEXT", 0, 0),
    ("hash", "TEXT", 0, 0),
]
EXPECTED_INDEXES = {
    # name: (unique, columns)
    "ux_audit_entries_event_id": (1, ["event_id"]),
    "ix_audit_entries_timestamp": (0, ["timestamp"]),
    "ix_audit_entries_resource": (0, ["resource_type", "resource_id"]),
    # schema version 6: each ends in the rowid (id), so a value's rows come in id order
    "ix_audit_entries_actor": (0, ["actor"]),
    "ix_audit_entries_action": (0, ["action"]),
    "ix_audit_entries_operation": (0, ["operation"]),
    "ix_audit_entries_outcome": (0, ["outcome"]),
    "ix_audit_entries_resource_type": (0, ["resource_type"]),
}


def _table_exists(connection: sqlite3.Connection) -> bool:
    row = connection.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", (store.TABLE,)
    ).fetchone()
    return bool(row[0])


def _schema_version(connection: sqlite3.Connection) -> int:
    # The engine's own record (its meta table), not PRAGMA user_version: that is the host's.
    return schema.schema_version(connection)


def _event_ids(connection: sqlite3.Connection) -> list[str]:
    rows = connection.execute(f"SELECT event_id FROM {store.TABLE} ORDER BY id").fetchall()
    return [row[0] for row in rows]


def _entry(number: int, **fields: Any) -> AuditEntry:
    values: dict[str, Any] = {
        "event_id": f"evt-{number:03d}",
        "timestamp": T0 + timedelta(seconds=number),
        "action": "thing.do",
    }
    values.update(fields)
    return AuditEntry(**values)


# -- open_connection ---------------------------------------------------------------------------


def test_new_database_files_are_private(conn: sqlite3.Connection, db_path: Path) -> None:
    for path in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
        assert path.exists(), path
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_connection_is_wal_and_autocommit(conn: sqlite3.Connection) -> None:
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.isolation_level is None
    assert conn.in_transaction is False


@pytest.mark.parametrize(("synchronous", "pragma"), [("NORMAL", 1), ("FULL", 2)])
def test_synchronous_setting(db_path: Path, synchronous: str, pragma: int) -> None:
    connection = store.open_connection(db_path, synchronous=synchronous)
    try:
        assert connection.execute("PRAGMA synchronous").fetchone()[0] == pragma
    finally:
        connection.close()


def test_busy_timeout_is_in_seconds(db_path: Path) -> None:
    connection = store.open_connection(db_path, busy_timeout=2.5)
    try:
        assert connection.execute("PRAGMA busy_timeout").fetchone()[0] == 2500
    finally:
        connection.close()


def test_opening_waits_for_another_process_setting_up_the_file(tmp_path: Path) -> None:
    # Pool workers starting together: one creates the schema while the others open the same new
    # file with the writer's short busy timeout; they must wait for it, not fail to start.
    db_path = tmp_path / "new.db"
    holder = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    released = threading.Event()

    def release() -> None:
        holder.execute("COMMIT")
        released.set()

    timer = threading.Timer(0.5, release)  # the lock is held ten times the busy timeout
    timer.start()
    try:
        connection = store.open_connection(db_path, busy_timeout=0.05)
    finally:
        timer.join(10)
        holder.close()
    try:
        assert released.is_set()
        # Set up, then back to the short timeout the caller asked for.
        assert connection.execute("PRAGMA busy_timeout").fetchone()[0] == 50
        assert _schema_version(connection) == store.SCHEMA_VERSION
    finally:
        connection.close()


def test_setting_up_gives_up_once_its_deadline_has_passed(tmp_path: Path) -> None:
    db_path = tmp_path / "new.db"
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    waiting = sqlite3.connect(db_path, isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            schema._use_wal(waiting, time.monotonic())
    finally:
        waiting.close()
        holder.close()


def test_new_database_has_the_current_schema_version(conn: sqlite3.Connection) -> None:
    assert len(migrations.STEPS) == store.SCHEMA_VERSION
    assert _schema_version(conn) == store.SCHEMA_VERSION


def test_table_columns(conn: sqlite3.Connection) -> None:
    columns = [
        (name, type_, notnull, pk)
        for _, name, type_, notnull, _, pk in conn.execute(f"PRAGMA table_info({store.TABLE})")
    ]

    assert columns == EXPECTED_COLUMNS


def test_table_indexes(conn: sqlite3.Connection) -> None:
    indexes = {
        name: (unique, [col for _, _, col in conn.execute(f"PRAGMA index_info({name})")])
        for _, name, unique, origin, _ in conn.execute(f"PRAGMA index_list({store.TABLE})")
        if origin == "c"  # created by CREATE INDEX, not implied by a constraint
    }

    assert indexes == EXPECTED_INDEXES


def test_reopening_keeps_existing_rows(db_path: Path) -> None:
    first = store.open_connection(db_path)
    store.write_batch(first, rows_of([_entry(1)]))
    first.close()

    again = store.open_connection(db_path, create=False)
    try:
        assert _event_ids(again) == ["evt-001"]
    finally:
        again.close()


def test_missing_file_with_create_false_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"

    with pytest.raises(AuditStoreError) as exc:
        store.open_connection(missing, create=False)

    assert str(exc.value) == f"no audit database at {missing}"
    assert not missing.exists()


def test_missing_parent_directory_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "dir" / "audit.db"

    with pytest.raises(AuditStoreError) as exc:
        store.open_connection(path)

    assert str(exc.value) == f"cannot create the audit database {path}: no such directory"


@pytest.mark.parametrize("create", [True, False])
def test_a_directory_is_not_a_database(tmp_path: Path, create: bool) -> None:
    with pytest.raises(AuditStoreError) as exc:
        store.open_connection(tmp_path, create=create)

    assert str(exc.value) == f"{tmp_path} is a directory, not an audit database"


@pytest.mark.parametrize("create", [True, False])
def test_a_file_that_is_not_sqlite_is_an_error(tmp_path: Path, create: bool) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("these are not the pages you are looking for\n" * 50)

    with pytest.raises(AuditStoreError) as exc:
        store.open_connection(path, create=create)

    assert str(exc.value) == f"{path} is not a usable audit database: file is not a database"


def _foreign_database(path: Path) -> Path:
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    other.commit()
    other.close()
    return path


def test_sqlite_file_without_the_audit_table_is_an_error(tmp_path: Path) -> None:
    path = _foreign_database(tmp_path / "app.db")

    with pytest.raises(AuditStoreError) as exc:
        store.open_connection(path, create=False)

    assert str(exc.value) == f"{path} is not an audit database (no audit_entries table)"


def test_empty_file_with_create_false_is_not_an_audit_database(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()

    with pytest.raises(AuditStoreError, match="is not an audit database"):
        store.open_connection(path, create=False)


@pytest.mark.parametrize("create", [True, False])
def test_newer_schema_version_is_refused(db_path: Path, create: bool) -> None:
    connection = store.open_connection(db_path)
    connection.execute("UPDATE audit_engine_meta SET value = '99' WHERE key = 'schema_version'")
    connection.close()

    with pytest.raises(AuditStoreError) as exc:
        store.open_connection(db_path, create=create)

    assert str(exc.value) == (
        "the audit database has schema version 99; this audit_engine supports up to "
        f"{store.SCHEMA_VERSION}: upgrade audit_engine"
    )


# -- migrate -----------------------------------------------------------------------------------


def _schema(connection: sqlite3.Connection) -> list[tuple[str, str]]:
    return connection.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()


def test_migrate_is_idempotent(conn: sqlite3.Connection) -> None:
    store.write_batch(conn, rows_of([_entry(1)]))
    before = _schema(conn)

    store.migrate(conn)
    store.migrate(conn)

    assert _schema(conn) == before
    assert _schema_version(conn) == store.SCHEMA_VERSION
    assert _event_ids(conn) == ["evt-001"]
    assert conn.in_transaction is False


def test_migrate_creates_the_schema_in_its_own_committed_transaction(db_path: Path) -> None:
    connection = sqlite3.connect(db_path, isolation_level=None)
    try:
        store.migrate(connection)
        assert connection.in_transaction is False
    finally:
        connection.close()

    other = sqlite3.connect(db_path)
    try:
        assert _table_exists(other)
        assert _schema_version(other) == store.SCHEMA_VERSION
    finally:
        other.close()


def _app_connection(path: Path) -> sqlite3.Connection:
    """An application's own connection with a transaction in progress."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, item TEXT)")
    connection.execute("BEGIN")
    connection.execute("INSERT INTO orders (item) VALUES ('book')")
    return connection


def test_migrate_inside_an_open_transaction_leaves_it_open(db_path: Path) -> None:
    connection = _app_connection(db_path)
    try:
        store.migrate(connection)

        assert connection.in_transaction is True
        assert _table_exists(connection)
        assert _schema_version(connection) == store.SCHEMA_VERSION
    finally:
        connection.close()


@pytest.mark.parametrize(("finish", "kept"), [("ROLLBACK", False), ("COMMIT", True)])
def test_outer_transaction_decides_whether_the_migration_is_kept(
    db_path: Path, finish: str, kept: bool
) -> None:
    connection = _app_connection(db_path)
    try:
        store.migrate(connection)
        connection.execute(finish)

        assert _table_exists(connection) is kept
        assert _schema_version(connection) == (store.SCHEMA_VERSION if kept else 0)
        assert connection.execute("SELECT count(*) FROM orders").fetchone()[0] == int(kept)
    finally:
        connection.close()


def _broken_schema(path: Path) -> None:
    """An audit_entries table that migration 1 cannot create over (no meta table, user_version
    0: an earlier release's file of version 0)."""
    connection = sqlite3.connect(path)
    connection.execute(f"CREATE TABLE {store.TABLE} (x)")
    connection.commit()
    connection.close()


def test_failed_migration_in_a_caller_transaction_undoes_only_its_savepoint(
    db_path: Path,
) -> None:
    _broken_schema(db_path)
    connection = _app_connection(db_path)
    try:
        with pytest.raises(sqlite3.OperationalError, match="already exists"):
            store.migrate(connection)

        assert connection.in_transaction is True
        assert connection.execute("SELECT item FROM orders").fetchall() == [("book",)]
        assert _schema_version(connection) == 0
    finally:
        connection.close()


def test_failed_migration_in_its_own_transaction_rolls_back(db_path: Path) -> None:
    _broken_schema(db_path)
    connection = sqlite3.connect(db_path, isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError, match="already exists"):
            store.migrate(connection)

        assert connection.in_transaction is False
        assert _schema_version(connection) == 0
    finally:
        connection.close()


# -- writes ------------------------------------------------------------------------------------


def test_write_batch_commits_in_order(conn: sqlite3.Connection, db_path: Path) -> None:
    store.write_batch(conn, rows_of([_entry(3), _entry(1), _entry(2)]))

    assert conn.in_transaction is False
    with AuditStore(db_path) as reader:  # another connection sees the commit
        assert [e.event_id for e in reader.query()] == ["evt-003", "evt-001", "evt-002"]


def test_write_batch_stores_the_documented_row_form(conn: sqlite3.Connection) -> None:
    entry = _entry(
        1,
        timestamp=datetime(2024, 5, 1, 14, 0, 0, 123, tzinfo=timezone(timedelta(hours=2))),
        actor="alice",
        operation=Operation.DELETE,
        outcome=Outcome.FAILURE,
        resource_type="doc",
        resource_id="7",
        correlation_id="req-1",
        details={"b": 2, "a": "é"},
        critical=True,
    )

    store.write_batch(conn, rows_of([entry]))

    row = conn.execute(f"SELECT * FROM {store.TABLE}").fetchone()
    stored = (
        1,
        "evt-001",
        "2024-05-01T12:00:00.000123Z",
        "alice",
        "thing.do",
        "delete",
        "failure",
        "doc",
        "7",
        "req-1",
        '{"a":"é","b":2}',
        1,
    )
    genesis = "0" * 64
    assert row == (*stored, genesis, row[-1])
    # The documented canonical form (docs/integrity.md), computed by hand: version, the stored
    # values as text (NULL as U+0000), prev_hash, joined by U+001F, UTF-8, SHA-256.
    canonical = "\x1f".join(["1", *(str(v) for v in stored), genesis]).encode("utf-8")
    assert row[-1] == hashlib.sha256(canonical).hexdigest()


def test_write_batch_is_atomic(conn: sqlite3.Connection) -> None:
    store.write_batch(conn, rows_of([_entry(1)]))

    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE constraint failed"):
        store.write_batch(conn, rows_of([_entry(2), _entry(3), _entry(2, action="dup")]))

    assert conn.in_transaction is False
    assert _event_ids(conn) == ["evt-001"]
    store.write_batch(conn, rows_of([_entry(2)]))  # the connection is still usable
    assert _event_ids(conn) == ["evt-001", "evt-002"]


def test_write_batch_rejects_an_id_already_stored(conn: sqlite3.Connection) -> None:
    store.write_batch(conn, rows_of([_entry(1)]))

    with pytest.raises(sqlite3.IntegrityError):
        store.write_batch(conn, rows_of([_entry(2), _entry(1)]))

    assert _event_ids(conn) == ["evt-001"]


def test_write_batch_of_nothing_writes_nothing(conn: sqlite3.Connection) -> None:
    store.write_batch(conn, rows_of([]))

    assert _event_ids(conn) == []
    assert conn.in_transaction is False


@pytest.mark.parametrize(("finish", "kept"), [("ROLLBACK", []), ("COMMIT", ["evt-001"])])
def test_write_in_caller_transaction_creates_the_schema_and_does_not_commit(
    db_path: Path, finish: str, kept: list[str]
) -> None:
    connection = _app_connection(db_path)
    try:
        store.write_in_caller_transaction(connection, entry_row(_entry(1)))

        assert connection.in_transaction is True
        assert _event_ids(connection) == ["evt-001"]
        connection.execute(finish)

        assert _table_exists(connection) is bool(kept)  # the schema shares the caller's fate
        if kept:
            assert _event_ids(connection) == kept
    finally:
        connection.close()


@pytest.mark.parametrize(("finish", "kept"), [("ROLLBACK", []), ("COMMIT", ["evt-002"])])
def test_write_in_caller_transaction_with_the_schema_in_place(
    db_path: Path, finish: str, kept: list[str]
) -> None:
    store.open_connection(db_path).close()
    connection = _app_connection(db_path)
    try:
        store.write_in_caller_transaction(connection, entry_row(_entry(2)))
        assert connection.in_transaction is True
        connection.execute(finish)

        assert _event_ids(connection) == kept
    finally:
        connection.close()


def test_write_in_caller_transaction_with_a_legacy_connection(db_path: Path) -> None:
    # Python's default isolation level: the app's INSERT opened a transaction implicitly.
    connection = sqlite3.connect(db_path)
    try:
        connection.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT)")
        connection.execute("INSERT INTO orders (item) VALUES ('book')")
        store.write_in_caller_transaction(connection, entry_row(_entry(1)))
        connection.rollback()

        assert connection.execute("SELECT count(*) FROM orders").fetchone()[0] == 0
        assert not _table_exists(connection)
    finally:
        connection.close()


def test_write_in_caller_transaction_reraises_other_errors(db_path: Path) -> None:
    store.open_connection(db_path).close()
    read_only = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store.write_in_caller_transaction(read_only, entry_row(_entry(1)))
    finally:
        read_only.close()


# -- helpers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), "2024-01-02T03:04:05.000000Z"),
        (datetime(2024, 1, 2, 3, 4, 5, 7, tzinfo=UTC), "2024-01-02T03:04:05.000007Z"),
        (
            datetime(2024, 1, 2, 1, 0, tzinfo=timezone(timedelta(hours=2))),
            "2024-01-01T23:00:00.000000Z",
        ),
        (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "9999-12-31T23:59:59.999999Z"),
    ],
)
def test_format_timestamp(value: datetime, text: str) -> None:
    assert store.format_timestamp(value) == text


def test_format_timestamp_is_fixed_width_and_sorts_like_time() -> None:
    tz_east, tz_west = timezone(timedelta(hours=9)), timezone(timedelta(hours=-7))
    moments = [
        datetime(2024, 1, 1, tzinfo=UTC),
        datetime(2024, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        datetime(2024, 1, 1, 8, 0, 0, 2, tzinfo=tz_east),  # 2023-12-31T23:00 UTC
        datetime(2023, 12, 31, 18, 30, tzinfo=tz_west),  # 2024-01-01T01:30 UTC
        datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2100, 6, 1, tzinfo=UTC),
        datetime(1000, 1, 1, tzinfo=UTC),
    ]

    texts = [store.format_timestamp(m) for m in moments]

    assert {len(t) for t in texts} == {27}
    assert sorted(texts) == [store.format_timestamp(m) for m in sorted(moments)]


def test_timestamps_before_year_1000_round_trip_and_sort(
    conn: sqlite3.Connection, db_path: Path
) -> None:
    old = _entry(1, timestamp=datetime(999, 1, 1, tzinfo=UTC))
    new = _entry(2, timestamp=datetime(2024, 1, 1, tzinfo=UTC))
    store.write_batch(conn, rows_of([old, new]))

    with AuditStore(db_path) as reader:
        assert reader.count(since=datetime(2000, 1, 1, tzinfo=UTC)) == 1
        assert list(reader.query()) == [old, new]


def test_is_busy_recognises_a_locked_database(db_path: Path) -> None:
    holder = store.open_connection(db_path)
    waiter = store.open_connection(db_path, busy_timeout=0)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError) as exc:
            waiter.execute("BEGIN IMMEDIATE")

        assert store.is_busy(exc.value) is True
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        waiter.close()


def test_is_busy_is_false_for_other_errors(conn: sqlite3.Connection) -> None:
    with pytest.raises(sqlite3.OperationalError) as no_table:
        conn.execute("SELECT * FROM no_such_table")
    store.write_batch(conn, rows_of([_entry(1)]))
    with pytest.raises(sqlite3.IntegrityError) as duplicate:
        store.write_batch(conn, rows_of([_entry(1)]))

    assert store.is_busy(no_table.value) is False
    assert store.is_busy(duplicate.value) is False
    assert store.is_busy(TimeoutError("database is locked")) is False


# -- AuditStore --------------------------------------------------------------------------------

INJECTION = "' OR 1=1 --"


@pytest.fixture
def stored(conn: sqlite3.Connection) -> list[AuditEntry]:
    """Four entries committed in this order, one second apart from T0."""
    entries = _four_entries()
    store.write_batch(conn, rows_of(entries))
    return entries


@pytest.fixture
def stored_trail(trail_db: Path | str) -> list[AuditEntry]:
    """The same four entries in the test's trail, on each backend."""
    entries = _four_entries()
    trails.write(trail_db, entries)
    return entries


def _four_entries() -> list[AuditEntry]:
    return [
        _entry(
            0,
            actor="alice",
            action="doc.open",
            operation=Operation.READ,
            resource_type="doc",
            resource_id="1",
            correlation_id="c1",
        ),
        _entry(
            1,
            actor="bob",
            action="doc.save",
            operation=Operation.UPDATE,
            resource_type="doc",
            resource_id="2",
            correlation_id="c1",
            details={"size": 10},
        ),
        _entry(
            2,
            actor="alice",
            action="doc.delete",
            operation=Operation.DELETE,
            outcome=Outcome.FAILURE,
            resource_type="doc",
            resource_id="2",
            correlation_id="c2",
            critical=True,
        ),
        _entry(3, action="job.run", resource_type="job", resource_id="9"),
    ]


FILTER_CASES = [
    pytest.param({}, [0, 1, 2, 3], id="no-filter"),
    pytest.param({"actor": "alice"}, [0, 2], id="actor"),
    pytest.param({"action": "doc.open"}, [0], id="action"),
    pytest.param({"operation": Operation.READ}, [0], id="operation-enum"),
    pytest.param({"operation": "update"}, [1], id="operation-str"),
    pytest.param({"operation": "create"}, [], id="operation-none-match"),
    pytest.param({"outcome": Outcome.FAILURE}, [2], id="outcome-enum"),
    pytest.param({"outcome": "success"}, [0, 1, 3], id="outcome-str"),
    pytest.param({"resource_type": "doc"}, [0, 1, 2], id="resource_type"),
    pytest.param({"resource_id": "2"}, [1, 2], id="resource_id"),
    pytest.param({"resource_type": "job", "resource_id": "9"}, [3], id="resource"),
    pytest.param({"correlation_id": "c1"}, [0, 1], id="correlation_id"),
    pytest.param({"since": T0 + timedelta(seconds=1)}, [1, 2, 3], id="since-inclusive"),
    pytest.param({"until": T0 + timedelta(seconds=2)}, [0, 1], id="until-exclusive"),
    pytest.param(
        {"since": T0 + timedelta(seconds=1), "until": T0 + timedelta(seconds=3)},
        [1, 2],
        id="since-until",
    ),
    pytest.param(
        {"since": T0.astimezone(timezone(timedelta(hours=-5))) + timedelta(seconds=2)},
        [2, 3],
        id="since-other-timezone",
    ),
    pytest.param({"since": T0 + timedelta(microseconds=1)}, [1, 2, 3], id="since-microsecond"),
    pytest.param({"actor": "alice", "outcome": "failure"}, [2], id="combined"),
    pytest.param({"actor": "nobody"}, [], id="no-match"),
    pytest.param({"actor": INJECTION}, [], id="sql-in-actor"),
    pytest.param({"action": "doc.open' OR '1'='1"}, [], id="sql-in-action"),
    pytest.param({"resource_id": "1; DROP TABLE audit_entries"}, [], id="sql-in-resource_id"),
]


@pytest.mark.parametrize(("filters", "expected"), FILTER_CASES)
def test_query_filters(
    trail_db: Path | str,
    stored_trail: list[AuditEntry],
    filters: dict[str, Any],
    expected: list[int],
) -> None:
    with AuditStore(trail_db) as reader:
        assert list(reader.query(**filters)) == [stored_trail[i] for i in expected]
        assert reader.count() == len(stored_trail)  # the table survived whatever the filter held


@pytest.mark.parametrize(("filters", "expected"), FILTER_CASES)
def test_count_uses_the_same_filters(
    trail_db: Path | str,
    stored_trail: list[AuditEntry],
    filters: dict[str, Any],
    expected: list[int],
) -> None:
    with AuditStore(trail_db) as reader:
        assert reader.count(**filters) == len(expected)


def test_values_with_sql_in_them_are_matched_literally(
    conn: sqlite3.Connection, db_path: Path, stored: list[AuditEntry]
) -> None:
    tricky = _entry(10, actor=INJECTION)
    store.write_batch(conn, rows_of([tricky]))

    with AuditStore(db_path) as reader:
        assert list(reader.query(actor=INJECTION)) == [tricky]
        assert reader.count(actor=INJECTION) == 1


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"limit": 2}, [0, 1]),
        ({"limit": 0}, []),
        ({"limit": 10}, [0, 1, 2, 3]),
        ({"newest_first": True}, [3, 2, 1, 0]),
        ({"newest_first": True, "limit": 1}, [3]),
        ({"actor": "alice", "newest_first": True, "limit": 1}, [2]),
    ],
)
def test_query_limit_and_order(
    trail_db: Path | str,
    stored_trail: list[AuditEntry],
    options: dict[str, Any],
    expected: list[int],
) -> None:
    with AuditStore(trail_db) as reader:
        assert list(reader.query(**options)) == [stored_trail[i] for i in expected]


def test_query_order_is_commit_order_not_timestamp_order(
    conn: sqlite3.Connection, db_path: Path
) -> None:
    later, earlier = _entry(1, timestamp=T0 + timedelta(hours=1)), _entry(2, timestamp=T0)
    store.write_batch(conn, rows_of([later]))
    store.write_batch(conn, rows_of([earlier]))

    with AuditStore(db_path) as reader:
        assert list(reader.query()) == [later, earlier]
        assert list(reader.query(newest_first=True)) == [earlier, later]


def test_negative_limit_is_an_error(trail_db: Path | str, stored_trail: list[AuditEntry]) -> None:
    with AuditStore(trail_db) as reader, pytest.raises(ValueError, match="limit") as exc:
        reader.query(limit=-1)

    assert str(exc.value) == "limit must be zero or more (got -1)"


@pytest.mark.parametrize("method", ["query", "count"])
@pytest.mark.parametrize("bound", ["since", "until"])
def test_naive_time_bound_is_an_error(
    trail_db: Path | str, stored_trail: list[AuditEntry], method: str, bound: str
) -> None:
    with AuditStore(trail_db) as reader, pytest.raises(AuditStoreError) as exc:
        getattr(reader, method)(**{bound: datetime(2024, 5, 1, 12, 0)})

    assert str(exc.value) == f"{bound} must be timezone-aware (got a naive datetime)"


# T0 = 2024-05-01T12:00:00Z; the stored entries are 0, 1, 2 and 3 seconds after it.
ISO_BOUNDS = [
    pytest.param("2024-05-01T12:00:02Z", 2, id="utc-z"),
    pytest.param("2024-05-01T14:00:02+02:00", 2, id="offset"),
    pytest.param("2024-05-01T12:00:02", 2, id="naive-text-is-utc"),
    pytest.param("2024-05-01", 4, id="date"),
    pytest.param("2024-05-02", 0, id="next-day"),
]


@pytest.mark.parametrize(("since", "count"), ISO_BOUNDS)
def test_since_takes_an_iso_8601_string(
    trail_db: Path | str, stored_trail: list[AuditEntry], since: str, count: int
) -> None:
    # Issue 11 item 13: count(since="2020-01-01") raised AttributeError.
    with AuditStore(trail_db) as reader:
        assert reader.count(since=since) == count
        assert len(list(reader.query(since=since))) == count
        assert len(list(reader.export(since=since))) == count
        assert reader.count(until=since) == 4 - count


@pytest.mark.parametrize("method", ["query", "count"])
def test_an_unreadable_time_string_names_the_argument(
    trail_db: Path | str, stored_trail: list[AuditEntry], method: str
) -> None:
    with AuditStore(trail_db) as reader, pytest.raises(AuditStoreError) as exc:
        getattr(reader, method)(until="last tuesday")

    assert str(exc.value) == (
        "until must be an ISO-8601 date or time, e.g. 2026-01-31T12:00:00Z (got 'last tuesday')"
    )


def test_a_time_bound_of_another_type_is_a_type_error(
    trail_db: Path | str, stored_trail: list[AuditEntry]
) -> None:
    with AuditStore(trail_db) as reader, pytest.raises(TypeError) as exc:
        reader.count(since=1714564800)  # type: ignore[arg-type]

    assert str(exc.value) == "since must be a datetime or an ISO-8601 string (got int)"


def _foreign_row(connection: sqlite3.Connection, details: str, operation: str = "update") -> int:
    """A row another tool wrote straight into the table (its chain fields do not matter), with
    the append-only guard out of the way (it refuses such rows)."""
    with unguarded(connection):
        cursor = connection.execute(
            f"INSERT INTO {store.TABLE} (event_id, timestamp, action, operation, outcome, "
            "details, critical) VALUES "
            "('foreign', '2024-05-01T12:00:09.000000Z', 'x.y', ?, 'success', ?, 0)",
            (operation, details),
        )
    return int(cursor.lastrowid or 0)


@pytest.mark.parametrize(
    ("details", "problem"),
    [
        ("", "its details are not JSON (Expecting value: line 1 column 1 (char 0))"),
        ("not json", "its details are not JSON (Expecting value: line 1 column 1 (char 0))"),
    ],
)
def test_a_foreign_row_that_is_not_an_entry_is_named(
    conn: sqlite3.Connection, db_path: Path, stored: list[AuditEntry], details: str, problem: str
) -> None:
    # Issue 11 item 14: query died with an anonymous "Expecting value: line 1 column 1".
    row_id = _foreign_row(conn, details)

    with AuditStore(db_path) as reader, pytest.raises(AuditStoreError) as exc:
        list(reader.query())

    assert str(exc.value) == f"row {row_id} cannot be read: {problem}"


def test_a_foreign_row_whose_details_are_not_an_object_is_named(
    conn: sqlite3.Connection, db_path: Path, stored: list[AuditEntry]
) -> None:
    row_id = _foreign_row(conn, "[1, 2]")

    with AuditStore(db_path) as reader, pytest.raises(AuditStoreError) as exc:
        list(reader.query())

    # The rest of the message is the model's own (it names the field).
    assert str(exc.value).startswith(f"row {row_id} cannot be read: it is not a valid entry (")
    assert "details must be a JSON object" in str(exc.value)


def test_a_foreign_row_with_an_unknown_operation_names_the_row_and_the_field(
    conn: sqlite3.Connection, db_path: Path, stored: list[AuditEntry]
) -> None:
    row_id = _foreign_row(conn, "{}", operation="explode")

    with AuditStore(db_path) as reader, pytest.raises(AuditStoreError) as exc:
        list(reader.query())

    assert str(exc.value).startswith(
        f"row {row_id} cannot be read: it is not a valid entry (operation: Input should be "
    )


@pytest.mark.parametrize("field", ["operation", "outcome"])
def test_unknown_enum_filter_is_an_error(
    trail_db: Path | str, stored_trail: list[AuditEntry], field: str
) -> None:
    with AuditStore(trail_db) as reader, pytest.raises(ValueError, match="'bogus' is not a valid"):
        reader.query(**{field: "bogus"})


def test_round_trip_equals_the_original(trail_db: Path | str) -> None:
    original = AuditEntry(
        timestamp=datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-3))),
        actor="zoë",
        action="invoice.pay",
        operation=Operation.UPDATE,
        outcome=Outcome.FAILURE,
        resource_type="invoice",
        resource_id="INV-2024-0001",
        correlation_id="req-🦊",
        details={"amount": 12.5, "lines": [{"sku": "A1", "qty": 2}], "note": None, "ok": False},
        critical=True,
    )
    trails.write(trail_db, [original])

    with AuditStore(trail_db) as reader:
        [copy] = reader.query()

    assert copy == original
    assert copy.details_json == original.details_json
    assert copy.timestamp == original.timestamp


def test_round_trip_of_an_entry_with_minimal_fields(trail_db: Path | str) -> None:
    original = AuditEntry(action="a")
    trails.write(trail_db, [original])

    with AuditStore(trail_db) as reader:
        assert list(reader.query()) == [original]


def test_query_reads_details_larger_than_the_default_limit(trail_db: Path | str) -> None:
    # Stored rows were checked against the recording service's limit, which may be higher.
    big = AuditEntry.model_validate(
        {"action": "a", "details": {"blob": "x" * 100_000}},
        context={"max_details_bytes": 200_000},
    )
    trails.write(trail_db, [big])

    with AuditStore(trail_db) as reader:
        assert list(reader.query()) == [big]


def test_audit_store_on_a_missing_file_does_not_create_it(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"

    with pytest.raises(AuditStoreError) as exc:
        AuditStore(missing)

    assert str(exc.value) == f"no audit database at {missing}"
    assert not missing.exists()


def test_audit_store_on_a_foreign_database_is_an_error(tmp_path: Path) -> None:
    path = _foreign_database(tmp_path / "app.db")

    with pytest.raises(AuditStoreError) as exc:
        AuditStore(path)

    assert str(exc.value) == f"{path} is not an audit database (no audit_entries table)"


def test_audit_store_leaves_a_foreign_database_unchanged(tmp_path: Path) -> None:
    path = _foreign_database(tmp_path / "app.db")

    with pytest.raises(AuditStoreError):
        AuditStore(path)

    check = sqlite3.connect(path)
    try:
        assert check.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        check.close()


def test_audit_store_is_a_context_manager_that_closes(
    db_path: Path, stored: list[AuditEntry]
) -> None:
    with AuditStore(db_path) as reader:
        assert reader.path == db_path
        assert reader.count() == 4

    with pytest.raises(AuditStoreError, match="the store is closed"):
        reader.count()
    reader.close()  # idempotent


def test_audit_store_accepts_a_string_path(db_path: Path, stored: list[AuditEntry]) -> None:
    reader = AuditStore(str(db_path))
    try:
        assert reader.path == db_path
        assert list(reader.query(limit=1)) == stored[:1]
    finally:
        reader.close()


# -- the chained insert ------------------------------------------------------------------------

ROW_WIDTH = len(EXPECTED_COLUMNS)  # the values one row binds in the multi-row INSERT


@contextlib.contextmanager
def _traced(connection: sqlite3.Connection) -> Iterator[list[str]]:
    """The SQL statements ``connection`` runs inside the block, in order.

    SQLite's trace reports a statement again each time a trigger of the append-only guard runs
    for one of its rows: those repeats are left out (the engine never runs one statement twice
    in a row).
    """
    statements: list[str] = []

    def trace(statement: str) -> None:
        if not statements or statements[-1] != statement:
            statements.append(statement)

    connection.set_trace_callback(trace)
    try:
        yield statements
    finally:
        connection.set_trace_callback(None)


def _verbs(statements: list[str]) -> list[str]:
    return [statement.split()[0].upper() for statement in statements]


def _newest(connection: sqlite3.Connection) -> tuple[int, str]:
    row = connection.execute(
        f"SELECT id, hash FROM {store.TABLE} ORDER BY id DESC LIMIT 1"
    ).fetchone()
    return int(row[0]), str(row[1])


def _row_ids(connection: sqlite3.Connection) -> list[int]:
    return [row[0] for row in connection.execute(f"SELECT id FROM {store.TABLE} ORDER BY id")]


def _row_count(connection: sqlite3.Connection) -> int:
    count: int = connection.execute(f"SELECT count(*) FROM {store.TABLE}").fetchone()[0]
    return count


def _prev_hash(connection: sqlite3.Connection, row_id: int) -> str:
    row = connection.execute(
        f"SELECT prev_hash FROM {store.TABLE} WHERE id = ?", (row_id,)
    ).fetchone()
    return str(row[0])


def _assert_chain_verifies(db_path: Path, head: tuple[int, str]) -> None:
    with AuditStore(db_path) as reader:
        report = reader.verify(expected_head=ChainHead(id=head[0], hash=head[1]))
    assert report.ok is True, report
    assert report.head == ChainHead(id=head[0], hash=head[1])


def _entries(numbers: range) -> list[AuditEntry]:
    return [_entry(n) for n in numbers]


def test_chunk_ladder_is_the_largest_then_the_powers_of_two_below_it() -> None:
    assert store.chunk_ladder(500) == {500, 256, 128, 64, 32, 16, 8, 4, 2, 1}
    assert store.chunk_ladder(256) == {256, 128, 64, 32, 16, 8, 4, 2, 1}
    assert store.chunk_ladder(7) == {7, 4, 2, 1}
    assert store.chunk_ladder(2) == {2, 1}
    assert store.chunk_ladder(1) == {1}


@pytest.mark.parametrize("largest", [1, 2, 7, 71, 500])
def test_chunk_lengths_of_nothing_is_empty(largest: int) -> None:
    assert store.chunk_lengths(0, largest) == []


@pytest.mark.parametrize(
    ("count", "largest", "lengths"),
    [
        (1, 500, [1]),
        (3, 500, [2, 1]),
        (500, 500, [500]),
        (1000, 500, [500, 500]),
        (1001, 500, [500, 500, 1]),
        (755, 500, [500, 128, 64, 32, 16, 8, 4, 2, 1]),
        (50, 7, [7, 7, 7, 7, 7, 7, 7, 1]),
        (7, 8, [4, 2, 1]),
        (5, 1, [1, 1, 1, 1, 1]),
    ],
)
def test_chunk_lengths_examples(count: int, largest: int, lengths: list[int]) -> None:
    assert store.chunk_lengths(count, largest) == lengths


@settings(max_examples=300)
@given(count=st.integers(min_value=0, max_value=5000), largest=st.integers(1, 3000))
def test_chunk_lengths_cut_any_count_into_ladder_lengths(count: int, largest: int) -> None:
    lengths = store.chunk_lengths(count, largest)

    assert sum(lengths) == count
    assert set(lengths) <= store.chunk_ladder(largest)
    assert lengths == sorted(lengths, reverse=True)
    # Full-size chunks while they fit; the rest as distinct smaller lengths (so a batch is never
    # more than a handful of statements beyond count // largest).
    assert lengths.count(largest) == count // largest
    shorter = [length for length in lengths if length != largest]
    assert len(shorter) == len(set(shorter))


def test_max_chunk_follows_the_connections_variable_limit(conn: sqlite3.Connection) -> None:
    limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    assert store.max_chunk(conn) == (limit - 1) // ROW_WIDTH

    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    assert store.max_chunk(conn) == 71
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 100)
    assert store.max_chunk(conn) == 7
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 7 * ROW_WIDTH)  # one short of 7 rows
    assert store.max_chunk(conn) == 6
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, ROW_WIDTH + 1)
    assert store.max_chunk(conn) == 1


@pytest.mark.parametrize("own_transaction", [True, False], ids=["write_batch", "insert_entries"])
def test_a_low_variable_limit_cuts_a_batch_into_statements_that_fit(
    conn: sqlite3.Connection, db_path: Path, own_transaction: bool
) -> None:
    store.write_batch(conn, rows_of([_entry(0)]))  # the first chunk chains from a stored row
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 100)  # 7 rows of 14 values, and the tail
    entries = _entries(range(1, 51))

    with _traced(conn) as statements:
        if own_transaction:
            tail = store.write_batch(conn, rows_of(entries), largest=500)
        else:
            conn.execute("BEGIN IMMEDIATE")
            tail = store.insert_entries(conn, rows_of(entries), largest=500)
            conn.execute("COMMIT")

    inserts = [s for s in statements if s.startswith("INSERT")]
    assert len(inserts) == len(store.chunk_lengths(50, 7)) == 8
    assert _verbs(statements).count("BEGIN") == 1
    assert _verbs(statements).count("COMMIT") == 1
    assert _event_ids(conn) == [e.event_id for e in [_entry(0), *entries]]
    assert _row_ids(conn) == list(range(1, 52))
    assert tail == _newest(conn) == (51, tail[1])
    _assert_chain_verifies(db_path, tail)


def test_append_batch_after_the_newest_row_returns_the_stored_tail(
    conn: sqlite3.Connection, db_path: Path
) -> None:
    remembered = store.write_batch(conn, rows_of([_entry(1)]))

    with _traced(conn) as statements:
        tail = store.append_batch(conn, rows_of(_entries(range(2, 6))), remembered)

    assert _verbs(statements) == ["INSERT"]  # one statement, its own transaction
    assert conn.in_transaction is False
    assert tail is not None
    assert tail == _newest(conn) == (5, tail[1])
    assert _prev_hash(conn, 2) == remembered[1]
    # Stored rows (the writer's form) chain the same way, from the tail just returned.
    again = store.append_batch(conn, [store.entry_row(e) for e in _entries(range(6, 8))], tail)
    assert again is not None
    assert again == _newest(conn) == (7, again[1])
    assert _event_ids(conn) == [f"evt-{n:03d}" for n in range(1, 8)]
    assert _row_ids(conn) == list(range(1, 8))
    _assert_chain_verifies(db_path, again)
    with contextlib.closing(sqlite3.connect(db_path)) as other:  # committed: others see it
        assert _row_count(other) == 7


def test_append_batch_after_a_stale_tail_writes_nothing_and_commit_batch_falls_back(
    conn: sqlite3.Connection, db_path: Path
) -> None:
    remembered = store.write_batch(conn, rows_of([_entry(1)]))
    other = store.open_connection(db_path)
    try:
        moved = store.write_batch(other, rows_of([_entry(2)]))  # another writer moves the tail
    finally:
        other.close()

    assert store.append_batch(conn, rows_of([_entry(3)]), remembered) is None
    assert conn.in_transaction is False
    assert _event_ids(conn) == ["evt-001", "evt-002"]

    with _traced(conn) as statements:
        tail = store.commit_batch(
            conn, rows_of([_entry(3), _entry(4)]), remembered, 500, versions_known=True
        )

    # The guarded append was tried first (2 is a ladder length), then write_batch read the tail.
    assert _verbs(statements)[:2] == ["INSERT", "BEGIN"]
    assert _verbs(statements)[-1] == "COMMIT"
    assert tail == _newest(conn) == (4, tail[1])
    assert _prev_hash(conn, 3) == moved[1]
    assert _row_ids(conn) == [1, 2, 3, 4]
    assert _event_ids(conn) == ["evt-001", "evt-002", "evt-003", "evt-004"]
    _assert_chain_verifies(db_path, tail)


def test_append_batch_after_a_purge_of_every_row_chains_from_the_anchor(
    conn: sqlite3.Connection, db_path: Path
) -> None:
    remembered = store.write_batch(conn, rows_of(_entries(range(1, 4))))
    with AuditStore(db_path) as audit:
        assert audit.purge(T0 + timedelta(hours=1)).rows_deleted == 3
    assert _row_count(conn) == 0
    assert store.chain_tail(conn) == remembered  # the anchor is the purged newest row

    tail = store.append_batch(conn, rows_of([_entry(4)]), remembered)

    assert tail is not None
    assert tail == _newest(conn) == (4, tail[1])
    assert _prev_hash(conn, 4) == remembered[1]
    _assert_chain_verifies(db_path, tail)


def test_append_batch_after_an_anchor_that_moved_writes_nothing(
    conn: sqlite3.Connection, db_path: Path
) -> None:
    remembered = store.write_batch(conn, rows_of(_entries(range(1, 4))))
    with contextlib.closing(store.open_connection(db_path, busy_timeout=1.0)) as other:
        store.write_batch(other, rows_of(_entries(range(4, 6))))  # someone else appended ...
    with AuditStore(db_path) as audit:  # ... and then every row was purged
        assert audit.purge(T0 + timedelta(hours=1)).rows_deleted == 5
    assert store.chain_tail(conn)[0] == 5

    assert store.append_batch(conn, rows_of([_entry(6)]), remembered) is None
    assert _row_count(conn) == 0

    tail = store.commit_batch(conn, rows_of([_entry(6)]), remembered, 500, versions_known=True)

    assert tail == _newest(conn) == (6, tail[1])
    _assert_chain_verifies(db_path, tail)


def test_append_batch_into_a_new_file_chains_from_genesis(
    conn: sqlite3.Connection, db_path: Path
) -> None:
    tail = store.append_batch(conn, rows_of([_entry(1)]), (0, GENESIS_HASH))

    assert tail is not None
    assert tail == _newest(conn) == (1, tail[1])
    assert _prev_hash(conn, 1) == GENESIS_HASH
    _assert_chain_verifies(db_path, tail)


def test_append_batch_into_an_empty_table_with_an_unknown_tail_writes_nothing(
    conn: sqlite3.Connection,
) -> None:
    assert store.append_batch(conn, rows_of([_entry(1)]), (3, "f" * 64)) is None
    assert _row_count(conn) == 0


def test_a_purge_that_keeps_the_newest_row_does_not_move_the_tail(
    conn: sqlite3.Connection, db_path: Path
) -> None:
    remembered = store.write_batch(conn, rows_of(_entries(range(1, 4))))
    with AuditStore(db_path) as audit:
        assert audit.purge(T0 + timedelta(seconds=3)).rows_deleted == 2

    tail = store.append_batch(conn, rows_of([_entry(4)]), remembered)

    assert tail is not None
    assert tail == _newest(conn) == (4, tail[1])
    assert _row_ids(conn) == [3, 4]
    _assert_chain_verifies(db_path, tail)


def test_commit_batch_of_a_length_off_the_ladder_is_one_transaction(
    conn: sqlite3.Connection, db_path: Path
) -> None:
    remembered = store.write_batch(conn, rows_of([_entry(1)]))
    changes = conn.total_changes

    with _traced(conn) as statements:
        tail = store.commit_batch(conn, rows_of(_entries(range(2, 5))), remembered, 500)

    verbs = _verbs(statements)
    assert statements[0] == "BEGIN IMMEDIATE"
    assert verbs[-1] == "COMMIT"
    assert verbs.count("BEGIN") == verbs.count("COMMIT") == 1
    assert verbs.count("INSERT") == len(store.chunk_lengths(3, 500)) == 2
    assert conn.total_changes - changes == 3
    assert tail == _newest(conn) == (4, tail[1])
    _assert_chain_verifies(db_path, tail)


@pytest.mark.parametrize("count", [1, 2, 4, 8, 64, 500])
def test_commit_batch_of_a_ladder_length_after_a_known_tail_is_one_statement(
    conn: sqlite3.Connection, db_path: Path, count: int
) -> None:
    remembered = store.write_batch(conn, rows_of([_entry(0)]))
    changes = conn.total_changes

    with _traced(conn) as statements:
        tail = store.commit_batch(
            conn, rows_of(_entries(range(1, count + 1))), remembered, 500, versions_known=True
        )

    assert _verbs(statements) == ["INSERT"]  # no BEGIN, no read of the tail, no COMMIT
    assert conn.in_transaction is False
    assert conn.total_changes - changes == count
    assert tail == _newest(conn) == (count + 1, tail[1])
    _assert_chain_verifies(db_path, tail)


def test_commit_batch_without_a_known_tail_reads_it_in_a_transaction(
    conn: sqlite3.Connection, db_path: Path
) -> None:
    store.write_batch(conn, rows_of([_entry(0)]))

    with _traced(conn) as statements:
        tail = store.commit_batch(conn, rows_of(_entries(range(1, 5))), None, 500)

    verbs = _verbs(statements)
    assert verbs[0] == "BEGIN"
    assert verbs[-1] == "COMMIT"
    assert verbs.count("INSERT") == 1
    assert tail == _newest(conn) == (5, tail[1])
    _assert_chain_verifies(db_path, tail)


@pytest.mark.parametrize("position", [0, 2, 4], ids=["first", "middle", "last"])
def test_append_batch_with_a_failing_row_stores_nothing_of_the_statement(
    conn: sqlite3.Connection, db_path: Path, position: int
) -> None:
    remembered = store.write_batch(conn, rows_of([_entry(1)]))
    batch = _entries(range(2, 7))
    batch[position] = _entry(1, action="dup")  # event_id already stored

    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE constraint failed"):
        store.append_batch(conn, rows_of(batch), remembered)

    assert conn.in_transaction is False
    assert _event_ids(conn) == ["evt-001"]
    # The tail did not move: the writer's next attempt (say, with the bad row split off) appends.
    tail = store.append_batch(conn, rows_of(_entries(range(2, 6))), remembered)
    assert tail is not None
    assert _row_ids(conn) == [1, 2, 3, 4, 5]
    _assert_chain_verifies(db_path, tail)


def test_commit_batch_with_a_duplicate_inside_the_batch_stores_nothing(
    conn: sqlite3.Connection,
) -> None:
    remembered = store.write_batch(conn, rows_of([_entry(1)]))
    batch = [_entry(2), _entry(3), _entry(2, action="dup"), _entry(4)]

    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE constraint failed"):
        store.commit_batch(
            conn, rows_of(batch), remembered, 500, versions_known=True
        )  # 4 rows: the append_batch path

    assert conn.in_transaction is False
    assert _event_ids(conn) == ["evt-001"]


@pytest.mark.parametrize("limit", [None, 100], ids=["default-limit", "seven-rows-a-statement"])
@pytest.mark.parametrize("position", [1, 17, 48])
def test_write_batch_with_a_failing_row_stores_nothing_of_the_batch(
    conn: sqlite3.Connection, db_path: Path, limit: int | None, position: int
) -> None:
    remembered = store.write_batch(conn, rows_of([_entry(0)]))
    if limit is not None:
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, limit)
    batch = _entries(range(1, 51))
    # A duplicate in the first, a middle or the last multi-row chunk: chunks before it were
    # inserted, and so were rows before it in its own statement.
    batch[position] = _entry(0, action="dup")

    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE constraint failed"):
        store.write_batch(conn, rows_of(batch), largest=64)

    assert conn.in_transaction is False
    assert _event_ids(conn) == ["evt-000"]
    assert _newest(conn) == remembered
    _assert_chain_verifies(db_path, remembered)


def test_commit_batch_keeps_to_what_one_statement_can_carry(
    conn: sqlite3.Connection, db_path: Path
) -> None:
    remembered = store.write_batch(conn, rows_of([_entry(0)]))
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 100)  # 7 rows per statement

    # 8 is a ladder length of 8, but no statement here carries 8 rows: the batch is cut.
    with _traced(conn) as statements:
        tail = store.commit_batch(conn, rows_of(_entries(range(1, 9))), remembered, 8)

    assert _verbs(statements).count("INSERT") == len(store.chunk_lengths(8, 7)) == 2
    assert tail == _newest(conn) == (9, tail[1])
    _assert_chain_verifies(db_path, tail)


def test_append_batch_of_nothing_keeps_the_tail(conn: sqlite3.Connection) -> None:
    remembered = store.write_batch(conn, rows_of([_entry(1)]))

    with _traced(conn) as statements:
        assert store.append_batch(conn, rows_of([]), remembered) == remembered

    assert statements == []
    assert _row_count(conn) == 1


@pytest.mark.parametrize(("count", "largest"), [(5, 0), (5, -1), (-1, 4)])
def test_chunk_lengths_refuses_what_it_cannot_cut(count: int, largest: int) -> None:
    with pytest.raises(ValueError, match="cannot cut"):
        store.chunk_lengths(count, largest)


def test_insert_entries_refuses_to_write_after_a_tail_that_is_not_the_chains(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.write_batch(conn, rows_of([_entry(1)]))
    # Inside a write transaction the tail cannot move; if it read wrong, nothing is written.
    monkeypatch.setattr(append, "chain_tail", lambda _conn: (7, "e" * 64))
    conn.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(AuditStoreError, match="tail moved inside a write transaction"):
            store.insert_entries(conn, rows_of([_entry(2)]))
    finally:
        conn.execute("ROLLBACK")
    assert _row_count(conn) == 1
