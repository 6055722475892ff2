"""Record the changes an application makes through the SQLAlchemy ORM (the ``sqlalchemy`` extra).

``track(service, Base)`` listens to the ORM and records one entry per object created, updated
or deleted (a field diff ``{"field": [old, new]}``) and one per bulk ``update()``/``delete()``/
``insert()`` statement on a tracked class (its SQL and row count). In ``mode="atomic"`` each
entry is written through the session's connection inside its transaction, at flush; in
``mode="after_commit"`` entries wait per transaction and go to the service's queue once the
commit succeeded. Entries go through ``service.record()``: the context, ``disabled()``, the
policy and redaction apply (in ``after_commit`` mode the context around the flush). See
docs/integrations.md.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, Self

from sqlalchemy import event, inspect
from sqlalchemy.orm import (
    InstanceState,
    Mapper,
    ORMExecuteState,
    Session,
    SessionTransaction,
    UOWTransaction,
)

from audit_engine import AuditService
from audit_engine.integrations import sqlalchemy_changes as changes
from audit_engine.integrations import sqlalchemy_options as options
from audit_engine.integrations.sqlalchemy_options import MODES

__all__ = ["MODES", "Tracking", "track"]

Mode = Literal["atomic", "after_commit"]

logger = logging.getLogger("audit_engine.integrations.sqlalchemy")

_BULK = {"update": "bulk_update", "delete": "bulk_delete", "insert": "bulk_create"}
_OPERATION = {"update": "update", "delete": "delete", "insert": "create"}


class _Pending:
    """The entries of one database transaction (or savepoint) that wait for its end."""

    __slots__ = ("committed", "entries")

    def __init__(self) -> None:
        self.entries: list[tuple[contextvars.Context, dict[str, Any]]] = []
        self.committed = False


class Tracking:
    """The listeners :func:`track` installed. ``stop()`` removes every one (they are global on
    the classes and the Session class); also a context manager that stops on exit."""

    def __init__(
        self,
        service: AuditService,
        targets: tuple[type, ...],
        *,
        mode: Mode,
        record_rollbacks: bool,
        session_target: Any,
        wants: Callable[[Session], bool],
        exclude_everywhere: frozenset[str],
        exclude_by_class: dict[type, frozenset[str]],
    ) -> None:
        self.service = service
        self.mode: Mode = mode
        self.record_rollbacks = record_rollbacks
        self._targets = targets
        self._wants = wants
        self._exclude_everywhere = exclude_everywhere
        self._exclude_by_class = exclude_by_class
        self._keys: dict[Mapper[Any], tuple[str, ...] | None] = {}  # per mapper, None: untracked
        self._info_key = f"audit_engine.track.{id(self):x}"
        self._lock = threading.Lock()  # guards _listeners (stop() from another thread)
        self._listeners: list[tuple[Any, str, Callable[..., Any]]] = []
        for target in targets:
            self._listen(target, "after_insert", self._after_insert, propagate=True)
            self._listen(target, "after_update", self._after_update, propagate=True)
            self._listen(target, "after_delete", self._after_delete, propagate=True)
        self._listen(session_target, "before_flush", self._before_flush)
        self._listen(session_target, "after_flush", self._after_flush)
        self._listen(session_target, "do_orm_execute", self._on_orm_execute)
        if mode == "after_commit" or record_rollbacks:
            self._listen(session_target, "after_commit", self._after_commit)
            self._listen(session_target, "after_transaction_end", self._after_transaction_end)

    def _listen(self, target: Any, name: str, fn: Callable[..., Any], **kw: Any) -> None:
        event.listen(target, name, fn, **kw)
        self._listeners.append((target, name, fn))

    @property
    def active(self) -> bool:
        """Whether the listeners are still installed."""
        return bool(self._listeners)

    def stop(self) -> None:
        """Remove every listener; idempotent. Entries already waiting for a commit are handed on
        (or discarded) when their transaction ends only while tracking is active."""
        with self._lock:
            listeners, self._listeners = self._listeners, []
        for target, name, fn in listeners:
            event.remove(target, name, fn)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- which fields of which classes -----------------------------------------------------------

    def _tracked_keys(self, mapper: Mapper[Any]) -> tuple[str, ...] | None:
        """The column attributes diffed for ``mapper``'s class; None if it is not tracked."""
        try:
            return self._keys[mapper]
        except KeyError:
            pass
        cls = mapper.class_
        keys: tuple[str, ...] | None = None
        if any(issubclass(cls, target) for target in self._targets):
            excluded = set(self._exclude_everywhere)
            for owner, names in self._exclude_by_class.items():
                if issubclass(cls, owner):
                    excluded |= names
            keys = tuple(p.key for p in mapper.column_attrs if p.key not in excluded)
        self._keys[mapper] = keys  # the same answer every time: a race only repeats the work
        return keys

    # -- objects: one entry per insert, update, delete -------------------------------------------

    def _before_flush(self, session: Session, flush: UOWTransaction, instances: Any) -> None:
        """Read the old values the diffs will need and the session does not hold, while the
        rows still have them."""
        if not self._wants(session):
            return
        fetched: dict[InstanceState[Any], dict[str, Any]] = {}
        for deleting, objects in ((False, session.dirty), (True, session.deleted)):
            for obj in objects:
                state: InstanceState[Any] = inspect(obj)
                keys = self._tracked_keys(state.mapper)
                if keys is None or state.key is None:
                    continue
                unknown = changes.unknown_fields(state, keys, deleting)
                if unknown:
                    fetched[state] = changes.unknown_old_values(session, state, unknown)
        session.info[self._info_key] = fetched

    def _after_flush(self, session: Session, flush: UOWTransaction) -> None:
        session.info.pop(self._info_key, None)

    def _after_insert(self, mapper: Mapper[Any], connection: Any, target: Any) -> None:
        self._object_changed(mapper, connection, target, "create")

    def _after_update(self, mapper: Mapper[Any], connection: Any, target: Any) -> None:
        self._object_changed(mapper, connection, target, "update")

    def _after_delete(self, mapper: Mapper[Any], connection: Any, target: Any) -> None:
        self._object_changed(mapper, connection, target, "delete")

    def _object_changed(
        self, mapper: Mapper[Any], connection: Any, target: Any, operation: str
    ) -> None:
        state: InstanceState[Any] = inspect(target)
        session = state.session
        keys = self._tracked_keys(mapper)
        if session is None or keys is None or not self._wants(session):
            return
        old = session.info.get(self._info_key, {}).get(state, {})
        if operation == "create":
            diff = changes.created(state, keys)
        elif operation == "update":
            diff = changes.updated(state, keys, old)
            if not diff:
                return  # marked dirty, but no tracked field changed
        else:
            diff = changes.deleted(state, keys, old)
        table = changes.table_name(mapper)
        fields = {
            "action": f"{table}.{operation}",
            "operation": operation,
            "resource_type": table,
            "resource_id": changes.resource_id(state),
            "details": diff,
        }
        self._capture(session, connection, fields)

    # -- bulk statements: one entry each -------------------------------------------------------

    def _on_orm_execute(self, state: ORMExecuteState) -> Any:
        kind = "update" if state.is_update else "delete" if state.is_delete else None
        if kind is None and state.is_insert:
            kind = "insert"
        mapper = state.bind_mapper
        if kind is None or mapper is None or not self._wants(state.session):
            return None
        if self._tracked_keys(mapper) is None:
            return None
        result = state.invoke_statement()
        params = state.parameters
        # executemany (a list): one parameter set per row; a bulk insert's result has no rowcount
        rows = len(params) if isinstance(params, list) else getattr(result, "rowcount", -1)
        connection = state.session.connection(bind_arguments={"mapper": mapper})
        table = changes.table_name(mapper)
        fields = {
            "action": f"{table}.{_BULK[kind]}",
            "operation": _OPERATION[kind],
            "resource_type": table,
            "details": {
                # Placeholders only: the values may be anything, secrets included.
                "statement": changes.statement_text(state, mapper, connection.dialect),
                "rows": rows,
            },
        }
        self._capture(state.session, connection, fields)
        return result

    # -- where an entry goes ----------------------------------------------------------------------

    def _capture(self, session: Session, connection: Any, fields: dict[str, Any]) -> None:
        if self.mode == "atomic":
            self.service.record(connection=connection, **fields)
            if not self.record_rollbacks:
                return
        # Kept with the context of now (the flush), for the commit or the rollback to use.
        pending = self._pending(session, _boundary(session))
        pending.entries.append((contextvars.copy_context(), fields))

    def _pending(self, session: Session, transaction: SessionTransaction) -> _Pending:
        by_transaction: dict[SessionTransaction, _Pending] = session.info.setdefault(
            self._info_key + ".pending", {}
        )
        pending = by_transaction.get(transaction)
        if pending is None:
            pending = by_transaction[transaction] = _Pending()
        return pending

    def _after_commit(self, session: Session) -> None:
        if not self._wants(session):
            return
        # The transaction that committed: a savepoint's release fires this too.
        pending = session.info.get(self._info_key + ".pending", {}).get(_boundary(session))
        if pending is not None:
            pending.committed = True

    def _after_transaction_end(self, session: Session, transaction: SessionTransaction) -> None:
        by_transaction = session.info.get(self._info_key + ".pending")
        if not by_transaction:
            return
        pending = by_transaction.pop(transaction, None)
        if pending is None or not pending.entries:
            return
        if pending.committed and transaction.nested:
            # A released savepoint: its entries now wait for the transaction around it.
            parent = _boundary_above(transaction)
            if parent is not None:
                self._pending(session, parent).entries.extend(pending.entries)
            return
        if pending.committed:
            if self.mode == "after_commit":
                self._hand_on(pending.entries, {})
        elif self.record_rollbacks:
            self._hand_on(pending.entries, {"outcome": "failure"})

    def _hand_on(
        self, entries: list[tuple[contextvars.Context, dict[str, Any]]], extra: dict[str, Any]
    ) -> None:
        """Record each entry in the context of its flush; the first error is raised once all
        were tried (one bad entry does not lose the others)."""
        first: BaseException | None = None
        for context, fields in entries:
            try:
                context.run(self.service.record, **fields, **extra)
            except Exception as exc:
                if first is None:
                    first = exc
                else:
                    logger.error("could not record %s: %s", fields["action"], exc)
        if first is not None:
            raise first


