"""The legacy bulk methods of a Session, seen while tracking.

``Session.bulk_insert_mappings``, ``bulk_update_mappings`` and ``bulk_save_objects`` write rows
without any ORM event (no mapper event, no ``do_orm_execute``), so :func:`track` can only see
them by wrapping the methods on what it tracks — the Session class, a sessionmaker's class, a
Session subclass or one Session. The wrappers are shared by every tracking on the same target
and removed when the last one stops; each calls the method it replaced (or, on a subclass, the
one it inherits) and then tells the trackings what was written: per class, whether the rows
were updates, and how many were given.
"""

from __future__ import annotations

import threading
import types
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.orm import Mapper, Session, sessionmaker

METHODS = ("bulk_insert_mappings", "bulk_update_mappings", "bulk_save_objects")

# (mapper, the rows are updates, how many rows)
Group = tuple[Mapper[Any], bool, int]
Listener = Callable[[Session, str, list[Group]], None]


class _Patch:
    """The wrappers installed on one target and the trackings that listen to them."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.listeners: list[Listener] = []
        self.saved: dict[str, Any] = {}  # what the class itself defined (restored on removal)

    def install(self) -> None:
        target = self.target
        if isinstance(target, type):
            for name in METHODS:
                self.saved[name] = target.__dict__.get(name)
                setattr(target, name, self._class_wrapper(target, name))
        else:
            for name in METHODS:
                setattr(target, name, types.MethodType(self._instance_wrapper(name), target))

    def uninstall(self) -> None:
        target = self.target
        for name in METHODS:
            saved = self.saved.get(name)
            if isinstance(target, type) and saved is not None:
                setattr(target, name, saved)
            else:
                delattr(target, name)

    def _class_wrapper(self, cls: type, name: str) -> Callable[..., Any]:
        saved = self.saved[name]

        def method(session: Session, *args: Any, **kw: Any) -> Any:
            # Resolved at each call: another patch below this class may come and go.
            def original(*a: Any, **k: Any) -> Any:
                if saved is not None:
                    return saved(session, *a, **k)
                return getattr(super(cls, session), name)(*a, **k)

            return self._call(session, name, original, args, kw)

        method.__name__ = name
        method.__qualname__ = f"{cls.__qualname__}.{name}"
        method.__doc__ = getattr(getattr(cls, name, None), "__doc__", None)
        return method

    def _instance_wrapper(self, name: str) -> Callable[..., Any]:
        def method(session: Session, *args: Any, **kw: Any) -> Any:
            original = getattr(type(session), name).__get__(session)
            return self._call(session, name, original, args, kw)

        method.__name__ = name
        return method

    def _call(
        self,
        session: Session,
        name: str,
        original: Callable[..., Any],
        args: tuple[Any, ...],
        kw: dict[str, Any],
    ) -> Any:
        groups, args, kw = _groups(name, args, kw)
        result = original(*args, **kw)
        for listener in list(self.listeners):
            listener(session, name, groups)
        return result


_patches: dict[int, _Patch] = {}
_lock = threading.Lock()


def patch_target(session_target: Any) -> Any:
    """What to wrap for ``track()``'s session choice: a class, or one Session."""
    if isinstance(session_target, sessionmaker):
        return session_target.class_
    return session_target


def listen(session_target: Any, listener: Listener) -> None:
    """Call ``listener`` after each legacy bulk call on ``session_target``'s sessions."""
    target = patch_target(session_target)
    with _lock:
        patch = _patches.get(id(target))
        if patch is None:
            patch = _patches[id(target)] = _Patch(target)
            patch.install()
        patch.listeners.append(listener)


def unlisten(session_target: Any, listener: Listener) -> None:
    """Stop calling ``listener``; the wrappers go with the last listener of the target."""
    target = patch_target(session_target)
    with _lock:
        patch = _patches.get(id(target))
        if patch is None or listener not in patch.listeners:
            return
        patch.listeners.remove(listener)
        if not patch.listeners:
            patch.uninstall()
            del _patches[id(target)]


def _groups(
    name: str, args: tuple[Any, ...], kw: dict[str, Any]
) -> tuple[list[Group], tuple[Any, ...], dict[str, Any]]:
    """What the call will write, and its arguments with the rows made a list (a generator
    could be read only once)."""
    if name == "bulk_save_objects":
        objects, args, kw = _listed(args, kw, 0, "objects")
        counts: dict[tuple[Mapper[Any], bool], int] = {}
        for obj in objects:
            state: Any = inspect(obj)
            key = (state.mapper, state.key is not None)
            counts[key] = counts.get(key, 0) + 1
        return [(mapper, update, rows) for (mapper, update), rows in counts.items()], args, kw
    mappings, args, kw = _listed(args, kw, 1, "mappings")
    target = args[0] if args else kw.get("mapper")
    mapper: Any = inspect(target, raiseerr=False)
    if not isinstance(mapper, Mapper):
        return [], args, kw  # not a mapped class: the method itself refuses it
    return [(mapper, name == "bulk_update_mappings", len(mappings))], args, kw


def _listed(
    args: tuple[Any, ...], kw: dict[str, Any], position: int, keyword: str
) -> tuple[list[Any], tuple[Any, ...], dict[str, Any]]:
    # Anything else (nothing given, not iterable) is left for the method itself to refuse.
    if len(args) > position and isinstance(args[position], Iterable):
        rows = list(args[position])
        return rows, (*args[:position], rows, *args[position + 1 :]), kw
    if isinstance(kw.get(keyword), Iterable):
        rows = list(kw[keyword])
        return rows, args, {**kw, keyword: rows}
    return [], args, kw
