"""Fork safety in one place: the one ``os.register_at_fork`` of the package and its registry.

A thread that is inside SQLite (or holds any lock) at the moment of ``os.fork()`` does not exist in
the child, so whatever it held stays held there for ever. The engine avoids that with *gates*:
each of its threads holds its own gate while it is inside SQLite, and the fork waits for every
gate. Objects that own such state register here (weakly: an unclosed service can still be
garbage-collected) and provide the :class:`ForkAware` protocol:

- ``fork_gates()`` — before the fork, in the forking thread: the registry acquires every gate,
  in registration order, each object's in the order it lists them (a gate listed twice, by two
  objects, is taken once). After the fork the gates are released in the parent and in the child.
- ``after_fork_in_child()`` — in the child, once every gate is released, called in registration
  order: put in fresh locks, forget the parent's threads and queued work, start over.

A hook that fails (``fork_gates()`` or ``after_fork_in_child()`` raising) is logged and skipped:
the fork and every other object's hooks go ahead, since a child left half reset is still better
off than one where the remaining objects keep the parent's locks. A gate must only be held for a
bounded time and never while its thread waits for another gate, so that the wait cannot deadlock.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

logger = logging.getLogger(__name__)

__all__ = ["ForkAware", "Gate", "keep_inherited", "register", "registered", "unregister"]


class Gate(Protocol):
    """A lock the fork waits for: ``threading.Lock`` and ``threading.RLock`` both are."""

    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...

    def release(self) -> None: ...


@runtime_checkable
class ForkAware(Protocol):
    """What an object registered with :func:`register` provides."""

    def fork_gates(self) -> Iterable[Gate]:
        """The locks the fork must wait for (none: an empty tuple), read at each fork."""
        ...

    def after_fork_in_child(self) -> None:
        """Start over in the child (nothing to do: ``pass``); the gates are released by then."""
        ...


# id(object) -> weak reference, in registration order. A plain dict, read with one list() call
# (atomic under the GIL), so neither registering nor forking needs a lock of its own — a lock
# here would itself have to be made fork-safe.
_registry: dict[int, weakref.ref[ForkAware]] = {}
# Gates held between the before-fork and the after-fork callbacks of the current fork.
_held: list[Gate] = []
# What a child inherited and must keep referenced (see keep_inherited).
_inherited: list[object] = []


def register(obj: ForkAware) -> None:
    """Take ``obj``'s gates at every fork and call its child hook, until it is collected.

    Registering an object twice keeps its first place in the order.
    """
    key = id(obj)
    current = _registry.get(key)
    if current is not None and current() is obj:
        return

    def forget(ref: weakref.ref[ForkAware], key: int = key) -> None:
        if _registry.get(key) is ref:
            del _registry[key]

    _registry[key] = weakref.ref(obj, forget)


def unregister(obj: ForkAware) -> None:
    """Stop taking ``obj``'s gates and calling its child hook (no error if not registered)."""
    current = _registry.get(id(obj))
    if current is not None and current() is obj:
        del _registry[id(obj)]


def registered() -> list[ForkAware]:
    """The live registered objects, in the order their hooks run."""
    return [obj for obj in (ref() for ref in list(_registry.values())) if obj is not None]


def keep_inherited(resource: object) -> None:
    """In a child: keep ``resource`` (a parent's connection, say) referenced for ever.

    Collecting it would close it, and closing (or checkpointing) a connection the parent still
    uses would disturb the parent's database.
    """
    _inherited.append(resource)


def _before_fork() -> None:
    seen: set[int] = set()
    for obj in registered():
        try:
            gates = list(obj.fork_gates())
        except Exception:
            logger.exception("fork_gates() of %r failed; forking without its gates", obj)
            continue
        for gate in gates:
            if id(gate) not in seen:
                seen.add(id(gate))
                gate.acquire()
                _held.append(gate)


def _release_gates() -> None:
    while _held:
        gate = _held.pop()
        try:
            gate.release()
        except Exception:  # pragma: no cover - a gate released by its hook: nothing to undo
            logger.exception("could not release fork gate %r", gate)


def _after_fork_in_child() -> None:
    _release_gates()
    for obj in registered():
        try:
            obj.after_fork_in_child()
        except Exception:
            logger.exception("after_fork_in_child() of %r failed", obj)


os.register_at_fork(
    before=_before_fork, after_in_parent=_release_gates, after_in_child=_after_fork_in_child
)