def _boundary(session: Session) -> SessionTransaction:
    """The innermost transaction of ``session`` that the database sees: a savepoint, or the
    outermost transaction."""
    transaction = session.get_nested_transaction() or session.get_transaction()
    assert transaction is not None  # called inside a flush, a statement or a commit
    return transaction


def _boundary_above(transaction: SessionTransaction) -> SessionTransaction | None:
    parent = transaction.parent
    while parent is not None and not parent.nested and parent.parent is not None:
        parent = parent.parent
    return parent


def track(
    service: AuditService,
    *targets: type,
    mode: Mode = "atomic",
    record_rollbacks: bool = False,
    session: Any = None,
    exclude_fields: Iterable[str] | Mapping[type, Iterable[str]] | None = None,
) -> Tracking:
    """Record the ORM changes to ``targets`` (a declarative Base: every class mapped on it, also
    later; or mapped classes and their subclasses) through ``service``.

    ``mode``: ``"atomic"`` (written through the session's connection in its transaction, at
    flush: committed or rolled back with the change) or ``"after_commit"`` (queued once the
    commit succeeded; discarded on rollback). ``record_rollbacks=True`` records a change that
    was rolled back, after the rollback, with ``outcome="failure"``. ``session``: which sessions
    (a Session, a sessionmaker or a Session subclass; default every Session).
    ``exclude_fields``: field names never diffed, everywhere (a set of names) or per class
    (a mapping from class to names). Returns the :class:`Tracking`: call ``stop()``.
    """
    if not isinstance(service, AuditService):
        raise TypeError(f"track() service must be an AuditService, got {type(service).__name__}")
    if not targets:
        raise TypeError("track() needs a declarative Base or at least one mapped class")
    for target in targets:
        options.check_target(target)
    if mode not in MODES:
        raise ValueError(f"track() mode must be 'atomic' or 'after_commit', got {mode!r}")
    if not isinstance(record_rollbacks, bool):
        raise TypeError(
            f"track() record_rollbacks must be True or False, got {type(record_rollbacks).__name__}"
        )
    session_target, wants = options.sessions(session)
    everywhere, by_class = options.exclusions(exclude_fields)
    return Tracking(
        service,
        targets,
        mode=mode,
        record_rollbacks=record_rollbacks,
        session_target=session_target,
        wants=wants,
        exclude_everywhere=everywhere,
        exclude_by_class=by_class,
    )
