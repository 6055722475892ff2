"""Frozen migrations: a file made by release 0.1.0 opens, migrates and verifies; the version is
the engine's own record, never the host's ``PRAGMA user_version``."""

from __future__ import annotations

import ast
import contextlib
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from audit_engine import AuditService, AuditSettings, AuditStore, AuditStoreError
from audit_engine.storage.chain import ChainHead
from audit_engine.storage.sqlite import migrations, schema

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
# Made by tests/fixtures/make_fixture.py run against release 0.1.0 (commit b684905), which
# printed this head: 35 entries written, the 20 before 2020-03-01 purged under one anchor.
V3_FILE = FIXTURES / "trail-schema-v3.db"
V3_HEAD = ChainHead(id=35, hash="ee2d4008758ed2cbcdedac877871f1cc2173ddea590be973a03a1171d275dbe6")
MAINTENANCE = ("audit_anchors", "audit_cleanup_runs")


@pytest.fixture
def v3_copy(tmp_path: Path) -> Path:
    """A private copy of the release-0.1.0 file (the committed one is never opened for writing)."""
    path = tmp_path / "trail-v3.db"
    shutil.copyfile(V3_FILE, path)
    os.chmod(path, 0o600)  # as the release made it: the engine warns about looser modes
    return path


def _raw(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Read with plain sqlite3, read-only: the file as it is, nothing migrated."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return conn.execute(sql).fetchall()


def _tables(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the audit tables, in id order."""
    return {
        table: _raw(path, f"SELECT * FROM {table} ORDER BY id")
        for table in ("audit_entries", *MAINTENANCE)
    }


def _schema_sql(path: Path) -> list[tuple[str, str, str]]:
    return _raw(path, "SELECT type, name, sql FROM sqlite_master ORDER BY type, name")


def _open(path: Path) -> None:
    schema.open_connection(path).close()


# -- the release-0.1.0 file ------------------------------------------------------------------------


def test_the_fixture_is_a_release_0_1_0_file() -> None:
    names = {name for _, name, _ in _schema_sql(V3_FILE)}
    assert migrations.META not in names
    assert _raw(V3_FILE, "PRAGMA user_version") == [(3,)]
    assert _raw(V3_FILE, "SELECT count(*) FROM audit_entries") == [(15,)]
    assert _raw(V3_FILE, "SELECT count(*) FROM audit_anchors") == [(1,)]
    assert _raw(V3_FILE, "SELECT count(*) FROM audit_cleanup_runs") == [(1,)]


def test_a_release_0_1_0_file_migrates_and_verifies_with_the_same_head(v3_copy: Path) -> None:
    before = _tables(v3_copy)

    with AuditStore(v3_copy) as store:
        report = store.verify(expected_head=V3_HEAD)
        entries = list(store.query())

    assert (report.ok, report.reason, report.head) == (True, None, V3_HEAD)
    assert (report.rows_checked, report.anchors_checked, report.cleanup_runs_checked) == (15, 1, 1)
    assert report.warnings == ()
    after = _tables(v3_copy)
    # The stored values and hashes are untouched; version 4 adds an empty Merkle column to anchors.
    assert after["audit_anchors"] == [(*row, None) for row in before.pop("audit_anchors")]
    assert {table: rows for table, rows in after.items() if table in before} == before
    assert [e.event_id for e in entries] == [row[1] for row in before["audit_entries"]]
    assert [e.details_json for e in entries] == [row[10] for row in before["audit_entries"]]
    meta = dict(_raw(v3_copy, "SELECT key, value FROM audit_engine_meta"))
    assert meta["schema_version"] == str(schema.SCHEMA_VERSION)
    assert len(meta.pop("trail_id")) == 32
    assert set(meta) == {"schema_version"}


def test_migrating_leaves_the_hosts_user_version_alone(v3_copy: Path) -> None:
    _open(v3_copy)

    assert _raw(v3_copy, "PRAGMA user_version") == [(3,)]  # release 0.1.0's, read, not rewritten


def test_a_migrated_file_has_the_schema_of_a_new_one(v3_copy: Path, tmp_path: Path) -> None:
    new = tmp_path / "new.db"
    _open(new)
    _open(v3_copy)

    assert _schema_sql(v3_copy) == _schema_sql(new)
    assert _raw(new, "PRAGMA user_version") == [(0,)]  # the engine never writes it


def test_migration_is_idempotent(v3_copy: Path) -> None:
    _open(v3_copy)
    once = (
        _schema_sql(v3_copy),
        _tables(v3_copy),
        _raw(v3_copy, "SELECT * FROM audit_engine_meta"),
    )

    _open(v3_copy)
    with contextlib.closing(sqlite3.connect(v3_copy, isolation_level=None)) as conn:
        schema.migrate(conn)

    assert (
        _schema_sql(v3_copy),
        _tables(v3_copy),
        _raw(v3_copy, "SELECT * FROM audit_engine_meta"),
    ) == once


def test_a_migrated_file_takes_new_entries_on_its_chain(v3_copy: Path) -> None:
    settings = AuditSettings(database=v3_copy, async_writes=False, cleanup_enabled=False)
    with AuditService(settings) as audit:
        audit.record(action="after.migration", event_id="evt-036")

    with AuditStore(v3_copy) as store:
        report = store.verify()
        assert [e.event_id for e in store.query()][-2:] == ["evt-035", "evt-036"]
    assert (report.ok, report.rows_checked) == (True, 16)
    assert report.head is not None
    assert report.head.id == 36
    assert _raw(v3_copy, "SELECT prev_hash FROM audit_entries WHERE id = 36") == [(V3_HEAD.hash,)]


def test_a_failed_migration_leaves_the_release_file_as_it_was(
    v3_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = (_schema_sql(v3_copy), _tables(v3_copy))

    def fail(conn: sqlite3.Connection, version: int) -> None:
        raise sqlite3.OperationalError("disk I/O error")  # after the meta tables were made

    monkeypatch.setattr(migrations, "set_stored_version", fail)
    with pytest.raises(AuditStoreError, match="disk I/O error"):
        _open(v3_copy)

    assert (_schema_sql(v3_copy), _tables(v3_copy)) == before


# -- versions --------------------------------------------------------------------------------------


def _set_meta_version(path: Path, version: str) -> None:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(
            "UPDATE audit_engine_meta SET value = ? WHERE key = 'schema_version'", (version,)
        )


@pytest.mark.parametrize("create", [True, False])
def test_a_newer_schema_version_in_the_meta_table_is_refused(db_path: Path, create: bool) -> None:
    _open(db_path)
    newer = str(schema.SCHEMA_VERSION + 1)
    _set_meta_version(db_path, newer)

    with pytest.raises(AuditStoreError) as exc:
        schema.open_connection(db_path, create=create)

    assert str(exc.value) == (
        f"the audit database has schema version {newer}; this audit_engine supports up to "
        f"{schema.SCHEMA_VERSION}: upgrade audit_engine"
    )
    assert _raw(db_path, "SELECT value FROM audit_engine_meta WHERE key = 'schema_version'") == [
        (newer,)
    ]


def test_a_release_file_whose_user_version_is_unknown_is_refused(v3_copy: Path) -> None:
    with contextlib.closing(sqlite3.connect(v3_copy)) as conn:
        conn.execute("PRAGMA user_version = 9")

    with pytest.raises(AuditStoreError, match="has schema version 9; this audit_engine supports"):
        _open(v3_copy)

    assert migrations.META not in {name for _, name, _ in _schema_sql(v3_copy)}


def test_a_host_database_with_its_own_user_version_gets_the_audit_schema(db_path: Path) -> None:
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT)")
        conn.execute("INSERT INTO orders (item) VALUES ('book')")
        conn.execute("PRAGMA user_version = 7")
        conn.commit()

    with AuditService(AuditSettings(database=db_path, async_writes=False)) as audit:
        audit.record(action="order.place", event_id="evt-1")

    assert _raw(db_path, "PRAGMA user_version") == [(7,)]
    assert _raw(db_path, "SELECT item FROM orders") == [("book",)]
    with AuditStore(db_path) as store:
        assert store.verify().ok is True
        assert [e.event_id for e in store.query()] == ["evt-1"]


def test_a_host_transaction_gets_the_audit_schema_and_keeps_its_user_version(
    db_path: Path,
) -> None:
    with contextlib.closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
        conn.execute("PRAGMA user_version = 7")
        conn.execute("BEGIN")
        schema.migrate(conn)
        assert conn.in_transaction is True  # the host's transaction, still open
        conn.execute("COMMIT")

        assert schema.schema_version(conn) == schema.SCHEMA_VERSION
        assert conn.execute("PRAGMA user_version").fetchone() == (7,)


def test_every_file_records_chain_version_1_from_the_first_id(v3_copy: Path, db_path: Path) -> None:
    for path in (v3_copy, db_path):
        with contextlib.closing(schema.open_connection(path)) as conn:
            assert schema.chain_versions(conn) == [(1, "1")]


def test_without_the_engine_tables_nothing_is_recorded() -> None:
    with contextlib.closing(sqlite3.connect(":memory:")) as conn:
        assert schema.schema_version(conn) == 0
        assert schema.chain_versions(conn) == []
        conn.execute(f"CREATE TABLE {migrations.META} (key TEXT PRIMARY KEY, value TEXT)")
        assert schema.schema_version(conn) == 0  # a meta table without the version row


# -- the steps -------------------------------------------------------------------------------------


@pytest.fixture
def fresh(db_path: Path) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(db_path, isolation_level=None)
    yield connection
    connection.close()


def test_a_step_that_fails_half_way_rolls_every_step_back(
    fresh: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    def third_step_fails(db: sqlite_utils.Database) -> None:
        db.conn.execute('ALTER TABLE "audit_anchors" ADD COLUMN "newest_purged" TEXT')
        raise RuntimeError("the third step broke")

    steps = (*migrations.STEPS[:2], third_step_fails)
    monkeypatch.setattr(schema, "_MIGRATIONS", steps)

    with pytest.raises(RuntimeError, match="the third step broke"):
        schema.migrate(fresh)

    assert fresh.in_transaction is False
    assert fresh.execute("SELECT name FROM sqlite_master").fetchall() == []
    assert fresh.execute("PRAGMA user_version").fetchone() == (0,)


def test_the_steps_import_nothing_from_the_engine() -> None:
    """Frozen: a step must not follow today's columns or hash functions."""
    source = Path(migrations.__file__).read_text(encoding="utf-8")
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            imported.add(node.module)

    assert not {name for name in imported if name.startswith("audit_engine")}


def test_one_step_per_schema_version() -> None:
    assert len(migrations.STEPS) == schema.SCHEMA_VERSION
    assert migrations.LAST_USER_VERSION == 3  # release 0.1.0's, fixed for good


def test_a_migration_another_process_finished_first_is_not_repeated(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = migrations.stored_version
    raced: list[int] = []

    def sibling_wins_the_race(conn: sqlite3.Connection) -> int:
        version = real(conn)
        if not raced:  # first look, before the lock: a sibling migrates the file right then
            raced.append(version)
            with contextlib.closing(sqlite3.connect(db_path, isolation_level=None)) as sibling:
                schema.migrate(sibling)
        return version

    monkeypatch.setattr(migrations, "stored_version", sibling_wins_the_race)
    with contextlib.closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
        schema.migrate(conn)  # saw version 0, finds version 3 under the lock

        assert raced == [0]
        assert real(conn) == schema.SCHEMA_VERSION
        assert schema.chain_versions(conn) == [(1, "1")]
