"""An entry written through the caller's sqlite3 connection reads the chain's tail only while it
holds SQLite's write lock, also when it is the first statement of the transaction (the sqlite3
module begins a transaction only at the first insert, after the tail was read): a writer on
another connection committing meanwhile cannot make it fail with "the tail moved"."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from audit_engine import AuditService, AuditStore
from audit_engine.errors import AuditStoreError, AuditWriteError
from audit_engine.storage import sqlite as store
from audit_engine.storage.sqlite import append

_ATTEMPTS = 150  # about 1 in 60 of these failed before, with the writer below hammering
_RACED = 10  # commits of the other writer, at least, while those attempts run


@contextlib.contextmanager
def _hammering(db_path: Path) -> Iterator[Callable[[], int]]:
    """Another connection committing entries to the trail as fast as it can until the block
    ends; yields how many it has committed so far."""
    service = AuditService(database=db_path, async_writes=False, cleanup_enabled=False)
    stop = threading.Event()
    started = threading.Event()
    written = [0]

    def hammer() -> None:
        while not stop.is_set():
            service.record(action="other.write")
            written[0] += 1
            started.set()

    thread = threading.Thread(target=hammer, daemon=True)
    thread.start()
    try:
        assert started.wait(10)
        yield lambda: written[0]
    finally:
        stop.set()
        thread.join(10)
        service.close(timeout=10)
    assert not thread.is_alive()


def _verify_ok(db_path: Path) -> bool:
    with AuditStore(db_path) as reader:
        return reader.verify(min_retention=timedelta(0)).ok


def _event_count(db_path: Path, action: str) -> int:
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        return int(
            conn.execute(
                "SELECT count(*) FROM audit_entries WHERE action = ?", (action,)
            ).fetchone()[0]
        )


def _raw_deferred(db_path: Path, service: AuditService) -> None:
    # The sqlite3 module's default: a transaction begun implicitly, at the first insert.
    with contextlib.closing(sqlite3.connect(db_path, timeout=10)) as conn:
        service.record(action="mine", connection=conn)
        conn.commit()


def _raw_autocommit(db_path: Path, service: AuditService) -> None:
    with contextlib.closing(sqlite3.connect(db_path, timeout=10, isolation_level=None)) as conn:
        service.record(action="mine", connection=conn)  # commits at once


def _raw_explicit_deferred_begin(db_path: Path, service: AuditService) -> None:
    # A transaction open but holding no lock yet (the usual SQLAlchemy "BEGIN" recipe, a
    # SAVEPOINT first, Python 3.12's autocommit=False).
    with contextlib.closing(sqlite3.connect(db_path, timeout=10, isolation_level=None)) as conn:
        conn.execute("BEGIN")
        service.record(action="mine", connection=conn)
        conn.execute("COMMIT")


def _sqlalchemy_session(db_path: Path, service: AuditService) -> None:
    engine = create_engine(f"sqlite:///{db_path}", connect_args={"timeout": 10})
    try:
        with Session(engine) as session:
            service.record(action="mine", connection=session)
            session.execute(text("SELECT 1"))
            session.commit()
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "write_first",
    [_raw_deferred, _raw_autocommit, _raw_explicit_deferred_begin, _sqlalchemy_session],
    ids=["deferred", "autocommit", "explicit-begin", "sqlalchemy-session"],
)
def test_an_entry_first_in_its_transaction_never_races_another_writer(
    db_path: Path, write_first: Callable[[Path, AuditService], None]
) -> None:
    service = AuditService(database=db_path, async_writes=False, cleanup_enabled=False)
    errors: list[str] = []
    attempts = 0
    # SQLite's busy handler does not queue waiters fairly: on a loaded machine the other writer
    # can sleep through a whole run of attempts. Go on (bounded) until it has committed a few
    # times meanwhile, so every run races it.
    deadline = time.monotonic() + 60
    with _hammering(db_path) as written:
        before = written()
        while attempts < _ATTEMPTS or (written() - before < _RACED and time.monotonic() < deadline):
            attempts += 1
            try:
                write_first(db_path, service)
            except AuditWriteError as exc:
                errors.append(str(exc))
        during = written() - before
    service.close(timeout=10)

    assert errors == []
    assert during >= _RACED  # the other writer did commit meanwhile
    assert _event_count(db_path, "mine") == attempts
    assert _verify_ok(db_path)


def test_a_transaction_the_entry_began_stays_the_callers_to_commit(
    db_path: Path, make_service: Callable[..., AuditService]
) -> None:
    service = make_service(cleanup_enabled=False)
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        service.record(action="mine", connection=conn)
        assert conn.in_transaction
        assert _event_count(db_path, "mine") == 0
        conn.rollback()
        service.record(action="mine", connection=conn)
        conn.commit()

    assert _event_count(db_path, "mine") == 1


def test_an_autocommit_connection_commits_the_entry_at_once(
    db_path: Path, make_service: Callable[..., AuditService]
) -> None:
    service = make_service(cleanup_enabled=False)
    with contextlib.closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
        service.record(action="mine", connection=conn)
        assert not conn.in_transaction
        assert _event_count(db_path, "mine") == 1


@pytest.mark.parametrize("autocommit", [True, False])
def test_the_python_312_autocommit_attribute_is_followed(
    db_path: Path, make_service: Callable[..., AuditService], autocommit: bool
) -> None:
    # The project runs on 3.11, which has no autocommit attribute: a connection class declaring
    # it stands in (True: no implicit transactions, as isolation_level=None; False: the caller's
    # transaction, committed by the caller).
    class Declared(sqlite3.Connection):
        pass

    Declared.autocommit = autocommit  # type: ignore[attr-defined]
    isolation = None if autocommit else ""
    with contextlib.closing(
        sqlite3.connect(db_path, factory=Declared, isolation_level=isolation)
    ) as conn:
        service = make_service(cleanup_enabled=False)
        service.record(action="mine", connection=conn)
        assert _event_count(db_path, "mine") == (1 if autocommit else 0)
        conn.commit()
    assert _event_count(db_path, "mine") == 1


def test_a_failed_entry_rolls_back_the_transaction_it_began(
    db_path: Path, make_service: Callable[..., AuditService]
) -> None:
    service = make_service(cleanup_enabled=False)
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        service.record(action="mine", event_id="taken", connection=conn)
        conn.commit()
        with pytest.raises(AuditWriteError):
            service.record(action="mine", event_id="taken", connection=conn)
        assert not conn.in_transaction  # not left holding the write lock


def test_a_tail_that_moved_anyway_says_what_to_do(
    db_path: Path, make_service: Callable[..., AuditService], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only a write on the same connection in between can still move the tail (threads sharing
    # one connection); stand in for it with a stale tail.
    service = make_service(cleanup_enabled=False)
    with contextlib.closing(store.open_connection(db_path)) as conn:
        service.record(action="mine", connection=conn)
        conn.commit()
        monkeypatch.setattr(append, "chain_tail", lambda _conn: (0, "0" * 64))
        with pytest.raises(AuditStoreError) as raised:
            service.record(action="mine", connection=conn)

    assert "through that same connection" in str(raised.value)
    assert "from one thread at a time" in str(raised.value)
