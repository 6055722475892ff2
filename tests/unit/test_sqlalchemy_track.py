"""``audit_engine.integrations.sqlalchemy.track``: ORM changes as entries with a field diff, in
the session's transaction (atomic) or after its commit, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orm
import pytest
from sqlalchemy import Engine, ForeignKey, String, delete, insert, text, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from audit_engine import AuditService
from audit_engine.integrations.sqlalchemy import Tracking, track


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str | None] = mapped_column(String(2000), default=None)
    password: Mapped[str | None] = mapped_column(String(50), default=None)
    archived: Mapped[bool] = mapped_column(default=False)


class Tag(Base):
    __tablename__ = "tags"
    note_id: Mapped[int] = mapped_column(ForeignKey("notes.id"), primary_key=True)
    lang: Mapped[str] = mapped_column(String(5), primary_key=True)
    label: Mapped[str] = mapped_column(String(50))


@pytest.fixture
def engine(trail_db: Path | str) -> Iterator[Engine]:
    with orm.engine(trail_db, Base.metadata) as made:
        yield made


@pytest.fixture
def service(trail_db: Path | str) -> Iterator[AuditService]:
    with orm.service(trail_db) as made:
        yield made


@pytest.fixture
def tracked(service: AuditService) -> Iterator[Callable[..., Tracking]]:
    """``tracked(*targets, **options)``: track() on the test's service; every one stopped after."""
    with orm.tracked(service, Base) as start:
        yield start


def _changes(trail_db: Path | str, service: AuditService) -> list[tuple[Any, ...]]:
    return [
        (e.action, e.operation.value, e.resource_type, e.resource_id, e.details)
        for e in orm.entries(trail_db, service)
    ]


# -- atomic: one entry per object, with the field diff ------------------------------------------


def test_create_update_delete_record_their_field_diffs(
    trail_db: Path | str, engine: Engine, service: AuditService, tracked: Any
) -> None:
    tracked(Note, exclude_fields={"password"})
    with Session(engine) as session:
        note = Note(id=1, title="Groceries", body="milk")
        session.add(note)
        session.commit()
        note.title = "Shopping"  # expired by the commit: the old value is read before the flush
        session.commit()
        note.body = "milk"  # set to what it was: no entry
        session.commit()
        session.delete(note)
        session.commit()

    assert _changes(trail_db, service) == [
        (
            "notes.create",
            "create",
            "notes",
            "1",
            {
                "id": [None, 1],
                "title": [None, "Groceries"],
                "body": [None, "milk"],
                "archived": [None, False],
            },
        ),
        ("notes.update", "update", "notes", "1", {"title": ["Groceries", "Shopping"]}),
        (
            "notes.delete",
            "delete",
            "notes",
            "1",
            {
                "id": [1, None],
                "title": ["Shopping", None],
                "body": ["milk", None],
                "archived": [False, None],
            },
        ),
    ]
    assert orm.verify_ok(trail_db)


def test_atomic_entries_commit_and_roll_back_with_the_change(
    trail_db: Path | str, engine: Engine, service: AuditService, tracked: Any
) -> None:
    tracked(Note, mode="atomic")
    with Session(engine) as session:
        session.add(Note(id=1, title="kept"))
        session.flush()
        assert orm.entries(trail_db, service) == []  # written, not yet committed
        session.commit()
        session.add(Note(id=2, title="undone"))
        session.flush()
        session.rollback()

    assert [e.resource_id for e in orm.entries(trail_db, service)] == ["1"]
    with Session(engine) as session:
        assert [n.id for n in session.query(Note)] == [1]
    assert orm.verify_ok(trail_db)


def test_a_composite_primary_key_is_a_json_array(
    trail_db: Path | str, engine: Engine, service: AuditService, tracked: Any
) -> None:
    tracked(Tag)
    with Session(engine) as session:
        session.add(Note(id=7, title="n"))
        session.add(Tag(note_id=7, lang="en", label="x"))
        session.commit()

    assert [(e.action, e.resource_id) for e in orm.entries(trail_db, service)] == [
        ("tags.create", '[7,"en"]')
    ]


# -- after_commit ---------------------------------------------------------------------------


def test_after_commit_entries_wait_for_the_commit_and_a_rollback_discards_them(
    trail_db: Path | str, engine: Engine, service: AuditService, tracked: Any
) -> None:
    tracked(mode="after_commit")
    with Session(engine) as session:
        session.add(Note(id=1, title="a"))
        session.flush()
        assert service.stats().accepted == 0
        session.commit()
        assert service.stats().accepted == 1
        session.add(Note(id=2, title="b"))
        session.flush()
        session.rollback()

    assert [e.resource_id for e in orm.entries(trail_db, service)] == ["1"]
    assert service.stats().accepted == 1


