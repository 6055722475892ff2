"""Steps for a note-taking tool whose notes are saved through SQLAlchemy and audited by track()."""

from typing import Any

from behave import given, then, when
from behave.runner import Context
from sqlalchemy import String, create_engine, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from trail_backend import read_rows

from audit_engine.integrations.sqlalchemy import track

WAIT_S = 10.0
_COLUMNS = ("actor", "action", "operation", "outcome", "resource_id", "details")
_MODES = {"in the same transaction": "atomic", "once the save has committed": "after_commit"}


class _Base(DeclarativeBase):
    pass


class _Note(_Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(String(2000))
    archived: Mapped[bool] = mapped_column(default=False)


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
