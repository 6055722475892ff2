"""The write mode is chosen once, when the service is built (#12 item 8).

``record()`` hands a kept row to one function picked in the constructor (queue it, write it in
the caller's thread, or write it through the service's own connection); only a ``connection=``
passed to ``record()`` itself overrides it, for that call.
"""

from __future__ import annotations

import contextlib
import gc
import weakref
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from audit_engine import AuditService, AuditStore
from audit_engine.storage import sqlite as store


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@pytest.mark.parametrize(
    ("settings", "mode"),
    [
        ({}, AuditService._enqueue),
        ({"async_writes": False}, AuditService._write_sync),
    ],
)
def test_the_mode_is_picked_in_the_constructor(
    trail_db: Path | str, settings: dict[str, object], mode: object
) -> None:
    with AuditService(database=trail_db, cleanup_enabled=False, **settings) as service:
        assert service._accept_row is mode
        assert service.record(action="doc.read")
        assert service.flush(10)
    with contextlib.closing(AuditStore(trail_db)) as audit:
        assert audit.count() == 1


@pytest.mark.parametrize("settings", [{}, {"async_writes": False}], ids=["async", "sync"])
def test_both_modes_extend_one_verified_chain_on_each_backend(
    trail_db: Path | str, settings: dict[str, object]
) -> None:
    with AuditService(
        database=trail_db, cleanup_enabled=False, buffer_max_size=7, **settings
    ) as service:
        for n in range(50):
            service.record(action="doc.read", event_id=f"e{n}", details={"n": n})
        assert service.flush(10)
    with AuditService(database=trail_db, cleanup_enabled=False, async_writes=False) as service:
        service.record(action="doc.read", event_id="last")

    with contextlib.closing(AuditStore(trail_db)) as audit:
        report = audit.verify(min_retention=timedelta(0))
        ids = [entry.event_id for entry in audit.query()]
    assert (report.ok, report.rows_checked) == (True, 51)
    assert ids == [f"e{n}" for n in range(50)] + ["last"]


def test_a_service_on_a_connection_writes_through_it_in_every_call(db_path: Path) -> None:
    conn = store.open_connection(db_path)
    try:
        with AuditService(database=db_path, connection=conn, cleanup_enabled=False) as service:
            assert service._accept_row is AuditService._write_to_own_connection
            conn.execute("BEGIN")
            service.record(action="doc.read")
            conn.execute("ROLLBACK")  # the caller's transaction: the entry goes with it
            assert conn.execute("SELECT count(*) FROM audit_entries").fetchone() == (0,)
    finally:
        conn.close()


def test_a_connection_passed_to_record_overrides_the_mode_for_that_call(db_path: Path) -> None:
    with AuditService(database=db_path, cleanup_enabled=False) as service:
        assert service.writer is not None
        conn = store.open_connection(db_path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            assert service.record(action="doc.read", connection=conn)
            with service.scope():  # the scoped path takes the same turn
                assert service.record(action="doc.save", connection=conn)
            conn.execute("COMMIT")
        finally:
            conn.close()
        assert service.writer.enqueued == 0  # neither went through the queue
        assert service.stats().written == 2


@pytest.mark.parametrize("settings", [{}, {"async_writes": False}])
def test_a_dropped_service_is_freed_at_once_not_by_the_cyclic_collector(
    db_path: Path, settings: dict[str, object]
) -> None:
    # The chosen mode is kept as a plain function: a bound method would make the service a
    # cycle, and an unclosed service is drained when it is dropped (its weakref.finalize).
    with _no_cyclic_gc():
        service = AuditService(database=db_path, cleanup_enabled=False, **settings)
        freed = weakref.ref(service)
        del service
        assert freed() is None
