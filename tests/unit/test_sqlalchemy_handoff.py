"""When ``track()`` hands a transaction's entries on: atomic writes them at the commit (so the
chain's lock comes after the application's row locks), after_commit hands them over once, and
a hand-off refused after the commit sets them aside instead of failing the commit; ``stop()``
with entries pending still hands them on."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orm
import pytest
from sqlalchemy import Engine, String, create_engine, event, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from audit_engine import AuditServiceClosed, AuditStore
from audit_engine.integrations import sqlalchemy_joined as joined
from audit_engine.integrations.sqlalchemy import _retiring, track

JOIN_S = 30.0


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(50), default="")
    password: Mapped[str | None] = mapped_column(String(50), default=None)


@pytest.fixture
def engine(trail_db: Path | str) -> Iterator[Engine]:
    with orm.engine(trail_db, Base.metadata) as made:
        yield made


# -- atomic: written at the commit, inside the transaction ---------------------------------------


def test_atomic_takes_the_chain_lock_only_at_commit_so_row_locks_do_not_deadlock(
    pg_url: str,
) -> None:
    """The reviewer's case: A flushes a tracked change, B locks a row and flushes, A then needs
    B's row. Had A's flush taken the chain's lock, B's flush would wait for A and A for B."""
    engine = create_engine(orm.url(pg_url))
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.execute(text("CREATE TABLE counters (id int PRIMARY KEY, n int)"))
        session.execute(text("INSERT INTO counters VALUES (1, 0)"))
        session.commit()
    a_flushed, b_locked = threading.Event(), threading.Event()
    results: dict[str, str] = {}

    def a() -> None:
        try:
            with Session(engine) as session:
                session.add(Note(id=1, title="a"))
                session.flush()
                a_flushed.set()
                assert b_locked.wait(JOIN_S)
                session.execute(text("UPDATE counters SET n = n + 1 WHERE id = 1"))  # waits for B
                session.commit()
            results["A"] = "committed"
        except Exception as exc:
            results["A"] = repr(exc)

    def b() -> None:
        try:
            with Session(engine) as session:
                assert a_flushed.wait(JOIN_S)
                session.execute(text("UPDATE counters SET n = n + 1 WHERE id = 1"))
                b_locked.set()
                session.add(Note(id=2, title="b"))
                session.flush()
                session.commit()
            results["B"] = "committed"
        except Exception as exc:
            results["B"] = repr(exc)

    service = orm.open_service(pg_url, busy_timeout=5)
    try:
        with track(service, Note):
            threads = [threading.Thread(target=a), threading.Thread(target=b)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(JOIN_S)
            assert not any(thread.is_alive() for thread in threads)
    finally:
        service.close(timeout=10)
        engine.dispose()

    assert results == {"A": "committed", "B": "committed"}
    assert sorted(e.resource_id or "" for e in orm.entries(pg_url)) == ["1", "2"]
    assert orm.verify_ok(pg_url)


def test_an_atomic_entry_that_cannot_be_written_fails_the_commit_before_it_commits(
    trail_db: Path | str, engine: Engine
) -> None:
    service = orm.open_service(trail_db)
    with track(service, Note), Session(engine) as session:
        session.add(Note(id=1, title="not saved"))
        session.flush()
        service.close(timeout=10)
        with pytest.raises(AuditServiceClosed):
            session.commit()
        session.rollback()

    with Session(engine) as session:
        assert session.query(Note).count() == 0
    assert orm.entries(trail_db) == []


def test_a_change_flushed_by_the_commit_itself_is_written_too(
    trail_db: Path | str, engine: Engine
) -> None:
    with orm.open_service(trail_db) as service, track(service, Note), Session(engine) as session:
        # Registered after track(): runs after its before_commit, so the commit's own flush
        # captures this change once the others were written.
        @event.listens_for(session, "before_commit")
        def add_one_more(committing: Session) -> None:
            if not committing.info.get("added"):
                committing.info["added"] = True
                committing.add(Note(id=2, title="late"))

        session.add(Note(id=1, title="first"))
        session.commit()

    assert [e.resource_id for e in orm.entries(trail_db)] == ["1", "2"]


# -- after_commit: one hand-off, never a failed commit -------------------------------------------


def test_a_refused_hand_off_after_the_commit_is_set_aside_not_raised(
    trail_db: Path | str, engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dead_letters = tmp_path / "set-aside.jsonl"
    service = orm.open_service(trail_db, deadletter_path=dead_letters, redact_fields=["password"])
    with track(service, Note, mode="after_commit"), Session(engine) as session:
        session.add_all([Note(id=1, title="a", password="hunter2"), Note(id=2, title="b")])
        session.flush()
        service.close(timeout=10)  # the application's shutdown closed the audit service first
        with caplog.at_level(logging.ERROR, "audit_engine.integrations.sqlalchemy"):
            session.commit()  # returns: the rows are committed

    with Session(engine) as session:
        assert session.query(Note).count() == 2
    (message,) = [
        r.getMessage() for r in caplog.records if r.name == "audit_engine.integrations.sqlalchemy"
    ]
    assert message.startswith("2 audit entries of a finished transaction could not be handed")
    assert str(dead_letters) in message
    assert "audit-engine replay-deadletter" in message
    assert "hunter2" not in dead_letters.read_text()  # redacted as the trail would have it
    with AuditStore(trail_db) as store:
        assert store.replay_dead_letters(dead_letters).replayed == 2
    assert [e.resource_id for e in orm.entries(trail_db)] == ["1", "2"]


def test_a_full_queue_makes_a_commit_wait_once_not_once_per_change(
    db_path: Path, tmp_path: Path
) -> None:
    engine = create_engine(orm.url(tmp_path / "app.db"))
    Base.metadata.create_all(engine)
    wait_s = 0.3
    service = orm.open_service(
        db_path,
        queue_maxsize=1,
        block_timeout=wait_s,
        buffer_flush_interval=3600,
        deadletter_path=tmp_path / "dl.jsonl",
    )
    blocker = sqlite3.connect(db_path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # the writer is stuck: the queue stays full
        # The writer takes the first entry at once (the queue is full) and stays stuck retrying
        # its commit; the second waits for that room if need be and then fills the queue.
        service.record(action="held.by.the.writer")
        service.record(action="fills.the.queue")
        with track(service, Note, mode="after_commit"), Session(engine) as session:
            session.add_all(Note(id=n) for n in range(8))
            started = time.monotonic()
            session.commit()
            took = time.monotonic() - started
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        service.close(timeout=10)
        engine.dispose()

    assert took < 4 * wait_s  # one wait of block_timeout; 8 waits before
    assert len((tmp_path / "dl.jsonl").read_text().splitlines()) == 8


# -- stop() with entries pending ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["atomic", "after_commit"])
def test_entries_pending_at_stop_are_handed_on_at_their_commit(
    trail_db: Path | str, engine: Engine, mode: str
) -> None:
    with orm.open_service(trail_db) as service:
        session = Session(engine)
        tracking = track(service, Note, mode=mode)
        committed = tracking._end_listeners[-1]
        assert joined.hub_has(*committed)
        session.add(Note(id=1, title="flushed while tracked"))
        session.flush()
        tracking.stop()
        session.add(Note(id=2, title="after stop: not captured"))
        session.commit()
        session.close()
        # The transaction's end took the stopped tracking's commit listeners off, without
        # waiting for a later track() or stop().
        assert not joined.hub_has(*committed)
        assert tracking not in _retiring
        assert service.flush(timeout=10)

    assert [e.resource_id for e in orm.entries(trail_db)] == ["1"]
