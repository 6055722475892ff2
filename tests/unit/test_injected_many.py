"""``record_many(connection=...)`` writes all of a call's rows through the caller's connection in
one step — one wait for the lock, one read of the tail, one insert of them all — and all or
none: a failing row leaves none of the call's rows in the caller's transaction, which stays
usable. On SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trails

from audit_engine import AuditService, AuditStore, AuditWriteError

# More rows than one guarded INSERT carries on SQLite (SQLite's 999 bound variables), so the
# rows that fail are in a later statement than rows already inserted by the same call.
_ROWS = 300
_TAKEN_AT = 250


def _entries(prefix: str, count: int = _ROWS) -> list[dict[str, Any]]:
    return [{"action": "note.save", "event_id": f"{prefix}{n}"} for n in range(count)]


def _event_ids(database: Path | str) -> list[str]:
    return [r[0] for r in trails.query(database, "SELECT event_id FROM audit_entries ORDER BY id")]


def _verified(database: Path | str) -> int:
    with contextlib.closing(AuditStore(database)) as store:
        report = store.verify(min_retention=timedelta(0))
    assert report.ok, report
    return report.rows_checked


@pytest.fixture
def service(trail_db: Path | str) -> Iterator[AuditService]:
    """A service on the trail, which holds one entry ("taken") and a ``notes`` table."""
    with AuditService(database=trail_db, async_writes=False, cleanup_enabled=False) as service:
        service.record(action="x", event_id="taken")
        trails.execute(trail_db, "CREATE TABLE notes (id INTEGER)")
        yield service


def _connect(database: Path | str, *, autocommit: bool = False) -> Any:
    """The application's own connection (closed by the caller)."""
    if trails.is_pg(database):
        return psycopg.connect(str(database), autocommit=autocommit)
    return sqlite3.connect(database, isolation_level=None if autocommit else "")


def test_a_failing_row_leaves_none_of_the_call_and_the_transaction_usable(
    trail_db: Path | str, service: AuditService
) -> None:
    entries = _entries("a")
    entries[_TAKEN_AT]["event_id"] = "taken"  # already in the trail: the server refuses it
    with contextlib.closing(_connect(trail_db)) as app:
        app.execute("INSERT INTO notes VALUES (1)")
        with pytest.raises(AuditWriteError) as raised:
            service.record_many(entries, connection=app)
        app.execute("INSERT INTO notes VALUES (2)")  # usable: not an aborted transaction
        app.commit()
        ids = service.record_many(_entries("b"), connection=app)  # and the next call works
        app.commit()

    assert f"the {_ROWS} audit entries a0 to a{_ROWS - 1} of this record_many()" in str(
        raised.value
    )
    assert "none of them was written" in str(raised.value)
    assert trails.query(trail_db, "SELECT id FROM notes ORDER BY id") == [(1,), (2,)]
    assert _event_ids(trail_db) == ["taken", *ids]
    assert _verified(trail_db) == 1 + _ROWS
    assert service.stats().accepted == 1 + _ROWS


def test_the_rows_commit_and_roll_back_with_the_callers_transaction(
    trail_db: Path | str, service: AuditService
) -> None:
    with contextlib.closing(_connect(trail_db)) as app:
        service.record_many(_entries("undone"), connection=app)
        assert _event_ids(trail_db) == ["taken"]  # uncommitted: not seen from elsewhere
        app.rollback()
        kept = service.record_many(_entries("kept"), connection=app)
        app.commit()

    assert _event_ids(trail_db) == ["taken", *kept]
    assert _verified(trail_db) == 1 + _ROWS


def test_an_autocommit_connection_commits_them_at_once_or_none(
    trail_db: Path | str, service: AuditService
) -> None:
    failing = _entries("f")
    failing[_TAKEN_AT]["event_id"] = "taken"
    with contextlib.closing(_connect(trail_db, autocommit=True)) as app:
        ids = service.record_many(_entries("c"), connection=app)
        assert _event_ids(trail_db) == ["taken", *ids]  # committed, before any commit()
        with pytest.raises(AuditWriteError, match="none of them was written"):
            service.record_many(failing, connection=app)

    assert _event_ids(trail_db) == ["taken", *ids]
    assert _verified(trail_db) == 1 + _ROWS


