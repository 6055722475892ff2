"""A synchronous event bus: domain events go to their handlers in the emitting thread.

The bus knows nothing about auditing; :meth:`AuditService.subscribe` attaches an audit
handler to it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

from audit_engine.details import to_json_details
from audit_engine.errors import EventDispatchError
from audit_engine.models import AuditEntry, Operation, Outcome, ids_as_text, utcnow

logger = logging.getLogger("audit_engine.bus")  # the documented logger name

E = TypeVar("E", bound="DomainEvent")
Handler = Callable[[Any], object]

# DomainEvent fields that map one-to-one onto AuditEntry fields (besides correlation_id).
_ENTRY_FIELDS = ("actor", "operation", "outcome", "resource_type", "resource_id", "critical")
_CONTEXT_FIELDS = ("actor", "resource_type", "resource_id", "correlation_id")


class DomainEvent(BaseModel):
    """Something that happened in the application. Subclasses add typed fields.

    The entry's own fields (``actor``, ``operation``, ``outcome``, ``resource_type``,
    ``resource_id``, ``correlation_id``, ``critical``) are fields of every event, with the entry's
    defaults; a subclass may narrow them (``actor: str``, ``operation = Operation.UPDATE``).
    :meth:`to_audit_entry` maps them onto the entry and puts ``payload`` and every other subclass
    field into ``details``. An unknown keyword is refused (it would otherwise vanish).
    """

    # As AuditEntry: an error names the field, not the value (it may hold a secret).
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    event_type: str = Field(min_length=1)
    timestamp: datetime = Field(default_factory=utcnow)
    actor: str | None = None
    operation: Operation = Operation.EXECUTE
    outcome: Outcome = Outcome.SUCCESS
    resource_type: str | None = None
    resource_id: str | None = None
    correlation_id: str | None = None
    critical: bool = False
    payload: dict[str, JsonValue] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _ids_as_text(cls, data: Any) -> Any:
        # resource_id=42 as the entry takes it: stored as "42".
        return ids_as_text(data) if isinstance(data, dict) else data

    @field_validator("payload", mode="before")
    @classmethod
    def _payload_as_json(cls, value: Any) -> Any:
        # The payload becomes details: it takes what details take, converted the same way.
        return to_json_details(value, "payload")

    def to_audit_entry(self) -> AuditEntry:
        """The audit entry this event stands for (override for a custom mapping)."""
        return AuditEntry(**self.audit_fields())

    def audit_fields(self) -> dict[str, Any]:
        """The fields of :meth:`to_audit_entry`'s entry, before validation.

        ``AuditService.subscribe`` records these as keywords (the fast path) unless a subclass
        overrides ``to_audit_entry``.
        """
        data = self.model_dump(
            mode="json", exclude={"event_type", "timestamp", "correlation_id", "payload"}
        )
        fields: dict[str, Any] = {k: data.pop(k) for k in _ENTRY_FIELDS if k in data}
        fields["correlation_id"] = self.correlation_id
        # Who and what the event is about, left unset (None, not given): left out, so an
        # audit.context() block around emit() supplies them, as it does for record().
        for name in _CONTEXT_FIELDS:
            if fields[name] is None and name not in self.model_fields_set:
                del fields[name]
        details = dict(self.payload)
        details.update(data)
        return {
            "action": self.event_type,
            "timestamp": self.timestamp,
            "details": details,
            **fields,
        }


class EventBus:
    """Synchronous publish/subscribe.

    ``emit()`` calls every handler subscribed to the event's class or one of its base classes, in
    subscription order, in the calling thread. A failing handler does not stop the others; once all
    ran, the failures are raised together as one :class:`EventDispatchError` — or only logged when
    the bus is built with ``raise_errors=False``.
    """

    def __init__(self, *, raise_errors: bool = True) -> None:
        self._raise_errors = raise_errors
        self._lock = threading.Lock()
        # Copy-on-write tuple: emit() reads it without taking the lock.
        self._subscriptions: tuple[tuple[type[DomainEvent], Handler], ...] = ()

    def subscribe(self, event_type: type[E], handler: Callable[[E], object]) -> None:
        """Call ``handler(event)`` for every emitted instance of ``event_type`` (or a subclass)."""
        if not (isinstance(event_type, type) and issubclass(event_type, DomainEvent)):
            raise TypeError(f"event_type must be a DomainEvent subclass, got {event_type!r}")
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {handler!r}")
        with self._lock:
            self._subscriptions = (*self._subscriptions, (event_type, handler))

    def audit_into(
        self,
        record: Callable[..., str | None],
        mapper: Callable[[DomainEvent], AuditEntry | None] | None = None,
    ) -> Callable[[DomainEvent], None]:
        """Subscribe ``record`` (a service's) to every event; returns the handler subscribed.

        Each event becomes an entry through ``mapper(event)`` (returning None skips the event)
        or :meth:`DomainEvent.to_audit_entry`.
        """

        def audit_event(event: DomainEvent) -> None:
            if mapper is None and type(event).to_audit_entry is DomainEvent.to_audit_entry:
                record(**event.audit_fields())  # keywords: record()'s fast path
                return
            entry = mapper(event) if mapper is not None else event.to_audit_entry()
            if entry is not None:
                record(entry)

        self.subscribe(DomainEvent, audit_event)
        return audit_event

    def unsubscribe(self, event_type: type[DomainEvent], handler: Callable[..., object]) -> bool:
        """Remove one subscription; returns False when there was none."""
        with self._lock:
            subs = list(self._subscriptions)
            for i, (etype, h) in enumerate(subs):
                if etype is event_type and h == handler:
                    del subs[i]
                    self._subscriptions = tuple(subs)
                    return True
        return False

    def emit(self, event: DomainEvent) -> None:
        """Dispatch ``event`` to its handlers, in subscription order."""
        if not isinstance(event, DomainEvent):
            raise TypeError(f"emit() takes a DomainEvent, got {type(event).__name__}")
        failures: list[tuple[Callable[..., object], BaseException]] = []
        for event_type, handler in self._subscriptions:
            if isinstance(event, event_type):
                try:
                    handler(event)
                except Exception as exc:
                    failures.append((handler, exc))
        if not failures:
            return
        error = EventDispatchError(event.event_type, failures)
        if self._raise_errors:
            raise error
        logger.error("%s", error, exc_info=failures[0][1])
