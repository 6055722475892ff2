"""``track()`` and many-to-many relationships: each row of a ``secondary=`` association table
the ORM inserts or deletes is one entry, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orm
import pytest
from sqlalchemy import Column, Engine, ForeignKey, Table
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship


class Base(DeclarativeBase):
    pass


tag_link = Table(
    "tag_link",
    Base.metadata,
    Column("note_id", ForeignKey("notes.id"), primary_key=True),
    Column("tag_id", ForeignKey("tags.id"), primary_key=True),
)


class Tag(Base):
    __tablename__ = "tags"
    id: Mapped[int] = mapped_column(primary_key=True)
    notes: Mapped[list[Note]] = relationship(secondary=tag_link, back_populates="tags")


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    tags: Mapped[list[Tag]] = relationship(secondary=tag_link, back_populates="notes")


@pytest.fixture
def engine(trail_db: Path | str) -> Iterator[Engine]:
    with orm.engine(trail_db, Base.metadata) as made:
        yield made


def _links(trail_db: Path | str, service: Any) -> list[tuple[Any, ...]]:
    return [
        (e.action, e.operation.value, e.resource_type, e.resource_id, e.details)
        for e in orm.entries(trail_db, service)
        if e.resource_type == "tag_link"
    ]


def _create(note: int, tag: int) -> tuple[Any, ...]:
    details = {"note_id": [None, note], "tag_id": [None, tag]}
    return ("tag_link.create", "create", "tag_link", f"[{note},{tag}]", details)


def _delete(note: int, tag: int) -> tuple[Any, ...]:
    details = {"note_id": [note, None], "tag_id": [tag, None]}
    return ("tag_link.delete", "delete", "tag_link", f"[{note},{tag}]", details)


@pytest.mark.parametrize("mode", ["atomic", "after_commit"])
def test_append_remove_replace_and_delete_record_one_entry_per_link(
    trail_db: Path | str, engine: Engine, mode: str
) -> None:
    with orm.service(trail_db) as service, orm.tracked(service, Base) as start:
        start(mode=mode)
        with Session(engine) as session:
            note, first, second = Note(id=1), Tag(id=2), Tag(id=3)
            session.add_all([note, first, second])
            session.commit()
            note.tags.append(first)  # back_populates: first.notes shows it too
            session.commit()
            note.tags.remove(first)
            session.commit()
            note.tags = [first, second]
            session.commit()
            second.notes.remove(note)  # from the other side
            session.commit()
            session.delete(note)  # its remaining link goes with it
            session.commit()
        changes = _links(trail_db, service)

    assert changes == [
        _create(1, 2),
        _delete(1, 2),
        _create(1, 2),
        _create(1, 3),
        _delete(1, 3),
        _delete(1, 2),
    ]


def test_links_of_a_rolled_back_transaction_are_not_recorded(
    trail_db: Path | str, engine: Engine
) -> None:
    with orm.service(trail_db) as service, orm.tracked(service, Base) as start:
        start()
        with Session(engine) as session:
            note, tag = Note(id=1), Tag(id=2)
            session.add_all([note, tag])
            session.commit()
            note.tags.append(tag)
            session.flush()
            session.rollback()
        assert _links(trail_db, service) == []
    assert orm.verify_ok(trail_db)


def test_links_are_recorded_when_either_side_is_tracked_and_not_otherwise(
    trail_db: Path | str, engine: Engine
) -> None:
    with orm.service(trail_db) as service, orm.tracked(service, Base) as start:
        tracking = start(Tag)  # only the far side of note.tags
        with Session(engine) as session:
            note, tag = Note(id=1), Tag(id=2)
            session.add_all([note, tag])
            session.commit()
            note.tags.append(tag)
            session.commit()
            tracking.stop()
            note.tags.remove(tag)
            session.commit()
        assert _links(trail_db, service) == [_create(1, 2)]
