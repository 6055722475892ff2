"""``track()``'s arguments, checked up front: targets, which sessions, excluded fields."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.orm import Mapper, Session, registry, scoped_session, sessionmaker

from audit_engine import AuditService

MODES = ("atomic", "after_commit")


def check(service: object, targets: tuple[type, ...], mode: object, rollbacks: object) -> None:
    """Refuse a bad service, target, mode or record_rollbacks, naming it."""
    if not isinstance(service, AuditService):
        raise TypeError(f"track() service must be an AuditService, got {type(service).__name__}")
    if not targets:
        raise TypeError("track() needs a declarative Base or at least one mapped class")
    for target in targets:
        check_target(target)
    if mode not in MODES:
        raise ValueError(f"track() mode must be 'atomic' or 'after_commit', got {mode!r}")
    if not isinstance(rollbacks, bool):
        raise TypeError(
            f"track() record_rollbacks must be True or False, got {type(rollbacks).__name__}"
        )


def session_choice(session: object) -> object:
    """``session`` checked; a ``scoped_session`` (Flask-SQLAlchemy's ``db.session``) stands
    for the sessions its sessionmaker makes — each thread's current one among them."""
    if isinstance(session, scoped_session):
        session = session.session_factory
    sessions(session)
    return session


def check_target(target: object) -> None:
    """Refuse a target that is neither a mapped class nor a declarative Base."""
    if isinstance(target, type):
        if inspect(target, raiseerr=False) is not None:
            return  # a mapped class
        if isinstance(getattr(target, "registry", None), registry):
            return  # a declarative Base (DeclarativeBase or declarative_base())
    raise TypeError(f"track() targets must be a declarative Base or mapped classes, got {target!r}")


def sessions(session: object) -> tuple[Any, Callable[[Session], bool]]:
    """(what the session events listen on, whether a session is one to track)."""
    if session is None:
        return Session, lambda _: True
    if isinstance(session, sessionmaker):
        # A sessionmaker makes sessions of a class of its own.
        made: type[Session] = session.class_
        return session, lambda s: isinstance(s, made)
    if isinstance(session, type) and issubclass(session, Session):
        cls = session
        return cls, lambda s: isinstance(s, cls)
    if isinstance(session, Session):
        one = session
        return one, lambda s: s is one
    raise TypeError(
        "track() session must be None (every session), a Session, a sessionmaker, a "
        f"scoped_session or a Session subclass, got {type(session).__name__}"
    )


def exclusions(
    exclude_fields: Iterable[str] | Mapping[type, Iterable[str]] | None,
    targets: tuple[type, ...],
) -> tuple[frozenset[str], dict[type, frozenset[str]]]:
    """(names excluded on every class, names excluded per class), checked: each name must be a
    column attribute — of the class it is given for, or (the set form) of at least one class
    mapped under ``targets`` now (none mapped yet: nothing to check against)."""
    if exclude_fields is None:
        return frozenset(), {}
    if isinstance(exclude_fields, Mapping):
        by_class: dict[type, frozenset[str]] = {}
        for cls, names in exclude_fields.items():
            if not isinstance(cls, type):
                raise TypeError(f"track() exclude_fields keys must be mapped classes, got {cls!r}")
            mapper: Any = inspect(cls, raiseerr=False)
            if not isinstance(mapper, Mapper):
                raise TypeError(
                    f"track() exclude_fields keys must be mapped classes, got {cls.__name__} "
                    "(not mapped)"
                )
            by_class[cls] = field_names(names, f"exclude_fields[{cls.__name__}]")
            known = {p.key for p in mapper.column_attrs}
            unknown = sorted(by_class[cls] - known)
            if unknown:
                raise ValueError(
                    f"track() exclude_fields[{cls.__name__}] names {', '.join(unknown)}, "
                    f"not a column attribute of {cls.__name__}"
                )
        return frozenset(), by_class
    everywhere = field_names(exclude_fields, "exclude_fields")
    mappers = mapped_under(targets)
    if mappers:
        known = {p.key for mapper in mappers for p in mapper.column_attrs}
        unknown = sorted(everywhere - known)
        if unknown:
            names = ", ".join(sorted(m.class_.__name__ for m in mappers))
            raise ValueError(
                f"track() exclude_fields names {', '.join(unknown)}, not a column attribute of "
                f"any tracked class ({names})"
            )
    return everywhere, {}


def mapped_under(targets: tuple[type, ...]) -> list[Mapper[Any]]:
    """The mappers of the classes ``targets`` cover now: a Base's every mapped class, a
    mapped class and its mapped subclasses."""
    found: dict[Mapper[Any], None] = {}
    for target in targets:
        mapper: Any = inspect(target, raiseerr=False)
        if isinstance(mapper, Mapper):
            found.update(dict.fromkeys(mapper.self_and_descendants))
        else:
            found.update(dict.fromkeys(target.registry.mappers))  # type: ignore[attr-defined]
    return list(found)


def refuse_overlap(
    targets: tuple[type, ...],
    session: object,
    live: list[tuple[tuple[type, ...], object]],
) -> None:
    """Refuse ``targets`` if a live tracking (its targets and session choice, in ``live``)
    covers one of them for sessions both select: each change would be recorded twice."""
    for other_targets, other_session in live:
        if not _sessions_overlap(session, other_session):
            continue
        for target in targets:
            if any(issubclass(target, o) or issubclass(o, target) for o in other_targets):
                raise ValueError(
                    f"track() {target.__name__} is already tracked by a live Tracking "
                    f"(targets {', '.join(o.__name__ for o in other_targets)}): stop() it "
                    "first, or every change would be recorded twice"
                )


def _sessions_overlap(a: object, b: object) -> bool:
    if a is None or b is None or a is b:
        return True
    a = a.class_ if isinstance(a, sessionmaker) else a
    b = b.class_ if isinstance(b, sessionmaker) else b
    if isinstance(a, type) and isinstance(b, type):
        return issubclass(a, b) or issubclass(b, a)
    if isinstance(a, type):
        return isinstance(b, a)
    if isinstance(b, type):
        return isinstance(a, b)
    return a is b


def field_names(names: object, where: str) -> frozenset[str]:
    """``names`` as a set of field names. A lone str is refused: iterating it would exclude
    its letters, not the field it names."""
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise TypeError(
            f"track() {where} must be a collection of field names (a set, a list), "
            f"got {type(names).__name__}"
        )
    found = frozenset(names)
    for name in found:
        if not isinstance(name, str):
            raise TypeError(f"track() {where} holds {name!r}, not a field name (str)")
    return found
