"""``track()``'s arguments, checked up front: targets, which sessions, excluded fields."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.orm import Mapper, Session, registry, sessionmaker

MODES = ("atomic", "after_commit")


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
        "track() session must be None (every session), a Session, a sessionmaker or a Session "
        f"subclass, got {type(session).__name__}"
    )


def exclusions(
    exclude_fields: Iterable[str] | Mapping[type, Iterable[str]] | None,
) -> tuple[frozenset[str], dict[type, frozenset[str]]]:
    """(names excluded on every class, names excluded per class), checked."""
    if exclude_fields is None:
        return frozenset(), {}
    if isinstance(exclude_fields, Mapping):
        by_class: dict[type, frozenset[str]] = {}
        for cls, names in exclude_fields.items():
            if not isinstance(cls, type):
                raise TypeError(f"track() exclude_fields keys must be mapped classes, got {cls!r}")
            by_class[cls] = field_names(names, f"exclude_fields[{cls.__name__}]")
            mapper: Any = inspect(cls, raiseerr=False)
            if isinstance(mapper, Mapper):
                known = {p.key for p in mapper.column_attrs}
                unknown = sorted(by_class[cls] - known)
                if unknown:
                    raise ValueError(
                        f"track() exclude_fields[{cls.__name__}] names {', '.join(unknown)}, "
                        f"not a column attribute of {cls.__name__}"
                    )
        return frozenset(), by_class
    return field_names(exclude_fields, "exclude_fields"), {}


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
