"""An entry written through the caller's psycopg connection (or a SQLAlchemy session on it) waits
for the chain's advisory lock at most ``busy_timeout``, then fails with an error that names it,
leaving the caller's transaction usable; a wait that ends in time leaves the caller's own
``lock_timeout`` as it was. On a real PostgreSQL server."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from audit_engine import AuditService, AuditStore, AuditWriteError
from audit_engine.models import AuditEntry
from audit_engine.rows import Row, entry_row
from audit_engine.storage import backends
from audit_engine.storage.dialect import BackendError

_BOUND_S = 0.3
# Far above _BOUND_S, far below "waited for the holder to commit": the wait was bounded.
_BOUNDED_WITHIN_S = 5.0


def _row(event_id: str) -> Row:
    entry = AuditEntry(action="note.save", event_id=event_id)
    return entry_row(entry)


@pytest.fixture
def trail(pg_url: str) -> str:
    """A trail with its tables and an application table (``notes``)."""
    AuditService(pg_url, cleanup_enabled=False).close(timeout=10)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY)")
    return pg_url


@contextlib.contextmanager
def _lock_held(url: str) -> Iterator[None]:
    """Another transaction holding the chain's lock (it wrote an entry) until the block ends."""
    with psycopg.connect(url) as holder:
        write, _ = backends.injected_writer(holder, "holder")
        write(_row("held"))
        try:
            yield
        finally:
            holder.rollback()


def _event_ids(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT event_id FROM audit_entries ORDER BY id")]


@pytest.mark.parametrize("first", [True, False], ids=["first-statement", "after-a-change"])
def test_a_wait_for_the_chain_lock_is_bounded_and_the_transaction_stays_usable(
    trail: str, first: bool
) -> None:
    with psycopg.connect(trail) as app, _lock_held(trail):
        if not first:
            app.execute("INSERT INTO notes VALUES (1)")
        write, _ = backends.injected_writer(app, "record() connection", busy_timeout=_BOUND_S)
        started = time.monotonic()
        with pytest.raises(BackendError) as raised:
            write(_row("waited"))
        waited = time.monotonic() - started
        app.execute("INSERT INTO notes VALUES (2)")  # still usable: not an aborted transaction
        app.commit()

    assert _BOUND_S <= waited < _BOUNDED_WITHIN_S
    assert "busy_timeout (0.3 s)" in str(raised.value)
    assert "your transaction is still usable" in str(raised.value)
    assert raised.value.busy
    with psycopg.connect(trail) as check:
        notes = [r[0] for r in check.execute("SELECT id FROM notes ORDER BY id")]
    assert notes == ([2] if first else [1, 2])
    assert _event_ids(trail) == []


def test_a_sqlalchemy_session_waits_at_most_busy_timeout_too(trail: str) -> None:
    engine = create_engine(trail.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with Session(engine) as session, _lock_held(trail):
            session.execute(text("INSERT INTO notes VALUES (1)"))
            write, _ = backends.injected_writer(session, "record() connection", busy_timeout=0.2)
            with pytest.raises(BackendError, match="busy_timeout"):
                write(_row("waited"))
            session.execute(text("INSERT INTO notes VALUES (2)"))
            session.commit()
    finally:
        engine.dispose()

    with psycopg.connect(trail) as check:
        assert [r[0] for r in check.execute("SELECT id FROM notes ORDER BY id")] == [1, 2]


def _wait_for_a_lock_waiter(url: str) -> None:
    """Until a backend waits for an advisory lock (bounded: the test fails after 10 s)."""
    deadline = time.monotonic() + 10
    with psycopg.connect(url, autocommit=True) as watcher:
        while time.monotonic() < deadline:
            waiting = watcher.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ).fetchone()
            if waiting is not None and waiting[0]:
                return
            time.sleep(0.01)  # polling the server for the waiter, not waiting for time to pass
    raise AssertionError("no transaction ever waited for the chain's lock")


def test_a_wait_that_ends_in_time_writes_and_leaves_the_callers_lock_timeout(trail: str) -> None:
    done = threading.Event()
    outcome: list[object] = []
    with psycopg.connect(trail) as app:
        app.execute("SET lock_timeout = '7s'")  # the application's own setting
        app.commit()
        with psycopg.connect(trail) as holder:
            holder_write, _ = backends.injected_writer(holder, "holder")
            holder_write(_row("first"))

            def waiter() -> None:
                try:
                    write, _ = backends.injected_writer(app, "app", busy_timeout=30)
                    write(_row("second"))
                    outcome.append(app.execute("SHOW lock_timeout").fetchone())
                    app.commit()
                except BaseException as exc:  # reported to the test below
                    outcome.append(exc)
                finally:
                    done.set()

            thread = threading.Thread(target=waiter)
            thread.start()
            _wait_for_a_lock_waiter(trail)
            holder.commit()  # lets the waiter in
            assert done.wait(30)
            thread.join(10)

    assert outcome == [("7s",)]
    assert _event_ids(trail) == ["first", "second"]
    with AuditStore(trail) as reader:
        assert reader.verify(min_retention=timedelta(0)).ok


def test_an_uncontended_entry_costs_one_lock_statement_and_changes_no_setting(trail: str) -> None:
    with psycopg.connect(trail) as app:
        app.execute("SET lock_timeout = '7s'")
        write, _ = backends.injected_writer(app, "app", busy_timeout=1)
        write(_row("one"))
        assert app.execute("SHOW lock_timeout").fetchone() == ("7s",)
        app.commit()

    assert _event_ids(trail) == ["one"]


def test_record_through_a_connection_waits_at_most_the_services_busy_timeout(trail: str) -> None:
    # AuditService(busy_timeout=...) bounds the wait (docs/configuration.md), as an
    # AuditWriteError; the caller's transaction stays usable.
    with (
        AuditService(trail, cleanup_enabled=False, busy_timeout=0.3) as service,
        psycopg.connect(trail) as app,
        _lock_held(trail),
    ):
        app.execute("INSERT INTO notes VALUES (1)")
        started = time.monotonic()
        with pytest.raises(AuditWriteError, match=r"busy_timeout \(0.3 s\)"):
            service.record(action="note.save", connection=app)
        waited = time.monotonic() - started
        app.execute("INSERT INTO notes VALUES (2)")
        app.commit()

    assert 0.3 <= waited < _BOUNDED_WITHIN_S
    assert _event_ids(trail) == []


def test_record_many_through_a_connection_waits_once_at_most_busy_timeout(trail: str) -> None:
    # All the call's rows wait for the lock once (not once per row), then none is written.
    with (
        AuditService(trail, cleanup_enabled=False, busy_timeout=0.3) as service,
        psycopg.connect(trail) as app,
        _lock_held(trail),
    ):
        app.execute("INSERT INTO notes VALUES (1)")
        started = time.monotonic()
        with pytest.raises(AuditWriteError, match=r"busy_timeout \(0.3 s\)") as raised:
            service.record_many([{"action": "note.save"} for _ in range(50)], connection=app)
        waited = time.monotonic() - started
        app.execute("INSERT INTO notes VALUES (2)")
        app.commit()

    assert 0.3 <= waited < _BOUNDED_WITHIN_S
    assert "none of them was written" in str(raised.value)
    with psycopg.connect(trail) as check:
        assert [r[0] for r in check.execute("SELECT id FROM notes ORDER BY id")] == [1, 2]
    assert _event_ids(trail) == []
