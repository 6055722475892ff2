"""Units of work for de-duplication: ``with audit.scope(): ...``.

A scope follows the current contextvars context (so the current thread, or the current asyncio
task), may nest, and remembers which entry keys it has already accepted. Outside any scope nothing
is de-duplicated. The service keeps the open scope in its context frame (pipeline.context).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

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
