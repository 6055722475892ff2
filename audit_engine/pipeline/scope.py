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
from audit_engine.rows import Row, row_entry

# A key function as the application writes it: it gets the entry as a model (the API's edge).
KeyFunc = Callable[[AuditEntry], Hashable]
# The same key, as record() applies it: to the row, the one form of an entry past intake.
RowKey = Callable[[Row], Hashable]


def default_key(entry: Row | AuditEntry) -> Hashable:
    """Entries are duplicates when actor, action, resource_type and resource_id are equal.

    Reads the four fields by name, so it takes the row record() holds (or a model) as it is.
    """
    return (entry.actor, entry.action, entry.resource_type, entry.resource_id)


def row_key(key: KeyFunc) -> RowKey:
    """``key`` applied to a row: the default key reads it directly; another gets a model."""
    if key is default_key:
        return default_key

    def keyed(row: Row) -> Hashable:
        return key(row_entry(row))

    return keyed


class AuditScope:
    """One open unit of work: a key function and the keys already accepted in it."""

    __slots__ = ("key", "row_key", "seen")

    def __init__(self, key: KeyFunc, seen: set[Hashable]) -> None:
        self.key = key
        self.row_key = row_key(key)  # decided once per scope, not per record()
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
