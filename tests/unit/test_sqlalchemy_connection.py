"""``record(..., connection=...)`` and ``AuditService(connection=...)`` with a SQLAlchemy Session
or Connection: written inside that transaction, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import orm
import pytest
import trails
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from audit_engine import AuditService, AuditSettings

MakeService = Callable[..., AuditService]


@pytest.fixture
def engine(trail_db: Path | str) -> Iterator[Engine]:
    """The application's engine on the test's database (each backend in turn), with a table."""
    with orm.engine(trail_db) as made:
        with made.begin() as conn:
            conn.execute(text("CREATE TABLE notes (id integer PRIMARY KEY, title text)"))
        yield made


@pytest.fixture
def service(trail_db: Path | str) -> Iterator[AuditService]:
    with orm.service(trail_db) as made:
        yield made


def _event_ids(trail_db: Path | str) -> list[str]:
    found = trails.query(trail_db, "SELECT event_id FROM audit_entries ORDER BY id")
    return [row[0] for row in found]


def test_a_session_commit_keeps_the_entry_with_the_change(
    trail_db: Path | str, engine: Engine, service: AuditService
) -> None:
    with Session(engine) as session:
        session.execute(text("INSERT INTO notes VALUES (1, 'a')"))
        service.record(action="note.create", event_id="kept", connection=session)
        assert _event_ids(trail_db) == []  # not before the session commits
        session.commit()

    assert _event_ids(trail_db) == ["kept"]
    assert orm.verify_ok(trail_db)


def test_a_session_rollback_removes_the_entry_with_the_change(
    trail_db: Path | str, engine: Engine, service: AuditService
) -> None:
    with Session(engine) as session:
        session.execute(text("INSERT INTO notes VALUES (1, 'a')"))
        service.record(action="note.create", event_id="undone", connection=session)
        session.rollback()
        service.record(action="note.create", event_id="kept", connection=session)
        session.commit()

    assert _event_ids(trail_db) == ["kept"]
    assert trails.query(trail_db, "SELECT count(*) FROM notes") == [(0,)]
    assert orm.verify_ok(trail_db)


def test_an_entry_first_in_the_transaction_begins_it_so_commit_keeps_it(
    trail_db: Path | str, engine: Engine, service: AuditService
) -> None:
    # Nothing ran on the session before: the entry begins the transaction SQLAlchemy commits.
    with Session(engine) as session:
        service.record(action="first", event_id="first", connection=session)
        assert session.in_transaction()
        session.commit()

    assert _event_ids(trail_db) == ["first"]


def test_an_entry_first_in_the_transaction_goes_when_the_session_closes_uncommitted(
    trail_db: Path | str, engine: Engine, service: AuditService
) -> None:
    with Session(engine) as session:
        service.record(action="first", event_id="first", connection=session)
    # The pool's reset rolled it back; the next transaction on that pooled connection is clean.
    with Session(engine) as session:
        service.record(action="second", event_id="second", connection=session)
        session.commit()

    assert _event_ids(trail_db) == ["second"]
    assert orm.verify_ok(trail_db)


def test_a_core_connection_commit_keeps_and_rollback_removes(
    trail_db: Path | str, engine: Engine, service: AuditService
) -> None:
    with engine.connect() as conn:
        service.record(action="a", event_id="undone", connection=conn)
        assert conn.in_transaction()
        conn.rollback()
        service.record(action="a", event_id="kept", connection=conn)
        conn.commit()
    with engine.begin() as conn:  # a transaction already begun by the application
        conn.execute(text("INSERT INTO notes VALUES (2, 'b')"))
        service.record(action="a", event_id="in-begin", connection=conn)

    assert _event_ids(trail_db) == ["kept", "in-begin"]
    assert orm.verify_ok(trail_db)


def test_a_savepoint_rolled_back_removes_only_its_entry(
    trail_db: Path | str, engine: Engine, service: AuditService
) -> None:
    with Session(engine) as session:
        service.record(action="a", event_id="outer", connection=session)
        savepoint = session.begin_nested()
        service.record(action="a", event_id="inner", connection=session)
        savepoint.rollback()
        session.commit()

    assert _event_ids(trail_db) == ["outer"]
    assert orm.verify_ok(trail_db)


def test_a_service_holding_a_session_follows_it_across_transactions(
    trail_db: Path | str, engine: Engine
) -> None:
    with Session(engine) as session:
        service = AuditService(AuditSettings(database=trail_db), connection=session)
        try:
            session.commit()  # the schema the constructor created, in the session's transaction
            service.record(action="a", event_id="one")
            session.commit()
            service.record(action="a", event_id="gone")
            session.rollback()
            service.record(action="a", event_id="two")
            session.commit()
        finally:
            service.close(timeout=10)

    assert _event_ids(trail_db) == ["one", "two"]
    assert service.stats().written == 3  # written into the session; one rolled back with it
    assert orm.verify_ok(trail_db)


def test_the_reported_object_not_executable_error_is_gone(
    trail_db: Path | str, engine: Engine, service: AuditService
) -> None:
    # The issue passed session.connection(): a SQLAlchemy Connection, which leaked
    # ObjectNotExecutableError from the engine's SQL.
    with Session(engine) as session:
        service.record(action="a", event_id="via-connection", connection=session.connection())
        session.commit()

    assert _event_ids(trail_db) == ["via-connection"]


# -- what is refused --------------------------------------------------------------------------

_SUPPORTED = (
    "None or the caller's transaction to write the entry in: a sqlite3.Connection, a "
    "psycopg.Connection, or a SQLAlchemy Session or Connection on either driver "
    "(sqlite+pysqlite, postgresql+psycopg)"
)


class _OtherDriverConnection:
    """A DBAPI connection of another driver (it forwards to sqlite3, but is not one)."""

    def __init__(self, path: str) -> None:
        self._real = sqlite3.connect(path, check_same_thread=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@pytest.mark.parametrize("bad", ["x.db", 3, object()])
def test_anything_else_names_what_is_supported(make_service: MakeService, bad: object) -> None:
    service = make_service(cleanup_enabled=False)

    with pytest.raises(TypeError) as raised:
        service.record(action="a", connection=bad)

    assert str(raised.value) == (
        f"record() connection must be {_SUPPORTED}; got {type(bad).__name__}"
    )


def test_a_session_on_another_driver_names_the_driver(
    make_service: MakeService, tmp_path: Path
) -> None:
    other = create_engine(
        "sqlite://", creator=lambda: _OtherDriverConnection(str(tmp_path / "app.db"))
    )
    service = make_service(cleanup_enabled=False)
    try:
        with Session(other) as session, pytest.raises(TypeError) as raised:
            service.record(action="a", connection=session)
        with pytest.raises(TypeError) as for_service:
            AuditService(AuditSettings(database=tmp_path / "t.db"), connection=other.connect())
    finally:
        other.dispose()

    driver = f"{__name__}._OtherDriverConnection (sqlite+pysqlite)"
    assert str(raised.value) == (
        f"record() connection must be {_SUPPORTED}; got a SQLAlchemy Session on {driver}"
    )
    assert str(for_service.value) == (
        f"AuditService() connection must be {_SUPPORTED}; got a SQLAlchemy Connection on {driver}"
    )
    assert service.stats().accepted == 0


def _other_dbapi(path: Path) -> ModuleType:
    """Another driver's DBAPI module (as create_engine(module=...) takes one): sqlite3's
    attributes, but its connections are not sqlite3's."""
    module = ModuleType("othersqlite")
    module.__dict__.update(
        {name: getattr(sqlite3, name) for name in dir(sqlite3) if not name.startswith("__")}
    )
    module.connect = lambda *args, **kwargs: _OtherDriverConnection(str(path))  # type: ignore[attr-defined]
    return module


