"""``record_many()``: many entries validated first, then accepted all or none in one hand-off.

Each entry goes through what ``record()`` does to one — validation, the context, ``disabled()``,
the policy, redaction, a scope's de-duplication — and only when every entry passed is anything
handed on, in one step of the service's write mode: one ``put_many`` on the queue (async), one
transaction (sync mode, ``on_full='sync'``), or the caller's transaction (``connection=``).
All or none is the hand-off: once queued, the writer commits or sets aside each entry on its own,
and an error about a critical one says so (:func:`_not_taken_back`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from audit_engine.errors import AuditServiceClosed, AuditWriteError, InvalidEntryError
from audit_engine.models import AuditEntry
from audit_engine.pipeline import intake
from audit_engine.pipeline.context import Frame, entry_fields
from audit_engine.pipeline.enqueue import enqueue_many
from audit_engine.pipeline.policy import Decision
from audit_engine.rows import Row
from audit_engine.storage import backends
from audit_engine.storage.dialect import DATABASE_ERRORS

if TYPE_CHECKING:
    from audit_engine.pipeline.service import AuditService

# The instance attribute through which audit_engine.testing.capture() sees what record_many()
# accepted (record() it sees by wrapping the service's write functions): a callable taking the
# rows, absent when no capture is open, so record_many() pays one getattr for it.
TAP_ATTRIBUTE = "_audit_capture_tap"

Tap = Callable[[Sequence[Row]], None]


class _Batch:
    """What validation made of the entries: the rows to hand on and what to count."""

    __slots__ = ("deduplicated", "kept", "keys", "not_kept", "skipped_disabled", "slots")

    def __init__(self) -> None:
        self.kept: list[Row] = []
        self.slots: list[int] = []  # the input index of each kept row
        self.keys: list[Hashable] = []  # scope keys to mark seen once accepted
        self.not_kept: list[Decision] = []
        self.deduplicated = 0
        self.skipped_disabled = 0


def record_many(
    service: AuditService, entries: Iterable[AuditEntry | dict[str, Any]], connection: Any
) -> list[str | None]:
    """See :meth:`AuditService.record_many`."""
    items = _as_list(entries)
    if not items:
        return []
    if service._closed:
        raise AuditServiceClosed("the audit service is closed")
    write_injected = (
        None
        if connection is None
        else backends.injected_batch_writer(
            connection,
            "record_many() connection",
            service._linker,
            service.settings.busy_timeout,
        )[0]
    )
    if not service._enabled:
        return [None] * len(items)
    frame = service._frame()
    batch = _validate(service, items, frame)
    _count(service, batch)
    ids: list[str | None] = [None] * len(items)
    if batch.kept and _hand_off(service, batch, write_injected):
        for slot, row in zip(batch.slots, batch.kept, strict=True):
            ids[slot] = row.event_id
        if frame is not None and frame.scope is not None:
            # Marked only once accepted, as record() does: a failed call can be tried again.
            frame.scope.seen.update(batch.keys)
        tap: Tap | None = getattr(service, TAP_ATTRIBUTE, None)
        if tap is not None:
            tap(batch.kept)
    return ids


def _as_list(entries: object) -> list[Any]:
    # An entry itself is iterable (a model yields its fields, a dict its keys): a mistake that
    # would otherwise fail with a puzzling message about entries[0].
    if isinstance(entries, AuditEntry | Mapping | str | bytes):
        raise TypeError(
            f"record_many() takes an iterable of entries (AuditEntry objects or dicts of "
            f"record()'s keywords), got a single {type(entries).__name__}: wrap it in a list"
        )
    if not isinstance(entries, Iterable):
        raise TypeError(f"record_many() takes an iterable of entries, got {type(entries).__name__}")
    return list(entries)


def _validate(service: AuditService, items: list[Any], frame: Frame | None) -> _Batch:
    """Every entry checked and decided; raises naming the first bad one's index, recording
    nothing."""
    batch = _Batch()
    max_details_bytes = service._max_details_bytes
    policy = service.policy
    scope = None if frame is None else frame.scope
    disabled = frame is not None and frame.disabled
    keys_here: set[Hashable] = set()
    ids_seen: dict[str, int] = {}
    for index, item in enumerate(items):
        try:
            row, details = _row(item, frame, max_details_bytes)
            first = ids_seen.setdefault(row.event_id, index)
            if first != index:
                raise InvalidEntryError(
                    f"event_id {row.event_id!r} is also the event_id of entries[{first}]"
                )
            if disabled and not row.critical:
                batch.skipped_disabled += 1
                continue
            if not (policy.keeps_everything or row.critical):
                decision = policy.decide_values(
                    row.operation, row.outcome, row.action, row.resource_type, row.event_id, False
                )
                if decision is not Decision.KEEP:
                    batch.not_kept.append(decision)
                    continue
            redacted = policy.redact_details(details)
            if redacted is not details:
                row = intake.with_details(row, redacted)
        except TypeError as exc:
            raise TypeError(f"entries[{index}]: {exc}") from exc
        except ValueError as exc:
            raise InvalidEntryError(f"entries[{index}]: {exc}") from exc
        if scope is not None and not row.critical:  # critical entries are never de-duplicated
            key = scope.row_key(row)
            if key in scope.seen or key in keys_here:
                batch.deduplicated += 1
                continue
            keys_here.add(key)
            batch.keys.append(key)
        batch.kept.append(row)
        batch.slots.append(index)
    return batch


def _row(item: object, frame: Frame | None, max_details_bytes: int) -> tuple[Row, dict[str, Any]]:
    """One entry as ``record()`` builds it: the row and its details dict (for redaction)."""
    if isinstance(item, AuditEntry):
        if frame is None or not frame.bound:
            return intake.given_entry_row(item, {}, max_details_bytes)
        fields = entry_fields(item)
    elif isinstance(item, dict):
        fields = item
    else:
        raise TypeError(
            f"must be an AuditEntry or a dict of record()'s keywords, got {type(item).__name__}"
        )
    if frame is not None and frame.bound:
        fields = frame.apply(fields)
    return intake.validated_row(fields, max_details_bytes)


def _count(service: AuditService, batch: _Batch) -> None:
    """Count what validation left out, as ``record()`` would have one by one."""
    counters = service._counters
    for decision in batch.not_kept:
        counters.count_not_kept(decision)
    for _ in range(batch.deduplicated):
        counters.count_deduplicated()
    for _ in range(batch.skipped_disabled):
        counters.count_skipped_disabled()


def _hand_off(
    service: AuditService, batch: _Batch, write_injected: backends.InjectedBatchWriter | None
) -> bool:
    """The one hand-off of the service's write mode; False if the rows were dropped."""
    if write_injected is not None:
        _write_injected(service, write_injected, batch.kept)
    elif service._connection is not None:
        # The service's own connection, as its record() writes through it (checked when the
        # service was built), but all the rows in one step.
        own = backends.injected_batch_writer(
            service._connection,
            "AuditService() connection",
            service._linker,
            service.settings.busy_timeout,
        )[0]
        _write_injected(service, own, batch.kept)
    elif service._writer is not None:
        here: list[Sequence[Row]] = []  # set if on_full='sync' wrote them in this thread

        def write_here(rows: Sequence[Row]) -> None:
            here.append(rows)
            _write_sync(service, rows)

        try:
            return enqueue_many(
                service._writer,
                batch.kept,
                service.settings,
                write_sync=write_here,
                drop=service._counters.count_drop,
            )
        except AuditWriteError as exc:
            if here:
                raise  # one transaction here: _write_sync said none was recorded
            raise _not_taken_back(exc, batch) from exc
    else:
        _write_sync(service, batch.kept)
    return True


