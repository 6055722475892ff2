"""Units of work for de-duplication: ``with audit.scope(): ...``.

A scope follows the current contextvars context (so the current thread, or the current asyncio
task), may nest, and remembers which entry keys it has already accepted. Outside any scope nothing
is de-duplicated.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from audit_engine.models import AuditEntry

KeyFunc = Callable[[AuditEntry], Hashable]


def default_key(entry: AuditEntry) -> Hashable:
    """Entries are duplicates when actor, action, resource_type and resource_id are equal."""
    return (entry.actor, entry.action, entry.resource_type, entry.resource_id)


class AuditScope:
    """One open unit of work: a key function and the keys already accepted in it."""

    __slots__ = ("key", "seen")

    def __init__(self, key: KeyFunc, seen: set[Hashable]) -> None:
        self.key = key
        self.seen = seen


class ScopeStack:
    """The scopes of one service, held in a ContextVar so each thread or task has its own."""

    def __init__(self, name: str) -> None:
        self._current: ContextVar[AuditScope | None] = ContextVar(name, default=None)

    def current(self) -> AuditScope | None:
        """The innermost open scope in this context, if any."""
        return self._current.get()

    @contextmanager
    def open(self, key: KeyFunc | None = None, *, fresh: bool = False) -> Iterator[AuditScope]:
        """Open a scope; inner scopes share the outer one's markers unless ``fresh``."""
        if key is not None and not callable(key):
            raise TypeError(f"key must be a callable taking an AuditEntry, got {key!r}")
        outer = self._current.get()
        if outer is None or fresh:
            scope = AuditScope(key or default_key, set())
        else:
            scope = AuditScope(key or outer.key, outer.seen)
        token = self._current.set(scope)
        try:
            yield scope
        finally:
            self._current.reset(token)
