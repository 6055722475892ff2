"""Reads stay O(page) on a big trail: every filter's page walks an index in id order and stops
(no sort of every match), a time range reads only the ids it can hold, and the schema steps
that made it so (SQLite 6, PostgreSQL 4) upgrade an older trail in place, rows and chain as
they were. The plans are read with EXPLAIN from the statements AuditStore really runs."""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlite_utils
import trails

from audit_engine import AuditEntry, AuditStore
from audit_engine.rows import entry_row
from audit_engine.storage import reads, retention
from audit_engine.storage.postgres import schema as pg_schema
from audit_engine.storage.postgres.append import write_batch as pg_write_batch
from audit_engine.storage.sqlite import migrations, schema
from audit_engine.storage.sqlite.append import write_batch

START = datetime(2025, 1, 1, tzinfo=UTC)
ROWS = 400
# One filter each (the list), with a value that matches some rows but not all.
FILTERS: dict[str, dict[str, Any]] = {
    "actor": {"actor": "alice"},
    "action": {"action": "note.delete"},
    "operation": {"operation": "delete"},
    "outcome": {"outcome": "failure"},
    "resource_type": {"resource_type": "note"},
    "resource": {"resource_type": "note", "resource_id": "3"},
}
COLUMNS = ("actor", "action", "operation", "outcome", "resource_type", "resource_id")
INDEX_OF = {
    "actor": "ix_audit_entries_actor",
    "action": "ix_audit_entries_action",
    "operation": "ix_audit_entries_operation",
    "outcome": "ix_audit_entries_outcome",
    "resource_type": "ix_audit_entries_resource_type",
    "resource": "ix_audit_entries_resource",
}


def _entries(rows: int = ROWS) -> list[AuditEntry]:
    """Rows of several actors, actions and resources, one minute apart; every 50th carries a
    time two days back (a replayed dead letter, an imported entry): not in id order."""
    made = []
    for n in range(rows):
        late = n % 50 == 49
        made.append(
            AuditEntry(
                event_id=f"e-{n:05d}",
                action="note.delete" if n % 7 == 0 else "note.save",
                operation="delete" if n % 7 == 0 else "update",
                outcome="failure" if n % 5 == 0 else "success",
                actor="alice" if n % 10 else f"user-{n % 3}",
                resource_type="note" if n % 4 else "folder",
                resource_id=str(n % 11),
                timestamp=START + timedelta(minutes=n) - timedelta(days=2 if late else 0),
            )
        )
    return made


def _statements(store: AuditStore, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[Any]]]:
    """Every page statement ``store`` runs from now on (SQL as written, ``?`` parameters)."""
    seen: list[tuple[str, list[Any]]] = []
    real = store._fetch_page

    def recording(what: str, sql: str, params: list[Any]) -> list[Any]:
        seen.append((sql, list(params)))
        return real(what, sql, params)

    monkeypatch.setattr(store, "_fetch_page", recording)
    return seen


def _sqlite_plan(store: AuditStore, sql: str, params: list[Any]) -> str:
    rows = store._conn.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
    return " | ".join(str(row[3]) for row in rows)


def _expected(filters: dict[str, Any], newest_first: bool) -> list[str]:
    """The event ids a query must return, worked out in Python from the rows as written."""
    since, until = filters.get("since"), filters.get("until")
    ids = []
    for entry in _entries():
        if any(str(getattr(entry, k)) != str(v) for k, v in filters.items() if k in COLUMNS):
            continue
        if since is not None and entry.timestamp < since:
            continue
        if until is not None and entry.timestamp >= until:
            continue
        ids.append(entry.event_id)
    return ids[::-1] if newest_first else ids


def _read(store: AuditStore, **arguments: Any) -> list[str]:
    return [entry.event_id for entry in store.query(**arguments)]


# -- SQLite: EXPLAIN QUERY PLAN of each page ---------------------------------------------------


@pytest.fixture
def sqlite_trail(db_path: Path) -> Path:
    trails.write(db_path, _entries())
    return db_path


@pytest.mark.parametrize("newest_first", [True, False])
@pytest.mark.parametrize("name", list(FILTERS))
def test_each_filter_walks_its_index_in_id_order_on_every_page(
    sqlite_trail: Path, monkeypatch: pytest.MonkeyPatch, name: str, newest_first: bool
) -> None:
    with AuditStore(sqlite_trail) as store:
        seen = _statements(store, monkeypatch)
        got = _read(store, newest_first=newest_first, limit=6, page_size=3, **FILTERS[name])
        plans = [_sqlite_plan(store, sql, params) for sql, params in seen]

    assert got == _expected(FILTERS[name], newest_first)[:6]
    assert len(plans) == 2  # the first page and a keyset page (id < ? / id > ?)
    for plan in plans:
        assert "TEMP B-TREE" not in plan, plan
        assert f"INDEX {INDEX_OF[name]} " in plan, plan


