"""What a ``with`` block sets for each ``record()`` in it: context(), disabled(), scope().

Each service keeps one ContextVar holding the innermost :class:`Frame` (None outside every block),
so ``record()`` reads all three with a single ``get()`` — what it paid for scopes alone before —
and a plain ``record()`` outside any block costs what it did. A frame is immutable: a block sets a
new one derived from the current one and puts the old one back on the way out, so nesting, threads
and asyncio tasks behave like structlog's ``bound_contextvars`` (a new thread starts with nothing;
``contextvars.copy_context().run`` carries the caller's frame along).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from typing import Any

from audit_engine.models import AuditEntry
from audit_engine.pipeline.scope import AuditScope, KeyFunc, default_key

# The fields a context may set: who and what a block of work is about. The others belong to each
# entry (what happened and how it ended), so a context that sets them is a mistake in the caller.
CONTEXT_FIELDS = ("actor", "correlation_id", "resource_type", "resource_id")
_PER_ENTRY = frozenset(AuditEntry.model_fields) - {*CONTEXT_FIELDS, "details"}


class Frame:
    """The state of one nesting level: bound fields and details, the scope, ``disabled``."""

    __slots__ = ("bound", "details", "disabled", "fields", "scope")

    def __init__(
        self,
        scope: AuditScope | None = None,
        fields: dict[str, Any] | None = None,
        details: dict[str, Any] | None = None,
        disabled: bool = False,
    ) -> None:
        self.scope = scope
        self.fields = fields or {}
        self.details = details or {}
        self.disabled = disabled
        # Whether record() has anything to merge: decided once here, not per entry.
        self.bound = bool(self.fields or self.details)

    def apply(self, given: dict[str, Any]) -> dict[str, Any]:
        """``record()``'s keywords with this context's values where the caller gave none.

        A keyword the caller passed wins, even None; details are merged key by key, the
        entry's own keys winning. Details that are not a mapping are left for validation to
        refuse, as without a context.
        """
        merged = {**self.fields, **given}
        if self.details:
            details = given.get("details")
            if details is None and "details" not in given:
                merged["details"] = self.details
            elif isinstance(details, Mapping):
                merged["details"] = {**self.details, **details}
        return merged


def entry_fields(entry: AuditEntry) -> dict[str, Any]:
    """An entry's fields as ``record()`` keywords: the ones it was given, its id and its time.

    Fields left at their defaults are not given, so a context fills them in.
    """
    given = {name: getattr(entry, name) for name in entry.model_fields_set}
    given["event_id"] = entry.event_id
    given["timestamp"] = entry.timestamp
    return given


def context_values(
    details: Mapping[str, Any] | None, values: dict[str, Any], max_details_bytes: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``context()``'s arguments checked as an entry's: (bound fields, bound details).

    Raises TypeError for a field that belongs to each entry, and the entry model's ValueError
    (naming the field or the details key) for a value an entry could not hold — in the caller's
    thread, when the block opens, rather than at every ``record()`` inside it.
    """
    refused = sorted(_PER_ENTRY.intersection(values))
    if refused:
        raise TypeError(
            f"context() does not take {', '.join(refused)}: "
            f"{'it belongs' if len(refused) == 1 else 'they belong'} to each entry; a context "
            f"sets {', '.join(CONTEXT_FIELDS)} and details"
        )
    if details is not None and not isinstance(details, Mapping):
        raise TypeError(f"context() details must be a mapping, got {type(details).__name__}")
    fields = {name: values.pop(name) for name in CONTEXT_FIELDS if name in values}
    merged_details = {**(details or {}), **values}
    # The model judges the values as it would in record(): lengths, types, JSON details.
    checked = AuditEntry.model_validate(
        {"action": "context", **fields, "details": merged_details},
        context={"max_details_bytes": max_details_bytes},  # the service's limit, not the default
    )
    return {name: getattr(checked, name) for name in fields}, checked.details


class ContextStack:
    """The frames of one service, held in a ContextVar so each thread or task has its own."""

    def __init__(self, name: str) -> None:
        self.var: ContextVar[Frame | None] = ContextVar(name, default=None)

    def current(self) -> Frame | None:
        """The innermost frame in this context, if any."""
        return self.var.get()

    @contextmanager
    def _enter(self, frame: Frame) -> Iterator[Frame]:
        token = self.var.set(frame)
        try:
            yield frame
        finally:
            self.var.reset(token)

    def bind(
        self, fields: dict[str, Any], details: dict[str, Any]
    ) -> AbstractContextManager[Frame]:
        """A block whose entries get ``fields`` and ``details`` (inner values win)."""
        outer = self.var.get() or Frame()
        return self._enter(
            Frame(
                outer.scope,
                {**outer.fields, **fields},
                {**outer.details, **details},
                outer.disabled,
            )
        )

    def disable(self) -> AbstractContextManager[Frame]:
        """A block in which ``record()`` records nothing but critical entries."""
        outer = self.var.get() or Frame()
        return self._enter(Frame(outer.scope, outer.fields, outer.details, disabled=True))

    def open_scope(
        self, key: KeyFunc | None = None, *, fresh: bool = False
    ) -> AbstractContextManager[AuditScope]:
        """Open a scope; inner scopes share the outer one's markers unless ``fresh``."""
        if key is not None and not callable(key):
            raise TypeError(f"key must be a callable taking an AuditEntry, got {key!r}")
        outer = self.var.get() or Frame()
        if outer.scope is None or fresh:
            scope = AuditScope(key or default_key, set())
        else:
            scope = AuditScope(key or outer.scope.key, outer.scope.seen)
        return self._scope_block(Frame(scope, outer.fields, outer.details, outer.disabled))

    @contextmanager
    def _scope_block(self, frame: Frame) -> Iterator[AuditScope]:
        with self._enter(frame):
            assert frame.scope is not None
            yield frame.scope
