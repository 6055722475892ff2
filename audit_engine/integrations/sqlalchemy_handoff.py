"""Where a tracked ORM change's entry goes, and when: :func:`track`'s transaction bookkeeping.

An entry is built when its change is flushed — in the context around that flush, validated
there, so a bad entry fails the flush — and then waits with its transaction (:class:`Pending`).
At the end of the transaction it is handed on in **one** ``record_many()`` call:

- ``atomic``: through the session's connection at ``before_commit``, so it commits with the
  change, and the chain's lock (PostgreSQL) is taken only at the end of the transaction, after
  the application's own row locks (:func:`write_atomic`);
- ``after_commit`` and ``record_rollbacks``: to the service, once the transaction ended
  (:func:`hand_on`). If that hand-off fails after a commit (queue full, service closed), the
  entries go to the service's dead-letter file with an ERROR naming it
  (``audit-engine replay-deadletter`` stores them): the commit succeeded, so nothing is raised.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy.orm import Mapper, Session, SessionTransaction

from audit_engine import AuditEntry, AuditService
from audit_engine.models import utcnow
from audit_engine.pipeline import intake
from audit_engine.pipeline.policy import Decision
from audit_engine.rows import Row, entry_row
from audit_engine.storage.deadletter import LOG_MESSAGE, DeadLetterFile, line_text

logger = logging.getLogger("audit_engine.integrations.sqlalchemy")


class Item(NamedTuple):
    """One captured change: the class it is about (its database), its fields, its entry."""

    mapper: Mapper[Any]
    fields: dict[str, Any]  # record()'s keywords, the flush's context applied
    entry: AuditEntry


class Pending:
    """The entries of one database transaction (or savepoint) that wait for its end."""

    __slots__ = ("committed", "done", "entries", "written")

    def __init__(self) -> None:
        self.entries: list[Item] = []
        self.committed = False
        # atomic: the entries were written at before_commit; one captured later (a flush that
        # the commit itself runs after another listener changed objects) is written at once.
        self.written = False
        # atomic: the entries already written in this transaction (their indexes): a commit()
        # that raised after our write (a later before_commit hook, a second bind's lock wait)
        # and is retried writes only the others (each event_id is UNIQUE in the trail). The
        # transaction's end drops this Pending, so a rollback forgets them with the rows.
        self.done: set[int] = set()

    def unwritten(self) -> list[tuple[int, Item]]:
        return [(i, item) for i, item in enumerate(self.entries) if i not in self.done]


def boundary(session: Session) -> SessionTransaction:
    """The innermost transaction of ``session`` that the database sees: a savepoint, or the
    outermost transaction."""
    transaction = session.get_nested_transaction() or session.get_transaction()
    assert transaction is not None  # called inside a flush, a statement or a commit
    return transaction


def boundary_above(transaction: SessionTransaction) -> SessionTransaction | None:
    parent = transaction.parent
    while parent is not None and not parent.nested and parent.parent is not None:
        parent = parent.parent
    return parent


def build(service: AuditService, mapper: Mapper[Any], fields: dict[str, Any]) -> Item | None:
    """The entry of a change, in the context around the flush; None when nothing is recorded.

    The context is applied here, not at the commit: the commit may run elsewhere (outside the
    request's ``context()``). ``disabled()`` is honoured here too (the skip is counted by
    ``record()``, which records nothing in that block). Validation runs now, so an entry that
    cannot be recorded (``max_details_bytes``) fails the flush, in either mode.
    """
    if not service.settings.enabled:
        return None
    # The service's own frame (context/disabled) read here: no public accessor returns it, and
    # the entry must carry the flush's context to a commit that may run outside it.
    frame = service._frame()
    if frame is not None:
        if frame.disabled:
            service.record(**fields)  # counted as skipped by disabled(); writes nothing
            return None
        if frame.bound:
            fields = frame.apply(fields)
    entry = AuditEntry.model_validate(
        fields, context={"max_details_bytes": service.settings.max_details_bytes}
    )
    return Item(mapper, fields, entry)


def write_atomic(
    service: AuditService,
    session: Session,
    pending: Pending,
    connection_of: Callable[[Mapper[Any]], Any] | None = None,
) -> None:
    """Write ``pending``'s entries not written yet through ``session``'s connections (or
    ``connection_of(mapper)``'s), uncommitted: one ``record_many()`` per database the classes
    are bound to (usually one), each marked done once written. Raises what it raises."""
    by_bind: dict[int, list[tuple[int, Item]]] = {}
    for index, item in pending.unwritten():
        by_bind.setdefault(id(session.get_bind(mapper=item.mapper)), []).append((index, item))
    for group in by_bind.values():
        mapper = group[0][1].mapper
        if connection_of is None:
            connection = session.connection(bind_arguments={"mapper": mapper})
        else:
            connection = connection_of(mapper)
        # A fresh, empty context: each entry already carries its flush's context, and the
        # one around the commit (a disabled() or another actor) must not be applied on top.
        contextvars.Context().run(
            service.record_many, [item.entry for _, item in group], connection=connection
        )
        pending.done.update(index for index, _ in group)


def hand_on(service: AuditService, items: Iterable[Item], *, failure: bool) -> None:
    """Hand ``items`` to the service in one ``record_many()``: after a commit, or (``failure``)
    as the attempts of a rolled-back transaction. Never raises: a hand-off the service refuses
    sets the entries aside (:func:`set_aside`)."""
    entries = [
        AuditEntry.model_validate(
            {**item.fields, "outcome": "failure"},
            context={"max_details_bytes": service.settings.max_details_bytes},
        )
        if failure
        else item.entry
        for item in items
    ]
    if not entries:
        return
    try:
        contextvars.Context().run(service.record_many, entries)
    except Exception as exc:
        # The transaction is over (committed, or rolled back): raising out of commit() would
        # tell the application its save failed when it did not.
        set_aside(service, entries, f"{type(exc).__name__}: {exc}")


def set_aside(service: AuditService, entries: Sequence[AuditEntry], error: str) -> Path | None:
    """Append ``entries`` (policy applied, redacted) to the service's dead-letter file and log
    an ERROR naming it; if the file cannot be written, log each entry at CRITICAL in the line
    form ``audit-engine replay-deadletter --from LOG`` reads. Returns the file written."""
    rows = _stored_rows(service, entries)
    if not rows:
        return None
    reason = f"handed on after the transaction ended, refused: {error}"
    file = DeadLetterFile(service.settings.deadletter_file)
    try:
        where = file.append(rows, reason)
    except OSError as exc:
        failed_at = utcnow().isoformat()
        logger.critical(
            "%d audit entries of a finished transaction could not be handed to the audit "
            "service (%s) nor written to %s (%s): logged below; `audit-engine "
            "replay-deadletter --from LOG` stores them",
            len(rows),
            error,
            file.path,
            exc,
        )
        for row in rows:
            logger.critical(LOG_MESSAGE + "%s", line_text(row, reason, failed_at, compact=True))
        return None
    logger.error(
        "%d audit entries of a finished transaction could not be handed to the audit service "
        "(%s): they are in %s; `audit-engine replay-deadletter` stores them",
        len(rows),
        error,
        where,
    )
    return where


def _stored_rows(service: AuditService, entries: Sequence[AuditEntry]) -> list[Row]:
    """The rows ``record_many()`` would have queued: the policy's choice, redacted details."""
    policy = service.policy
    rows = []
    for entry in entries:
        row = entry_row(entry)
        if not (policy.keeps_everything or row.critical):
            decision = policy.decide_values(
                row.operation, row.outcome, row.action, row.resource_type, row.event_id, False
            )
            if decision is not Decision.KEEP:
                continue
        redacted = policy.redact_details(entry.details)
        if redacted is not entry.details:
            row = intake.with_details(row, redacted)
        rows.append(row)
    return rows
