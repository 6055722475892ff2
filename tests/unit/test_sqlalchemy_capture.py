"""What ``track()`` sees: foreign keys set through relationships, ``onupdate=`` columns, the
row count of a RETURNING statement, the legacy bulk methods, and the arguments it refuses — on
SQLite and on a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orm
import pytest
from sqlalchemy import Engine, ForeignKey, String, insert, update
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)

from audit_engine import AuditService
from audit_engine.integrations.sqlalchemy import Tracking, track


class Base(DeclarativeBase):
    pass


class Folder(Base):
    __tablename__ = "folders"
    id: Mapped[int] = mapped_column(primary_key=True)
    notes: Mapped[list[Note]] = relationship(back_populates="folder")


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(50), default="")
    folder_id: Mapped[int | None] = mapped_column(ForeignKey("folders.id"))
    folder: Mapped[Folder | None] = relationship(back_populates="notes")


class Doc(Base):
    __tablename__ = "docs"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(50))
    version: Mapped[int] = mapped_column(default=1, onupdate=lambda: 2)
    updated_by: Mapped[str] = mapped_column(String(20), default="x", onupdate=lambda: "editor")


class Unmapped:
    pass


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
    with orm.tracked(service, Base) as start:
        yield start


# -- H1: a foreign key changed through a relationship ------------------------------------------


@pytest.mark.parametrize("mode", ["atomic", "after_commit"])
def test_a_foreign_key_set_through_a_relationship_records_its_true_old_value(
    trail_db: Path | str, engine: Engine, service: AuditService, tracked: Any, mode: str
) -> None:
    tracked(Note, mode=mode)
    with Session(engine) as session:
        first, second = Folder(id=1), Folder(id=2)
        a, b, c = Note(id=10, folder=first), Note(id=20, folder=first), Note(id=30, folder=first)
        session.add_all([first, second, a, b, c])
        session.commit()
        a.folder = second  # expired by the commit: the flush sets folder_id, the row had 1
        session.commit()
        b.folder = None  # unlinked: the UPDATE sets NULL
        session.commit()
        second.notes.append(c)  # from the other side of the relationship
        session.commit()
        session.refresh(a)  # loaded this time: the history holds the old value
        a.folder = None
        session.commit()

    updates = [
        (e.resource_id, e.details) for e in orm.entries(trail_db, service, operation="update")
    ]
    assert updates == [
        ("10", {"folder_id": [1, 2]}),
        ("20", {"folder_id": [1, None]}),
        ("30", {"folder_id": [1, 2]}),
        ("10", {"folder_id": [2, None]}),
    ]


# -- M2: columns an UPDATE sets by itself ------------------------------------------------------


def test_columns_set_by_onupdate_appear_in_the_update_diff(
    trail_db: Path | str, engine: Engine, service: AuditService, tracked: Any
) -> None:
    tracked(Doc)
    with Session(engine) as session:
        doc = Doc(id=1, title="a")
        session.add(doc)
        session.commit()
        doc.title = "b"  # expired: title, version and updated_by are read before the UPDATE
        session.commit()

    (entry,) = orm.entries(trail_db, service, operation="update")
    assert entry.details == {
        "title": ["a", "b"],
        "version": [1, 2],
        "updated_by": ["x", "editor"],
    }


# -- L2: the row count of a statement whose driver reports none --------------------------------


def test_a_bulk_statement_records_its_real_row_count(
    trail_db: Path | str, engine: Engine, service: AuditService, tracked: Any
) -> None:
    tracked(Note)
    with Session(engine) as session:
        session.execute(insert(Note).values(id=1, title="one"))  # a single insert
        session.execute(insert(Note), [{"id": 2}, {"id": 3}])
        returned = session.execute(update(Note).values(title="x").returning(Note.id)).all()
        session.commit()

    assert sorted(row.id for row in returned) == [1, 2, 3]  # the caller still gets its rows
    found = [(e.action, e.details["rows"]) for e in orm.entries(trail_db, service)]
    assert found == [("notes.bulk_create", 1), ("notes.bulk_create", 2), ("notes.bulk_update", 3)]


# -- H2: the legacy bulk methods -------------------------------------------------------------


@pytest.mark.parametrize("mode", ["atomic", "after_commit"])
def test_the_legacy_bulk_methods_are_one_entry_per_call(
    trail_db: Path | str, engine: Engine, service: AuditService, tracked: Any, mode: str
) -> None:
    tracked(Note, mode=mode)
    with Session(engine) as session:
        session.bulk_insert_mappings(Note, ({"id": n, "title": f"n{n}"} for n in (1, 2, 3)))
        session.bulk_update_mappings(Note, [{"id": 1, "title": "changed"}])
        session.bulk_save_objects([Note(id=4), Note(id=5), Folder(id=9)])  # Folder: not tracked
        session.commit()
        assert session.get(Note, 1) is not None
        session.bulk_insert_mappings(Note, [{"id": 6}])
        session.rollback()  # undone: no entry

    found = [
        (e.action, e.operation.value, e.details["statement"], e.details["rows"])
        for e in orm.entries(trail_db, service)
    ]
    assert found == [
        ("notes.bulk_create", "create", "Session.bulk_insert_mappings", 3),
        ("notes.bulk_update", "update", "Session.bulk_update_mappings", 1),
        ("notes.bulk_create", "create", "Session.bulk_save_objects", 2),
    ]


def test_stop_puts_the_legacy_bulk_methods_back(service: AuditService) -> None:
    made = sessionmaker()
    one = Session()
    originals = {name: Session.__dict__[name] for name in ("bulk_insert_mappings",)}
    with (
        track(service, Note),
        track(service, Doc, session=made),
        track(service, Folder, session=one),
    ):
        assert Session.__dict__["bulk_insert_mappings"] is not originals["bulk_insert_mappings"]
        assert "bulk_insert_mappings" in made.class_.__dict__
        assert "bulk_insert_mappings" in one.__dict__

    assert Session.__dict__["bulk_insert_mappings"] is originals["bulk_insert_mappings"]
    assert "bulk_insert_mappings" not in made.class_.__dict__
    assert "bulk_insert_mappings" not in one.__dict__


# -- L1 and L7: what track() refuses ----------------------------------------------------------


def test_a_class_a_live_tracking_covers_is_refused(service: AuditService) -> None:
    mine, theirs = sessionmaker(), sessionmaker()
    refused = "is already tracked by a live Tracking"
    with track(service, Base):
        with pytest.raises(ValueError, match=refused) as raised:
            track(service, Note)
        with pytest.raises(ValueError, match=refused):
            track(service, Doc, session=mine)  # Base covers every session
    with (
        track(service, Note, session=mine),
        track(service, Note, session=theirs),
        pytest.raises(ValueError, match=refused),
    ):
        track(service, Note, session=theirs)
    with track(service, Note) as again:  # stopped: free again
        assert again.active

    assert str(raised.value) == (
        "track() Note is already tracked by a live Tracking (targets Base): stop() it first, "
        "or every change would be recorded twice"
    )


@pytest.mark.parametrize(
    ("targets", "exclude", "error", "message"),
    [
        (
            (Note, Doc),
            {"titel"},
            ValueError,
            "track() exclude_fields names titel, not a column attribute of any tracked class "
            "(Doc, Note)",
        ),
        (
            (Note,),
            {Unmapped: {"x"}},
            TypeError,
            "track() exclude_fields keys must be mapped classes, got Unmapped (not mapped)",
        ),
    ],
)
def test_exclude_fields_names_are_checked_in_both_forms(
    service: AuditService,
    targets: tuple[type, ...],
    exclude: Any,
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error) as raised:
        track(service, *targets, exclude_fields=exclude)

    assert str(raised.value) == message
    with track(service, Base, exclude_fields={"title", "version"}) as ok:  # on some class each
        assert ok.active