@pytest.mark.parametrize("name", list(FILTERS))
def test_count_reads_only_its_index(sqlite_trail: Path, name: str) -> None:
    with AuditStore(sqlite_trail) as store:
        where_clause, params = reads.where(FILTERS[name], "count")
        plan = _sqlite_plan(store, f"SELECT count(*) FROM audit_entries{where_clause}", params)
        counted = store.count(**FILTERS[name])

    assert counted == len(_expected(FILTERS[name], False))
    assert f"COVERING INDEX {INDEX_OF[name]} " in plan, plan


TIME_RANGES = {
    "window": {"since": START + timedelta(minutes=100), "until": START + timedelta(minutes=300)},
    "since": {"since": START + timedelta(minutes=250)},
    "until": {"until": START + timedelta(minutes=120)},
    "since, with an actor": {"since": START + timedelta(minutes=250), "actor": "alice"},
    "nothing": {"since": START + timedelta(days=30)},
}


@pytest.mark.parametrize("newest_first", [True, False])
@pytest.mark.parametrize("probe_rows", [100_000, 10])
@pytest.mark.parametrize("label", list(TIME_RANGES))
def test_a_time_range_returns_its_rows_in_id_order_without_a_sort(
    sqlite_trail: Path,
    monkeypatch: pytest.MonkeyPatch,
    label: str,
    probe_rows: int,
    newest_first: bool,
) -> None:
    # 100 000: the range is small, its pages read between its id bounds; 10: it is "large",
    # its pages walk the id order testing each timestamp (the rows out of order included).
    monkeypatch.setattr(reads, "WINDOW_PROBE_ROWS", probe_rows)
    filters = TIME_RANGES[label]
    with AuditStore(sqlite_trail) as store:
        seen = _statements(store, monkeypatch)
        got = _read(store, newest_first=newest_first, page_size=7, **filters)
        plans = [_sqlite_plan(store, sql, params) for sql, params in seen]

    assert got == _expected(filters, newest_first)
    probe, *pages = plans
    assert "COVERING INDEX ix_audit_entries_timestamp " in probe, probe
    if label == "nothing":
        assert pages == []  # an empty range reads no page
    for plan in pages:
        assert "TEMP B-TREE" not in plan, plan
        assert "ix_audit_entries_timestamp" not in plan, plan  # the id order, not the times


