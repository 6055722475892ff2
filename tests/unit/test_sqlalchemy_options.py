"""``track()``'s arguments are checked before any listener is installed, and the diff's values
are JSON by one fixed rule per type."""

from __future__ import annotations

import enum
import hashlib
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import orm
import pytest
from sqlalchemy import LargeBinary, Numeric, String
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from audit_engine import AuditService, AuditStore
from audit_engine.integrations.sqlalchemy import track
from audit_engine.integrations.sqlalchemy_changes import json_value


class Base(DeclarativeBase):
    pass


class Color(enum.Enum):
    RED = "red"


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    made: Mapped[datetime]
    blob: Mapped[bytes] = mapped_column(LargeBinary)
    color: Mapped[Color]
    code: Mapped[str] = mapped_column(String(10))


@pytest.fixture
def service(make_service: Any) -> AuditService:
    made: AuditService = make_service(cleanup_enabled=False)
    return made


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        ((), {}, TypeError, "track() needs a declarative Base or at least one mapped class"),
        (
            (Color,),
            {},
            TypeError,
            "track() targets must be a declarative Base or mapped classes, got <enum 'Color'>",
        ),
        (
            (Item,),
            {"mode": "later"},
            ValueError,
            "track() mode must be 'atomic' or 'after_commit', got 'later'",
        ),
        (
            (Item,),
            {"record_rollbacks": 1},
            TypeError,
            "track() record_rollbacks must be True or False, got int",
        ),
        (
            (Item,),
            {"session": "db"},
            TypeError,
            "track() session must be None (every session), a Session, a sessionmaker, a "
            "scoped_session or a Session subclass, got str",
        ),
        (
            (Item,),
            {"exclude_fields": "code"},
            TypeError,
            "track() exclude_fields must be a collection of field names (a set, a list), got str",
        ),
        (
            (Item,),
            {"exclude_fields": {"code", 3}},
            TypeError,
            "track() exclude_fields holds 3, not a field name (str)",
        ),
        (
            (Item,),
            {"exclude_fields": {"items": {"code"}}},
            TypeError,
            "track() exclude_fields keys must be mapped classes, got 'items'",
        ),
        (
            (Item,),
            {"exclude_fields": {Item: {"code", "nope"}}},
            ValueError,
            "track() exclude_fields[Item] names nope, not a column attribute of Item",
        ),
    ],
)
def test_a_bad_argument_is_refused_naming_it(
    service: AuditService,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error) as raised:
        track(service, *args, **kwargs)

    assert str(raised.value) == message


def test_a_service_that_is_not_one_is_refused() -> None:
    with pytest.raises(TypeError) as raised:
        track("audit.db", Item)  # type: ignore[arg-type]

    assert str(raised.value) == "track() service must be an AuditService, got str"


def test_every_session_choice_is_accepted_and_stopped(service: AuditService) -> None:
    for chosen in (None, Session, sessionmaker(), Session()):
        with track(service, Base, session=chosen) as tracking:
            assert tracking.active is True
        assert tracking.active is False


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        (None, None),
        (True, True),
        (7, 7),
        (1.5, 1.5),
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        ("text", "text"),
        (datetime(2026, 1, 31, 12, 0, tzinfo=UTC), "2026-01-31T12:00:00+00:00"),
        (date(2026, 1, 31), "2026-01-31"),
        (time(9, 30), "09:30:00"),
        (Decimal("1.10"), "1.10"),
        (UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        (Color.RED, "red"),
        (b"abc", {"bytes": 3, "sha256": hashlib.sha256(b"abc").hexdigest()}),
        ({"a": [1, (2, Decimal("3"))]}, {"a": [1, [2, "3"]]}),
        ({3, 1, 2}, [1, 2, 3]),
        (Path("x/y"), "x/y"),
    ],
)
def test_a_value_is_stored_as_json_by_one_rule_per_type(value: object, stored: object) -> None:
    assert json_value(value) == stored


def test_a_row_of_rich_types_is_recorded_as_json(service: AuditService, tmp_path: Path) -> None:
    made = datetime(2026, 1, 31, 12, 0)
    with (
        orm.engine(tmp_path / "app.db", Base.metadata) as engine,
        track(service, Item),
        Session(engine) as session,
    ):
        item = Item(
            id=1, price=Decimal("9.90"), made=made, blob=b"\x00\x01", color=Color.RED, code="c"
        )
        session.add(item)
        session.commit()

    # Atomic: written in the session's transaction, so into the application's database.
    with AuditStore(tmp_path / "app.db") as reader:
        (entry,) = list(reader.query())
    assert entry.details == {
        "id": [None, 1],
        "price": [None, "9.90"],
        "made": [None, "2026-01-31T12:00:00"],
        "blob": [None, {"bytes": 2, "sha256": hashlib.sha256(b"\x00\x01").hexdigest()}],
        "color": [None, "red"],
        "code": [None, "c"],
    }
