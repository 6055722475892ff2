"""Steps for a note-taking tool whose notes are saved through SQLAlchemy and audited by track()."""

import json
from typing import Any

from behave import given, then, when
from behave.runner import Context
from sqlalchemy import Column, ForeignKey, String, Table, create_engine, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship
from trail_backend import read_rows

from audit_engine.integrations.sqlalchemy import track

WAIT_S = 10.0
_COLUMNS = ("actor", "action", "operation", "outcome", "resource_id", "details")
_MODES = {"in the same transaction": "atomic", "once the save has committed": "after_commit"}


class _Base(DeclarativeBase):
    pass


class _Folder(_Base):
    __tablename__ = "folders"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


class _Label(_Base):
    __tablename__ = "labels"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


# Many-to-many: the association rows are the ORM's own, written by its flush.
_NOTE_LABELS = Table(
    "note_labels",
    _Base.metadata,
    Column("note_id", ForeignKey("notes.id"), primary_key=True),
    Column("label_id", ForeignKey("labels.id"), primary_key=True),
)


class _Note(_Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(String(2000))
    archived: Mapped[bool] = mapped_column(default=False)
    folder_id: Mapped[int | None] = mapped_column(ForeignKey("folders.id"), default=None)
    folder: Mapped[_Folder | None] = relationship()
    labels: Mapped[list[_Label]] = relationship(secondary=_NOTE_LABELS)


def _rows(context: Context) -> list[dict[str, Any]]:
    """The trail's entries in commit order, once everything handed to the queue is written."""
    world = context.world
    assert world.audit.flush(timeout=WAIT_S), "the audit writer did not catch up"
    return read_rows(world.database, _COLUMNS)


def _note_id(context: Context, title: str) -> int:
    with Session(context.world.notes_engine) as session:
        found = session.scalars(select(_Note.id).where(_Note.title == title)).one_or_none()
    assert found is not None, f"no note is called {title!r}"
    return found


@given("the note-taking tool keeps its notes through SQLAlchemy in the audited database")
def given_orm_tool(context: Context) -> None:
    world = context.world
    database = world.database
    url = (
        f"sqlite:///{database}"
        if not isinstance(database, str)
        else database.replace("postgresql://", "postgresql+psycopg://", 1)
    )
    engine = create_engine(url)
    world.cleanups.append(engine.dispose)
    _Base.metadata.create_all(engine)
    world.notes_engine = engine
    world.open_service()


@given("the tool's audit captures note changes {when}")
def given_tracking(context: Context, when: str) -> None:
    mode, _, rest = when.partition(", ")
    assert mode in _MODES, f"unknown moment to capture: {mode!r}"
    assert rest in ("", "recording cancelled attempts"), f"unknown option: {rest!r}"
    tracking = track(context.world.audit, _Note, mode=_MODES[mode], record_rollbacks=bool(rest))
    # Listeners are global: stopped before the scenario's services close.
    context.world.cleanups.append(tracking.stop)


@given('{actor} wrote the note "{title}" saying "{body}"')
def given_note(context: Context, actor: str, title: str, body: str) -> None:
    world = context.world
    with world.audit.context(actor=actor), Session(world.notes_engine) as session:
        session.add(_Note(title=title, body=body))
        session.commit()


@given("{actor} wrote {count:d} notes")
def given_notes(context: Context, actor: str, count: int) -> None:
    world = context.world
    with world.audit.context(actor=actor), Session(world.notes_engine) as session:
        session.add_all(_Note(title=f"note {n}", body="text") for n in range(count))
        session.commit()


def _retitle(context: Context, actor: str, old: str, new: str, *, cancel: bool) -> None:
    world = context.world
    world.note_id = _note_id(context, old)
    with world.audit.context(actor=actor), Session(world.notes_engine) as session:
        note = session.get(_Note, world.note_id)
        assert note is not None
        note.title = new
        session.flush()  # the change reaches the database, then the save is cancelled or kept
        if cancel:
            session.rollback()
        else:
            session.commit()


@when('{actor} retitles the note "{old}" to "{new}"')
def when_retitle(context: Context, actor: str, old: str, new: str) -> None:
    _retitle(context, actor, old, new, cancel=False)


@when('{actor} retitles the note "{old}" to "{new}" but the tool cancels the save')
def when_retitle_cancelled(context: Context, actor: str, old: str, new: str) -> None:
    _retitle(context, actor, old, new, cancel=True)


@when("{actor} archives every note at once")
def when_archive_all(context: Context, actor: str) -> None:
    world = context.world
    with world.audit.context(actor=actor), Session(world.notes_engine) as session:
        session.execute(update(_Note).values(archived=True))
        session.commit()


@then('the trail shows {actor} changed the title of the note from "{old}" to "{new}"')
def then_changed(context: Context, actor: str, old: str, new: str) -> None:
    changes = [r for r in _rows(context) if r["actor"] == actor]
    assert changes == [
        {
            "actor": actor,
            "action": "notes.update",
            "operation": "update",
            "outcome": "success",
            "resource_id": str(context.world.note_id),
            "details": {"title": [old, new]},  # only the field that changed
        }
    ], changes


@then('the trail shows {actor} created the note "{title}"')
def then_created(context: Context, actor: str, title: str) -> None:
    created = [r for r in _rows(context) if r["action"] == "notes.create"]
    assert [(r["actor"], r["details"]["title"]) for r in created] == [(actor, [None, title])]


@then('the note "{title}" is still called "{same}"')
def then_unchanged(context: Context, title: str, same: str) -> None:
    assert _note_id(context, same) == context.world.note_id


@then("the trail shows no change by {actor}")
def then_no_change(context: Context, actor: str) -> None:
    rows = _rows(context)
    assert [r for r in rows if r["actor"] == actor] == [], rows
    assert len(rows) == 1, rows  # the note's creation only


@then('the trail shows {actor}\'s attempt to retitle the note from "{old}" to "{new}" failed')
def then_attempt_failed(context: Context, actor: str, old: str, new: str) -> None:
    attempts = [r for r in _rows(context) if r["actor"] == actor]
    assert [(r["action"], r["outcome"], r["details"]) for r in attempts] == [
        ("notes.update", "failure", {"title": [old, new]})
    ], attempts


@then("the trail shows one bulk archive of notes by {actor} covering {count:d} notes")
def then_bulk(context: Context, actor: str, count: int) -> None:
    bulk = [r for r in _rows(context) if r["actor"] == actor]
    assert len(bulk) == 1, bulk
    (entry,) = bulk
    assert (entry["action"], entry["operation"], entry["details"]["rows"]) == (
        "notes.bulk_update",
        "update",
        count,
    )
    assert entry["details"]["statement"].startswith("UPDATE notes SET archived="), entry


@then("the trail shows no entry per archived note")
def then_no_per_note(context: Context) -> None:
    assert [r for r in _rows(context) if r["action"] == "notes.update"] == []


# -- folders: a foreign key changed through a relationship -------------------------------------


@given('{actor} filed the note "{title}" in the folder "{folder}"')
def given_filed_note(context: Context, actor: str, title: str, folder: str) -> None:
    world = context.world
    with world.audit.context(actor=actor), Session(world.notes_engine) as session:
        session.add_all([_Folder(name="Home"), _Folder(name="Work")])
        session.flush()
        home = session.scalars(select(_Folder).where(_Folder.name == folder)).one()
        session.add(_Note(title=title, body="text", folder=home))
        session.commit()
    world.folders = {f: _folder_id(context, f) for f in ("Home", "Work")}


def _folder_id(context: Context, name: str) -> int:
    with Session(context.world.notes_engine) as session:
        return session.scalars(select(_Folder.id).where(_Folder.name == name)).one()


def _move(context: Context, actor: str, title: str, folder: str | None) -> None:
    world = context.world
    world.note_id = _note_id(context, title)
    with world.audit.context(actor=actor), Session(world.notes_engine) as session:
        note = session.get(_Note, world.note_id)
        assert note is not None
        session.commit()  # the note is expired, as it is after any save: nothing old is loaded
        note.folder = None if folder is None else session.get(_Folder, world.folders[folder])
        session.commit()


@when('{actor} moves the note "{title}" to the folder "{folder}"')
def when_move(context: Context, actor: str, title: str, folder: str) -> None:
    _move(context, actor, title, folder)


@when('{actor} takes the note "{title}" out of every folder')
def when_unfile(context: Context, actor: str, title: str) -> None:
    _move(context, actor, title, None)


@then('the trail shows {actor} moved the note from the folder "{old}" to {new}')
def then_moved(context: Context, actor: str, old: str, new: str) -> None:
    folders = context.world.folders
    target = None if new == "no folder" else folders[new.removeprefix("the folder ").strip('"')]
    moves = [r for r in _rows(context) if r["actor"] == actor]
    assert [(r["action"], r["details"]) for r in moves] == [
        ("notes.update", {"folder_id": [folders[old], target]})
    ], moves


# -- a hand-off refused after the commit ----------------------------------------------------


@when('the audit service shuts down while {actor}\'s new note "{title}" is being saved')
def when_shutdown_mid_save(context: Context, actor: str, title: str) -> None:
    world = context.world
    with world.audit.context(actor=actor), Session(world.notes_engine) as session:
        session.add(_Note(title=title, body="text"))
        session.flush()
        world.audit.close(timeout=WAIT_S)
        session.commit()  # must not raise: the note is saved


@then('{actor}\'s save of the note "{title}" succeeded')
def then_saved(context: Context, actor: str, title: str) -> None:
    assert _note_id(context, title)


@then("the entry of {actor}'s note waits in the dead-letter file for a replay")
def then_set_aside(context: Context, actor: str) -> None:
    lines = context.world.audit.settings.deadletter_file.read_text().splitlines()
    entries = [json.loads(line)["entry"] for line in lines]
    assert [(e["actor"], e["action"]) for e in entries] == [(actor, "notes.create")], entries


# -- labels: many-to-many links -------------------------------------------------------------


def _labelled(context: Context, actor: str, title: str, change: Any) -> None:
    world = context.world
    note_id = _note_id(context, title)
    with world.audit.context(actor=actor), Session(world.notes_engine) as session:
        note = session.get(_Note, note_id)
        assert note is not None
        change(session, note)
        session.commit()
    with Session(world.notes_engine) as session:
        world.labels = {label.name: label.id for label in session.scalars(select(_Label))}
    world.note_id = note_id


@when('{actor} labels the note "{title}" "{first}" and "{second}"')
def when_label(context: Context, actor: str, title: str, first: str, second: str) -> None:
    def put_on(session: Session, note: _Note) -> None:
        note.labels.extend([_Label(name=first), _Label(name=second)])

    _labelled(context, actor, title, put_on)


@when('{actor} takes the label "{name}" off the note "{title}"')
def when_unlabel(context: Context, actor: str, name: str, title: str) -> None:
    def take_off(session: Session, note: _Note) -> None:
        note.labels = [label for label in note.labels if label.name != name]

    _labelled(context, actor, title, take_off)


@then('the trail shows {actor} put the labels "{first}" and "{second}" on the note')
def then_labels_put(context: Context, actor: str, first: str, second: str) -> None:
    world = context.world
    links = [r for r in _rows(context) if r["actor"] == actor and r["action"].startswith("note_")]
    found = sorted((r["action"], r["details"]["label_id"][1]) for r in links)
    labels = world.labels
    assert found == sorted(
        [("note_labels.create", labels[first]), ("note_labels.create", labels[second])]
    ), links
    assert all(r["details"]["note_id"] == [None, world.note_id] for r in links), links


@then('the trail shows {actor} took the label "{name}" off the note')
def then_label_taken(context: Context, actor: str, name: str) -> None:
    world = context.world
    links = [r for r in _rows(context) if r["actor"] == actor]
    assert [(r["action"], r["details"]) for r in links] == [
        (
            "note_labels.delete",
            {"label_id": [world.labels[name], None], "note_id": [world.note_id, None]},
        )
    ], links
