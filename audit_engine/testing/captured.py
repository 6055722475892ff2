"""``capture(service)``: see, in a test, every entry a service accepts, as it would be stored.

A capture is a tap, not a replacement: the entries are still written as usual. It wraps the
service's own write functions on the instance (the one the constructor picked for ``record()``,
and the one for a ``connection=`` write), so a ``record()`` outside any capture runs exactly the
code it always does; ``record_many()`` finds the capture through one attribute
(:data:`audit_engine.pipeline.bulk.TAP_ATTRIBUTE`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from audit_engine.models import AuditEntry
from audit_engine.pipeline.bulk import TAP_ATTRIBUTE
from audit_engine.rows import Row, row_entry

if TYPE_CHECKING:
    from audit_engine import AuditService

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


@contextmanager
def capture(service: AuditService) -> Iterator[CapturedEntries]:
    """Collect every entry ``service`` accepts inside the block, from any thread, in any write
    mode (the queue, sync mode, a ``connection=``); they are still stored as usual.

    Entries left out (policy, scope, ``disabled()``, a full queue with ``on_full='drop'``) and
    entries whose ``record()`` raised are not in it. Captures may nest (a ``with`` inside a
    ``with``): each sees what was accepted while it was open.
    """
    captured = CapturedEntries()

    def keep(rows: Sequence[Row]) -> None:
        captured.extend(row_entry(row) for row in rows)

    restore = _install(service, keep)
    try:
        yield captured
    finally:
        restore()


def _install(service: AuditService, keep: Callable[[Sequence[Row]], None]) -> Callable[[], None]:
    """Wrap the service's write functions so that ``keep`` sees what they accepted."""
    saved = {name: vars(service).get(name, _ABSENT) for name in _WRAPPED}
    accept_before = service._accept_row
    injected_before = service._write_injected
    tap_before: Callable[[Sequence[Row]], None] | None = getattr(service, TAP_ATTRIBUTE, None)

    def accept(owner: AuditService, row: Row) -> str | None:
        event_id = accept_before(owner, row)
        if event_id is not None:  # None: dropped on a full queue
            keep((row,))
        return event_id

    def write_injected(write: Callable[[Row], None], row: Row) -> str:
        event_id = injected_before(write, row)
        keep((row,))
        return event_id

    def tap(rows: Sequence[Row]) -> None:
        keep(rows)
        if tap_before is not None:
            tap_before(rows)

    # A service built on a connection writes every entry through _write_injected: wrapping its
    # _accept_row too would see each entry twice.
    if service._connection is None:
        service._accept_row = accept
    setattr(service, "_write_injected", write_injected)  # noqa: B010 - a method, on the instance
    setattr(service, TAP_ATTRIBUTE, tap)

    def restore() -> None:
        for name, value in saved.items():
            if value is _ABSENT:
                vars(service).pop(name, None)
            else:
                setattr(service, name, value)

    return restore
