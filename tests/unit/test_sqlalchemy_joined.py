"""``track()`` and transactions the session does not own: a Session joined into its Connection's
transaction (the outer transaction decides), a commit() retried after a later hook raised (no
entry written twice), a stopped tracking's listeners, and ``session=scoped_session``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orm
import pytest
from sqlalchemy import Engine, String, event, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, scoped_session
from sqlalchemy.orm import sessionmaker as make_sessionmaker

from audit_engine.integrations import sqlalchemy_joined as joined
from audit_engine.integrations.sqlalchemy import _retiring, track


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(50), default="")


@pytest.fixture
def engine(trail_db: Path | str) -> Iterator[Engine]:
    with orm.engine(trail_db, Base.metadata) as made:
        yield made


def _notes(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT count(*) FROM notes")).scalar_one())


def _outcomes(trail_db: Path | str, service: object) -> list[tuple[str, str, str]]:
    return [
        (e.action, e.resource_id or "", e.outcome.value)
        for e in orm.entries(trail_db, service)  # type: ignore[arg-type]
    ]


# -- a session joined into its Connection's transaction -------------------------------------------


@pytest.mark.parametrize("mode", ["atomic", "after_commit"])
def test_a_session_closed_uncommitted_inside_engine_begin_is_no_failure(
    trail_db: Path | str, engine: Engine, mode: str
) -> None:
    with orm.service(trail_db) as service, orm.tracked(service, Base) as start:
        start(mode=mode, record_rollbacks=True)
        with engine.begin() as connection, Session(bind=connection) as session:
            session.add(Note(id=1, title="committed by engine.begin()"))
            session.flush()
        assert _notes(engine) == 1
        assert _outcomes(trail_db, service) == [("notes.create", "1", "success")]
    assert orm.verify_ok(trail_db)


@pytest.mark.parametrize("mode", ["atomic", "after_commit"])
@pytest.mark.parametrize("join", ["conditional_savepoint", "create_savepoint", "rollback_only"])
def test_the_outer_commit_keeps_the_entries(
    trail_db: Path | str, engine: Engine, mode: str, join: str
) -> None:
    with orm.service(trail_db) as service, orm.tracked(service, Base) as start:
        start(mode=mode)
        with engine.connect() as connection:
            outer = connection.begin()
            with Session(bind=connection, join_transaction_mode=join) as session:  # type: ignore[arg-type]
                session.add(Note(id=1))
                session.commit()
            outer.commit()
        assert _outcomes(trail_db, service) == [("notes.create", "1", "success")]


@pytest.mark.parametrize("mode", ["atomic", "after_commit"])
@pytest.mark.parametrize("join", ["conditional_savepoint", "rollback_only"])
def test_the_test_suite_pattern_rolled_back_leaves_only_failures(
    trail_db: Path | str, engine: Engine, mode: str, join: str
) -> None:
    """SQLAlchemy's "join a session into an external transaction" recipe for test suites: the
    session commits, the outer transaction is rolled back; neither row nor success remains."""
    with orm.service(trail_db) as service, orm.tracked(service, Base) as start:
        start(mode=mode, record_rollbacks=True)
        with engine.connect() as connection:
            outer = connection.begin()
            with Session(bind=connection, join_transaction_mode=join) as session:  # type: ignore[arg-type]
                session.add(Note(id=1))
                session.commit()
            outer.rollback()
        assert _notes(engine) == 0
        assert _outcomes(trail_db, service) == [("notes.create", "1", "failure")]


@pytest.mark.parametrize("mode", ["atomic", "after_commit"])
def test_a_joined_session_rolled_back_is_a_failure(
    trail_db: Path | str, engine: Engine, mode: str
) -> None:
    with orm.service(trail_db) as service, orm.tracked(service, Base) as start:
        start(mode=mode, record_rollbacks=True)
        with engine.connect() as connection:
            outer = connection.begin()
            with Session(bind=connection) as session:
                session.add(Note(id=1))
                session.flush()
                session.rollback()  # rollback_only: the outer transaction goes with it
            assert not outer.is_active
        assert _outcomes(trail_db, service) == [("notes.create", "1", "failure")]


# -- a commit() retried after a later before_commit hook raised -----------------------------------


def test_a_retried_commit_writes_each_entry_once(trail_db: Path | str, engine: Engine) -> None:
    calls: list[None] = []

    def flaky(session: Session) -> None:
        calls.append(None)
        if len(calls) == 1:
            raise RuntimeError("the application's hook failed once")

    with orm.service(trail_db) as service, orm.tracked(service, Base) as start:
        start()
        event.listen(Session, "before_commit", flaky)  # after track(): runs after its write
        try:
            with Session(engine) as session:
                session.add(Note(id=1))
                with pytest.raises(RuntimeError, match="failed once"):
                    session.commit()
                session.add(Note(id=2))
                session.commit()  # before: UNIQUE constraint failed: audit_entries.event_id
        finally:
            event.remove(Session, "before_commit", flaky)
        assert _notes(engine) == 2
        assert _outcomes(trail_db, service) == [
            ("notes.create", "1", "success"),
            ("notes.create", "2", "success"),
        ]
    assert orm.verify_ok(trail_db)


# -- stop() and the commit listeners ------------------------------------------------------------


def test_a_stopped_tracking_leaves_when_its_last_pending_transaction_ends(
    trail_db: Path | str, engine: Engine
) -> None:
    with orm.service(trail_db) as service:
        tracking = track(service, Base)
        listeners = list(tracking._end_listeners)
        try:
            with Session(engine) as session:
                session.add(Note(id=1))
                session.flush()
                tracking.stop()
                assert all(joined.hub_has(*listener) for listener in listeners)  # it waits
                session.commit()
        finally:
            tracking.stop()
        # Gone at that commit's end, not at some later track() or stop().
        assert not any(joined.hub_has(*listener) for listener in listeners)
        assert tracking not in _retiring
        with Session(engine) as later:
            later.add(Note(id=2))
            later.commit()
            assert not any(key.startswith("audit_engine.track") for key in later.info)
        assert [e.resource_id for e in orm.entries(trail_db, service)] == ["1"]


# -- session=scoped_session --------------------------------------------------------------------


def test_a_scoped_session_is_accepted_as_its_sessionmaker(
    trail_db: Path | str, engine: Engine
) -> None:
    factory = make_sessionmaker(engine)
    scoped = scoped_session(factory)
    with orm.service(trail_db) as service, orm.tracked(service, Base) as start:
        tracking = start(session=scoped)
        assert tracking.session is factory
        scoped.add(Note(id=1))
        scoped.commit()
        scoped.remove()
        with Session(engine) as other:  # not one of the scoped_session's
            other.add(Note(id=2))
            other.commit()
        assert [e.resource_id for e in orm.entries(trail_db, service)] == ["1"]
