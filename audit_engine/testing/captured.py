"""``capture(service)``: see, in a test, every entry a service accepts, as it would be stored.

A capture is a tap, not a replacement: the entries are still written as usual. While at least one
capture of a service is open, the service's own write functions (the one the constructor picked
for ``record()``, and the one for a ``connection=`` write) are wrapped on the instance by one
:class:`_Taps`, which hands what they accepted to every open capture; ``record_many()`` finds it
through one attribute (:data:`audit_engine.pipeline.bulk.TAP_ATTRIBUTE`). The last capture to
close puts the functions back, so a ``record()`` outside any capture runs exactly the code it
always does. Captures are independent: they may nest or overlap in any order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, ClassVar

from audit_engine.models import AuditEntry
from audit_engine.pipeline.bulk import TAP_ATTRIBUTE
from audit_engine.pipeline.service import AuditService
from audit_engine.rows import Row, row_entry

Keep = Callable[[Sequence[Row]], None]

_FIELDS = tuple(AuditEntry.model_fields)
# The service attributes a capture replaces on the instance, and puts back on the way out.
_WRAPPED = ("_accept_row", "_write_injected", TAP_ATTRIBUTE)
_ABSENT = object()


class CapturedEntries(list[AuditEntry]):
    """The entries a service accepted inside a :func:`capture` block, oldest first.

    A list of :class:`AuditEntry` — after the context, the policy and redaction, as stored — with
    helpers that match entries on their fields: a field given matches when equal (operation and
    outcome also by their text); ``details=`` matches when the entry's details hold those keys
    with those values (others may be there too).
    """

    def find(self, **fields: Any) -> list[AuditEntry]:
        """The entries whose fields match ``fields`` (see the class), oldest first."""
        _check_fields(fields)
        return [entry for entry in self if _matches(entry, fields)]

    def assert_recorded(self, *, times: int | None = None, **fields: Any) -> AuditEntry:
        """The first entry matching ``fields``; AssertionError listing what was recorded if none
        does (or, with ``times``, if not exactly that many do)."""
        __tracebackhide__ = True  # pytest shows the test's line, not this one
        if times is not None and (type(times) is not int or times < 1):
            # 0 would have nothing to return: that is assert_not_recorded()'s question.
            raise (ValueError if type(times) is int else TypeError)(
                f"assert_recorded() times must be an int of 1 or more (got {times!r}); "
                "for none, use assert_not_recorded()"
            )
        found = self.find(**fields)
        if not found or (times is not None and len(found) != times):
            expected = "an audit entry" if times is None else f"{times} audit entries"
            raise AssertionError(
                f"expected {expected} with {_describe_fields(fields)}, found {len(found)}; "
                f"{self._listing()}"
            )
        return found[0]

    def assert_not_recorded(self, **fields: Any) -> None:
        """AssertionError listing the matching entries if any entry matches ``fields``."""
        __tracebackhide__ = True
        found = self.find(**fields)
        if found:
            lines = "".join(f"\n  {_describe_entry(entry)}" for entry in found)
            raise AssertionError(
                f"expected no audit entry with {_describe_fields(fields)}, found {len(found)}:"
                f"{lines}"
            )

    def _listing(self) -> str:
        if not self:
            return "nothing was recorded"
        lines = "".join(f"\n  {_describe_entry(entry)}" for entry in self)
        return f"recorded ({len(self)}):{lines}"


def _check_fields(fields: dict[str, Any]) -> None:
    unknown = sorted(set(fields) - set(_FIELDS))
    if unknown:
        raise TypeError(
            f"no AuditEntry field named {', '.join(unknown)}; the fields are {', '.join(_FIELDS)}"
        )


def _matches(entry: AuditEntry, fields: dict[str, Any]) -> bool:
    for name, wanted in fields.items():
        value = getattr(entry, name)
        if name == "details" and isinstance(wanted, dict):
            if any(key not in value or value[key] != item for key, item in wanted.items()):
                return False
        elif value != wanted:
            return False
    return True


def _describe_fields(fields: dict[str, Any]) -> str:
    return ", ".join(f"{name}={value!r}" for name, value in fields.items()) or "any fields"


def _describe_entry(entry: AuditEntry) -> str:
    # What a reader compares with the assertion: the fields an application sets, not the id.
    parts = [f"action={entry.action!r}"]
    for name in ("actor", "resource_type", "resource_id", "correlation_id"):
        value = getattr(entry, name)
        if value is not None:
            parts.append(f"{name}={value!r}")
    parts.append(f"operation={entry.operation.value!r}")
    parts.append(f"outcome={entry.outcome.value!r}")
    if entry.critical:
        parts.append("critical=True")
    if entry.details:
        parts.append(f"details={entry.details!r}")
    return " ".join(parts)


def capture(service: AuditService) -> AbstractContextManager[CapturedEntries]:
    """Collect every entry ``service`` accepts inside the block, from any thread, in any write
    mode (the queue, sync mode, a ``connection=``); they are still stored as usual.

    Entries left out (policy, scope, ``disabled()``, a full queue with ``on_full='drop'``) and
    entries whose ``record()`` raised are not in it. Captures of one service are independent:
    nested or overlapping in any order, each sees what was accepted while it was open.
    """
    if not isinstance(service, AuditService):
        got = "None" if service is None else type(service).__name__
        raise TypeError(f"capture() takes an AuditService, got {got}")
    return _capturing(service)


@contextmanager
def _capturing(service: AuditService) -> Iterator[CapturedEntries]:
    captured = CapturedEntries()

    def keep(rows: Sequence[Row]) -> None:
        captured.extend(row_entry(row) for row in rows)

    _Taps.open(service, keep)
    try:
        yield captured
    finally:
        _Taps.close(service, keep)


class _Taps:
    """The open captures of one service, and the wrapped write functions that feed them."""

    _lock: ClassVar[threading.Lock] = threading.Lock()  # opening and closing, from any thread
    _of: ClassVar[dict[AuditService, _Taps]] = {}  # the services with an open capture

    @classmethod
    def open(cls, service: AuditService, keep: Keep) -> None:
        with cls._lock:
            taps = cls._of.get(service)
            if taps is None:
                taps = cls._of[service] = cls(service)
            # A new tuple, not an append: a write in another thread iterates the old one safely.
            taps.keeps = (*taps.keeps, keep)

    @classmethod
    def close(cls, service: AuditService, keep: Keep) -> None:
        with cls._lock:
            taps = cls._of[service]
            taps.keeps = tuple(k for k in taps.keeps if k is not keep)
            if not taps.keeps:
                del cls._of[service]
                taps.restore(service)

    def __init__(self, service: AuditService) -> None:
        # The wrappers refer to this object, and it not to the service: no reference cycle
        # through the service while a capture is open (see AuditService's _accept_row).
        self.keeps: tuple[Keep, ...] = ()
        self.saved = {name: vars(service).get(name, _ABSENT) for name in _WRAPPED}
        accept_before = service._accept_row
        injected_before = service._write_injected

        def accept(owner: AuditService, row: Row) -> str | None:
            event_id = accept_before(owner, row)
            if event_id is not None:  # None: dropped on a full queue
                self.deliver((row,))
            return event_id

        def write_injected(write: Callable[[Row], None], row: Row) -> str:
            event_id = injected_before(write, row)
            self.deliver((row,))
            return event_id

        # A service built on a connection writes every entry through _write_injected: wrapping
        # its _accept_row too would see each entry twice.
        if service._connection is None:
            service._accept_row = accept
        setattr(service, "_write_injected", write_injected)  # noqa: B010 - a method, on the instance
        setattr(service, TAP_ATTRIBUTE, self.deliver)

    def deliver(self, rows: Sequence[Row]) -> None:
        for keep in self.keeps:
            keep(rows)

    def restore(self, service: AuditService) -> None:
        for name, value in self.saved.items():
            if value is _ABSENT:
                vars(service).pop(name, None)
            else:
                setattr(service, name, value)