def test_a_service_built_on_the_connection_writes_them_in_one_step_too(
    trail_db: Path | str, service: AuditService
) -> None:
    with contextlib.closing(_connect(trail_db)) as app:
        with AuditService(database=trail_db, connection=app) as own:
            failing = _entries("f")
            failing[_TAKEN_AT]["event_id"] = "taken"
            with pytest.raises(AuditWriteError, match="none of them was written"):
                own.record_many(failing)
            ids = own.record_many(_entries("d"))
        app.commit()

    assert _event_ids(trail_db) == ["taken", *ids]
    assert _verified(trail_db) == 1 + _ROWS


def test_sqlite_statements_do_not_grow_with_the_rows_beyond_one_per_chunk(
    db_path: Path,
) -> None:
    with AuditService(database=db_path, async_writes=False, cleanup_enabled=False) as service:
        service.record(action="x")
        with contextlib.closing(sqlite3.connect(db_path)) as app:
            app.execute("CREATE TABLE notes (id INTEGER)")
            app.execute("INSERT INTO notes VALUES (1)")  # the caller's transaction is open
            statements: list[str] = []
            app.set_trace_callback(statements.append)
            service.record_many(_entries("s"), connection=app)
            app.commit()

    # SQLite traces a statement again for each row its triggers run on: distinct texts (the
    # bound values written out) are the statements.
    inserts = {s for s in statements if s.startswith("INSERT INTO audit_entries")}
    others = [s for s in statements if not s.startswith("INSERT INTO audit_entries")]
    # One INSERT per chunk, not per row; around them a savepoint, the write lock, the tail, the
    # versions table, the release, the caller's commit.
    assert 1 < len(inserts) <= 8
    assert len(others) <= 8, others
    assert _event_ids(db_path)[1:] == [f"s{n}" for n in range(_ROWS)]


def test_postgres_round_trips_do_not_grow_with_the_rows(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts: list[int] = []
    with (
        AuditService(database=pg_url, async_writes=False, cleanup_enabled=False) as service,
        psycopg.connect(pg_url) as app,
    ):
        original = app.execute
        executed: list[str] = []

        def counting(query: Any, *args: Any, **kwargs: Any) -> Any:
            executed.append(str(query))
            return original(query, *args, **kwargs)

        for count in (2, _ROWS):
            executed.clear()
            monkeypatch.setattr(app, "execute", counting)
            service.record_many(_entries(f"n{count}-", count), connection=app)
            monkeypatch.undo()
            app.commit()
            counts.append(len(executed))

    assert counts[0] == counts[1], counts  # the same statements (and one COPY) for 2 or 300
    assert counts[1] <= 8, counts
    assert len(_event_ids(pg_url)) == 2 + _ROWS
    assert _verified(pg_url) == 2 + _ROWS


def test_sqlite_the_connections_busy_timeout_bounds_the_wait_for_the_write_lock(
    db_path: Path,
) -> None:
    with AuditService(database=db_path, async_writes=False, cleanup_enabled=False) as service:
        service.record(action="x", event_id="first")
        with (
            contextlib.closing(sqlite3.connect(db_path, isolation_level=None)) as holder,
            contextlib.closing(sqlite3.connect(db_path, timeout=0.2, isolation_level=None)) as app,
        ):
            app.execute("BEGIN")
            app.execute("SELECT count(*) FROM audit_entries").fetchone()  # a read: no lock yet
            holder.execute("BEGIN IMMEDIATE")  # SQLite's write lock, held by another
            with pytest.raises(AuditWriteError, match="database is locked"):
                service.record_many(_entries("w"), connection=app)
            holder.execute("ROLLBACK")
            assert app.in_transaction  # the caller's transaction is still open, and usable:
            ids = service.record_many(_entries("v", 3), connection=app)
            app.execute("COMMIT")

    assert _event_ids(db_path) == ["first", *ids]
    assert _verified(db_path) == 4