def _write_sync(service: AuditService, rows: Sequence[Row]) -> None:
    """Sync mode and ``on_full='sync'``: one transaction in the caller's thread."""
    try:
        service._sync.write_many(rows)
    except AuditWriteError as exc:
        raise AuditWriteError(
            f"{exc}; none of the {len(rows)} entries of this record_many() call was recorded "
            "(one transaction)"
        ) from exc


def _not_taken_back(exc: AuditWriteError, batch: _Batch) -> AuditWriteError:
    """A critical entry of a queued call was not (or not yet) committed. The queue took the
    call's entries all together, but the writer commits or sets aside each one on its own, as
    it does entries of record(): say which entry failed and that the others may be stored."""
    message = str(exc)
    # enqueue_many names the critical entries concerned by event_id; words, not substrings,
    # since an id may be part of another.
    words = set(re.split(r"[\s(),]+", message))
    failed = [
        f"entries[{slot}]"
        for slot, row in zip(batch.slots, batch.kept, strict=True)
        if row.critical and row.event_id in words
    ]
    return AuditWriteError(
        f"{', '.join(failed) + ': ' if failed else ''}{message}; record_many() queued the "
        f"call's {len(batch.kept)} entries together and the queue does not take them back: the "
        "writer commits or sets aside each one on its own, so the call's other entries may be "
        "in the trail"
    )


def _write_injected(
    service: AuditService, write: backends.InjectedBatchWriter, rows: list[Row]
) -> None:
    """Insert the rows through the caller's connection, in the caller's transaction, all in one
    step (one lock wait, one tail read, one insert): all of them or, on an error, none."""
    try:
        write(rows)
    except DATABASE_ERRORS as exc:
        which = (
            f"audit entry {rows[0].event_id}"
            if len(rows) == 1
            else f"the {len(rows)} audit entries {rows[0].event_id} to {rows[-1].event_id}"
        )
        raise AuditWriteError(
            f"could not write {which} of this record_many() call: {exc}; none of them was "
            "written (only the call's own writes were rolled back: the rest of your "
            "transaction is as it was)"
        ) from exc
    service._counters.count_injected(len(rows))