def test_a_refused_driver_leaves_the_session_as_it_was(
    make_service: MakeService, tmp_path: Path
) -> None:
    # Checked from the dialect first: nothing begun, no connection checked out of the pool.
    app_db = tmp_path / "app.db"
    other = create_engine(f"sqlite:///{app_db}", module=_other_dbapi(app_db))
    service = make_service(cleanup_enabled=False)
    try:
        with Session(other) as session:
            with pytest.raises(TypeError) as raised:
                service.record(action="a", connection=session)
            assert not session.in_transaction()
            assert other.pool.checkedout() == 0  # type: ignore[attr-defined]
        with other.connect() as conn:
            with pytest.raises(TypeError):
                AuditService(AuditSettings(database=tmp_path / "t.db"), connection=conn)
            assert not conn.in_transaction()
    finally:
        other.dispose()

    assert str(raised.value) == (
        f"record() connection must be {_SUPPORTED}; got a SQLAlchemy Session on othersqlite "
        "(sqlite+pysqlite)"
    )


def test_a_dialect_of_another_driver_is_refused_by_its_name(
    make_service: MakeService, tmp_path: Path
) -> None:
    other = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    other.dialect.driver = "pysqlcipher"  # as the sqlite+pysqlcipher dialect names itself
    service = make_service(cleanup_enabled=False)
    try:
        with Session(other) as session, pytest.raises(TypeError) as raised:
            service.record(action="a", connection=session)
        assert not session.in_transaction()
    finally:
        other.dispose()

    assert str(raised.value).endswith(
        "got a SQLAlchemy Session on sqlite3.dbapi2 (sqlite+pysqlcipher)"
    )


def test_a_scoped_session_writes_in_its_current_session(
    trail_db: Path | str, engine: Engine, service: AuditService
) -> None:
    # Flask-SQLAlchemy's db.session is one: the entry goes into the session of this scope.
    db_session = scoped_session(sessionmaker(engine))
    try:
        db_session.execute(text("INSERT INTO notes VALUES (1, 'a')"))
        service.record(action="note.create", event_id="scoped", connection=db_session)
        assert _event_ids(trail_db) == []
        db_session.commit()
        service.record(action="note.create", event_id="undone", connection=db_session)
        db_session.rollback()
    finally:
        db_session.remove()

    assert _event_ids(trail_db) == ["scoped"]


def test_a_service_holding_a_scoped_session_follows_its_current_session(
    trail_db: Path | str, engine: Engine
) -> None:
    db_session = scoped_session(sessionmaker(engine))
    service = AuditService(AuditSettings(database=trail_db), connection=db_session)
    try:
        db_session.commit()  # the schema the constructor created
        db_session.remove()  # the end of a request: the next write uses a new session
        service.record(action="a", event_id="in-new-session")
        db_session.commit()
    finally:
        service.close(timeout=10)
        db_session.remove()

    assert _event_ids(trail_db) == ["in-new-session"]