def test_a_small_time_range_reads_only_between_its_id_bounds(
    sqlite_trail: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with AuditStore(sqlite_trail) as store:
        seen = _statements(store, monkeypatch)
        _read(store, limit=5, **TIME_RANGES["window"])
        plan = _sqlite_plan(store, *seen[1])

    assert "INTEGER PRIMARY KEY (rowid>? AND rowid<?)" in plan, plan


def test_the_purge_reads_the_newest_purged_time_through_the_ids(sqlite_trail: Path) -> None:
    with AuditStore(sqlite_trail) as store:
        plan = _sqlite_plan(
            store, "SELECT max(timestamp), count(*) FROM audit_entries WHERE id <= ?", [10]
        )
    assert "INTEGER PRIMARY KEY" in plan, plan


def test_the_purge_finds_the_trails_ends_without_scanning_an_index(sqlite_trail: Path) -> None:
    # SELECT min(id), max(id) together scans a whole index on SQLite (seconds per batch on a
    # trail of millions); each in its own subquery reads one end of the primary key.
    with AuditStore(sqlite_trail) as store:
        plan = _sqlite_plan(store, retention._ENDS_SQL, [])
        ends = store._conn.execute(retention._ENDS_SQL).fetchone()
    assert "SCAN audit_entries" not in plan, plan
    assert plan.count("SEARCH audit_entries") == 2, plan
    assert ends == (1, ROWS)


# -- SQLite: version 5 -> 6 in place -------------------------------------------------------------


def _version_5_file(path: Path) -> None:
    """A trail as schema version 5 made it (the frozen steps up to 5), with rows."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        migrations.create_engine_tables(conn)
        db = sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)
        for step in migrations.STEPS[:5]:
            step(db)
        migrations.set_stored_version(conn, 5)
        conn.execute("COMMIT")
        write_batch(conn, [entry_row(entry) for entry in _entries(60)])


def _dump(path: Path) -> list[tuple[Any, ...]]:
    return trails.query(path, "SELECT * FROM audit_entries ORDER BY id")


def test_a_version_5_file_gets_the_id_ordered_indexes_rows_and_chain_untouched(
    tmp_path: Path,
) -> None:
    old = tmp_path / "v5.db"
    _version_5_file(old)
    before = _dump(old)
    with AuditStore(old) as store:
        head = store.head()
    fresh = tmp_path / "fresh.db"
    trails.create(fresh)

    with AuditStore(old) as store:  # opening migrates (it is the first open by this code)
        report = store.verify(expected_head=head)
        assert store.count(actor="alice") == sum(1 for e in _entries(60) if e.actor == "alice")

    assert report.ok, report
    assert _dump(old) == before
    assert trails.query(
        old, "SELECT value FROM audit_engine_meta WHERE key = 'schema_version'"
    ) == [(str(schema.SCHEMA_VERSION),)]
    shape = "SELECT type, name, sql FROM sqlite_master ORDER BY type, name"
    assert trails.query(old, shape) == trails.query(fresh, shape)


# -- PostgreSQL ----------------------------------------------------------------------------------


@pytest.fixture
def pg_trail(pg_url: str) -> str:
    trails.write(pg_url, _entries())
    trails.execute(pg_url, "ANALYZE audit_entries")
    return pg_url


def _pg_plan(store: AuditStore, sql: str, params: list[Any]) -> str:
    rows = store._conn.execute(f"EXPLAIN {sql}", params).fetchall()
    return "\n".join(str(row[0]) for row in rows)


@pytest.mark.parametrize("newest_first", [True, False])
@pytest.mark.parametrize("name", list(FILTERS))
def test_postgresql_walks_each_filters_index_without_a_sort(
    pg_trail: str, monkeypatch: pytest.MonkeyPatch, name: str, newest_first: bool
) -> None:
    with AuditStore(pg_trail) as store:
        # A few hundred rows: the server would read them all and sort; off, it must show which
        # index it can walk instead (what it picks on a big trail).
        store._conn.execute("SET enable_seqscan = off")
        store._conn.execute("SET enable_bitmapscan = off")
        seen = _statements(store, monkeypatch)
        got = _read(store, newest_first=newest_first, limit=6, page_size=3, **FILTERS[name])
        plans = [_pg_plan(store, sql, params) for sql, params in seen]

    assert got == _expected(FILTERS[name], newest_first)[:6]
    index = INDEX_OF[name] if name != "resource" else "ix_audit_entries_resource_type_id"
    for plan in plans:
        assert "Sort" not in plan, plan
        # The filter's index, or (a few hundred rows on one page) the primary key in id order,
        # filtered: either stops after the page.
        assert f"using {index} " in plan or "using audit_entries_pkey " in plan, plan


@pytest.mark.parametrize("newest_first", [True, False])
@pytest.mark.parametrize("label", list(TIME_RANGES))
def test_postgresql_time_ranges_give_the_same_rows(
    pg_trail: str, label: str, newest_first: bool
) -> None:
    with AuditStore(pg_trail) as store:
        got = _read(store, newest_first=newest_first, page_size=7, **TIME_RANGES[label])
    assert got == _expected(TIME_RANGES[label], newest_first)


def test_a_postgresql_version_3_trail_gets_the_indexes_rows_and_chain_untouched(
    pg_url: str,
) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        with conn.transaction():  # what migrate() did when version 3 was the newest
            conn.execute(
                "CREATE TABLE audit_engine_meta (key text PRIMARY KEY, value text NOT NULL)"
            )
            for step in pg_schema._STEPS[:3]:
                for statement in step:
                    conn.execute(statement)
            conn.execute("INSERT INTO audit_engine_meta VALUES ('trail_id', 'f00d')")
            conn.execute("INSERT INTO audit_engine_meta VALUES ('schema_version', '3')")
        oid = conn.execute("SELECT 'audit_entries'::regclass::oid::bigint").fetchone()
        assert oid is not None
        pg_write_batch(conn, [entry_row(entry) for entry in _entries(60)], int(oid[0]))
    before = trails.query(pg_url, "SELECT * FROM audit_entries ORDER BY id")

    with AuditStore(pg_url) as store:
        assert store.schema_version == pg_schema.SCHEMA_VERSION
        report = store.verify()
        newest = _read(store, actor="alice", newest_first=True, limit=3)

    assert report.ok, report
    assert report.rows_checked == 60
    assert trails.query(pg_url, "SELECT * FROM audit_entries ORDER BY id") == before
    assert newest == [e.event_id for e in _entries(60) if e.actor == "alice"][::-1][:3]
    names = {n for (n,) in trails.query(pg_url, "SELECT indexname FROM pg_indexes WHERE "
                                        "tablename = 'audit_entries'")}  # fmt: skip
    assert "ix_audit_entries_actor_timestamp" not in names
    assert {"ix_audit_entries_actor", "ix_audit_entries_timestamp_id"} <= names