@pytest.mark.parametrize("mode", ["atomic", "after_commit"])
def test_a_rolled_back_change_is_recorded_as_a_failure_when_asked(
    trail_db: Path | str, engine: Engine, service: AuditService, tracked: Any, mode: str
) -> None:
    tracked(mode=mode, record_rollbacks=True)
    with Session(engine) as session:
        session.add(Note(id=1, title="a"))
        session.commit()
        session.add(Note(id=2, title="b"))
        session.flush()
        session.rollback()

    assert [(e.resource_id, e.outcome.value) for e in orm.entries(trail_db, service)] == [
        ("1", "success"),
        ("2", "failure"),
    ]
    with Session(engine) as session:
        assert [n.id for n in session.query(Note)] == [1]


@pytest.mark.parametrize("mode", ["atomic", "after_commit"])
def test_a_savepoint_rolled_back_loses_its_entries_and_a_released_one_keeps_them(
    trail_db: Path | str, engine: Engine, service: AuditService, tracked: Any, mode: str
) -> None:
    tracked(mode=mode)
    with Session(engine) as session:
        session.add(Note(id=1, title="outer"))
        with session.begin_nested():
            session.add(Note(id=2, title="released"))
        savepoint = session.begin_nested()
        session.add(Note(id=3, title="undone"))
        session.flush()
        savepoint.rollback()
        session.commit()

    assert [e.resource_id for e in orm.entries(trail_db, service)] == ["1", "2"]


# -- bulk statements ------------------------------------------------------------------------


def test_a_bulk_statement_is_one_entry_with_its_sql_and_row_count(
    trail_db: Path | str, engine: Engine, service: AuditService, tracked: Any
) -> None:
    tracked(Note)
    with Session(engine) as session:
        session.execute(insert(Note), [{"id": n, "title": f"n{n}"} for n in range(1, 4)])
        session.execute(update(Note).where(Note.id < 3).values(archived=True))
        session.execute(delete(Note).where(Note.id < 3))
        session.execute(update(Note), [{"id": 3, "title": "by key"}])  # an update by primary key
        session.execute(text("UPDATE notes SET title = 'not the ORM'"))  # not captured
        session.commit()

    marker = "?" if isinstance(trail_db, Path) else "%("
    found = [
        (e.action, e.operation.value, e.details["rows"]) for e in orm.entries(trail_db, service)
    ]
    assert found == [
        ("notes.bulk_create", "create", 3),
        ("notes.bulk_update", "update", 2),
        ("notes.bulk_delete", "delete", 2),
        ("notes.bulk_update", "update", 1),
    ]
    statements = [e.details["statement"] for e in orm.entries(trail_db, service)]
    assert statements[1].startswith("UPDATE notes SET archived=")
    assert statements[3].startswith("UPDATE notes SET title=")
    assert "WHERE notes.id = " in statements[3]
    assert all(marker in text for text in statements)  # placeholders, never the values


# -- what is diffed -------------------------------------------------------------------------


def test_excluded_fields_are_never_diffed_and_redaction_applies(
    trail_db: Path | str, engine: Engine, make_service: Any, tracked: Any
) -> None:
    service = make_service(database=trail_db, cleanup_enabled=False, redact_fields=["password"])
    with track(service, Note, exclude_fields={Note: {"body"}}), Session(engine) as session:
        session.add(Note(id=1, title="t", body="long text", password="hunter2"))
        session.commit()
    with track(service, Note, exclude_fields={"title", "archived"}), Session(engine) as session:
        session.add(Note(id=2, title="t", body="b"))
        session.commit()

    first, second = (e.details for e in orm.entries(trail_db, service))
    assert set(first) == {"id", "title", "password", "archived"}
    assert first["password"] == "[REDACTED]"  # the service's policy masks the whole change
    assert set(second) == {"id", "body"}  # password was never set: nothing to show


def test_a_class_mapped_after_track_is_tracked_and_stop_removes_every_listener(
    trail_db: Path | str, engine: Engine, service: AuditService, tracked: Any
) -> None:
    class LateBase(DeclarativeBase):
        pass

    tracking = tracked(LateBase)

    class Later(LateBase):
        __tablename__ = "later"
        id: Mapped[int] = mapped_column(primary_key=True)

    LateBase.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(Later(id=1))
        session.commit()
        tracking.stop()
        tracking.stop()  # idempotent
        session.add(Later(id=2))
        session.execute(update(Later).values(id=Later.id + 10))
        session.commit()

    assert [(e.action, e.resource_id) for e in orm.entries(trail_db, service)] == [
        ("later.create", "1")
    ]
    assert tracking.active is False


def test_only_the_chosen_sessionmakers_sessions_are_tracked(
    trail_db: Path | str, engine: Engine, service: AuditService, tracked: Any
) -> None:
    audited_sessions = sessionmaker(engine)
    other_sessions = sessionmaker(engine)
    tracked(Note, session=audited_sessions)
    with audited_sessions() as session:
        session.add(Note(id=1, title="a"))
        session.commit()
    with other_sessions() as session:
        session.add(Note(id=2, title="b"))
        session.commit()

    assert [e.resource_id for e in orm.entries(trail_db, service)] == ["1"]


def test_deleting_an_expired_object_records_the_values_it_had(
    trail_db: Path | str, engine: Engine, service: AuditService, tracked: Any
) -> None:
    with Session(engine) as session:
        session.add(Note(id=1, title="old", body="b"))
        session.commit()
    tracked(Note, exclude_fields={"password", "archived"})
    with Session(engine) as session:
        note = session.get(Note, 1)
        session.commit()  # expires every attribute: none is loaded when it is deleted
        session.delete(note)
        session.commit()

    assert _changes(trail_db, service) == [
        (
            "notes.delete",
            "delete",
            "notes",
            "1",
            {"id": [1, None], "title": ["old", None], "body": ["b", None]},
        )
    ]


# -- context and disabled() -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["atomic", "after_commit"])
def test_the_context_around_the_flush_gives_the_actor(
    trail_db: Path | str, engine: Engine, service: AuditService, tracked: Any, mode: str
) -> None:
    tracked(Note, mode=mode)
    with Session(engine) as session:
        with service.context(actor="alice", correlation_id="req-1"):
            session.add(Note(id=1, title="a"))
            session.flush()  # the change is captured here, inside the context
        session.commit()  # after_commit hands it on here, outside it
        with service.context(actor="bob"):
            session.add(Note(id=2, title="b"))  # only added: nothing flushed in the context
        session.commit()

    assert [(e.resource_id, e.actor, e.correlation_id) for e in orm.entries(trail_db, service)] == [
        ("1", "alice", "req-1"),
        ("2", None, None),
    ]


@pytest.mark.parametrize("mode", ["atomic", "after_commit"])
def test_nothing_is_captured_while_the_service_is_disabled(
    trail_db: Path | str, engine: Engine, service: AuditService, tracked: Any, mode: str
) -> None:
    tracked(Note, mode=mode)
    with Session(engine) as session:
        with service.disabled():
            session.add(Note(id=1, title="maintenance"))
            session.flush()
        session.commit()
        session.add(Note(id=2, title="b"))
        session.commit()

    assert [e.resource_id for e in orm.entries(trail_db, service)] == ["2"]
    assert service.stats().skipped_disabled == 1


def test_an_entry_that_cannot_be_recorded_fails_the_atomic_flush(
    trail_db: Path | str, engine: Engine, make_service: Any
) -> None:
    service = make_service(database=trail_db, cleanup_enabled=False, max_details_bytes=100)
    with track(service, Note), Session(engine) as session:
        session.add(Note(id=1, title="x" * 200))
        with pytest.raises(ValueError, match="more than max_details_bytes=100"):
            session.flush()
        session.rollback()

    with Session(engine) as session:
        assert session.query(Note).count() == 0
    assert orm.entries(trail_db, service) == []


def test_a_session_closed_uncommitted_records_the_attempt_as_a_failure(
    trail_db: Path | str, engine: Engine, service: AuditService, tracked: Any
) -> None:
    tracked(Note, mode="after_commit", record_rollbacks=True)
    with Session(engine) as session:
        session.add(Note(id=1, title="never saved"))
        session.flush()

    assert [(e.resource_id, e.outcome.value) for e in orm.entries(trail_db, service)] == [
        ("1", "failure")
    ]


def test_only_the_chosen_session_is_tracked(
    trail_db: Path | str, engine: Engine, service: AuditService, tracked: Any
) -> None:
    with Session(engine) as chosen, Session(engine) as other:
        tracked(Note, session=chosen, mode="after_commit")
        chosen.add(Note(id=1, title="a"))
        chosen.commit()
        other.add(Note(id=2, title="b"))
        other.commit()

    assert [e.resource_id for e in orm.entries(trail_db, service)] == ["1"]
