"""Record the changes an application makes through the SQLAlchemy ORM (the ``sqlalchemy`` extra).

``track(service, Base)`` listens to the ORM and records one entry per object created, updated
or deleted (a field diff ``{"field": [old, new]}``), one per bulk ``update()``/``delete()``/
``insert()`` statement on a tracked class (its SQL and row count) and one per legacy bulk call
(``bulk_insert_mappings``…). Entries are built at flush, in the context around it, and wait with
their transaction: in ``mode="atomic"`` they are written through the session's connection when
it commits (``before_commit``, inside the transaction); in ``mode="after_commit"`` they go to the
service's queue once the commit succeeded. See :mod:`.sqlalchemy_handoff` and
docs/integrations.md.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, Self

from sqlalchemy import event, inspect
from sqlalchemy.orm import InstanceState, Mapper, ORMExecuteState, Session, SessionTransaction

from audit_engine import AuditService
from audit_engine.integrations import sqlalchemy_changes as changes
from audit_engine.integrations import sqlalchemy_joined as joined
from audit_engine.integrations import sqlalchemy_legacy as legacy
from audit_engine.integrations import sqlalchemy_links as links
from audit_engine.integrations import sqlalchemy_options as options
from audit_engine.integrations.sqlalchemy_handoff import (
    Pending,
    boundary,
    boundary_above,
    build,
    hand_on,
    write_atomic,
)
from audit_engine.integrations.sqlalchemy_options import MODES

__all__ = ["MODES", "Tracking", "track"]

Mode = Literal["atomic", "after_commit"]

logger = logging.getLogger("audit_engine.integrations.sqlalchemy")

_BULK = {"update": "bulk_update", "delete": "bulk_delete", "insert": "bulk_create"}
_OPERATION = {"update": "update", "delete": "delete", "insert": "create"}

# The trackings not stopped yet (track() refuses a class one of them covers for the same
# sessions), and the stopped ones whose commit listeners wait for sessions with entries pending.
_live: list[Tracking] = []
_retiring: list[Tracking] = []
_registry_lock = threading.Lock()


class Tracking:
    """The listeners :func:`track` installed. ``stop()`` ends the capture (they are global on
    the classes and the Session class); also a context manager that stops on exit."""

    def __init__(
        self,
        service: AuditService,
        targets: tuple[type, ...],
        *,
        mode: Mode,
        record_rollbacks: bool,
        session: Any,
        exclude_everywhere: frozenset[str],
        exclude_by_class: dict[type, frozenset[str]],
    ) -> None:
        self.service = service
        self.mode: Mode = mode
        self.record_rollbacks = record_rollbacks
        self.targets = targets
        self.session = session  # track()'s session= choice (None: every session)
        session_target, self._wants = options.sessions(session)
        self._session_target = session_target
        self._exclude_everywhere = exclude_everywhere
        self._exclude_by_class = exclude_by_class
        self._keys: dict[Mapper[Any], tuple[str, ...] | None] = {}  # per mapper, None: untracked
        self._info_key = f"audit_engine.track.{id(self):x}"
        self._pending_key = self._info_key + ".pending"
        self._lock = threading.Lock()  # guards the listener lists and _waiting
        self._stopped = False
        # Sessions with entries waiting for their transaction's end (stop() keeps the commit
        # listeners until these are done).
        self._waiting: weakref.WeakSet[Session] = weakref.WeakSet()
        self._capture_listeners: list[tuple[Any, str, Callable[..., Any]]] = []
        self._end_listeners: list[tuple[Any, str, Callable[..., Any]]] = []
        capture, end = self._capture_listeners, self._end_listeners
        for target in targets:
            for name in ("after_insert", "before_update", "after_update"):
                _listen(capture, target, name, getattr(self, f"_{name}"), propagate=True)
            _listen(capture, target, "before_delete", self._before_delete, propagate=True)
            _listen(capture, target, "after_delete", self._after_delete, propagate=True)
        _listen(capture, session_target, "after_flush", self._after_flush)
        _listen(capture, session_target, "do_orm_execute", self._on_orm_execute)
        legacy.listen(session_target, self._on_legacy_bulk)
        # The commit listeners go through a shared hub: a stopped tracking leaves them when its
        # last pending transaction ends, from inside that event.
        if mode == "atomic":
            end.append((session_target, "before_commit", self._before_commit))
        end.append((session_target, "after_commit", self._after_commit))
        end.append((session_target, "after_transaction_end", self._after_transaction_end))
        for target, name, fn in end:
            joined.hub_add(target, name, fn)

    @property
    def active(self) -> bool:
        """Whether changes are still captured (False once :meth:`stop` was called)."""
        return not self._stopped

    def stop(self) -> None:
        """Stop capturing; idempotent. Entries already captured in a session whose transaction
        is still open are handed on at its end as usual: the commit listeners stay until the
        last of those transactions ended, and go then."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            listeners, self._capture_listeners = self._capture_listeners, []
        for target, name, fn in listeners:
            event.remove(target, name, fn)
        legacy.unlisten(self._session_target, self._on_legacy_bulk)
        with _registry_lock:
            if self in _live:
                _live.remove(self)
            _retiring.append(self)
        sweep()

    def _release_if_done(self) -> bool:
        """Take the commit listeners of a stopped tracking off their hubs once no session waits
        on them (also from inside an event), so nothing keeps it, or its service, alive."""
        with self._lock:
            if not self._stopped or any(self._pending_of(s) for s in list(self._waiting)):
                return False
            listeners, self._end_listeners = self._end_listeners, []
        for target, name, fn in listeners:
            joined.hub_discard(target, name, fn)
        with _registry_lock:
            if self in _retiring:
                _retiring.remove(self)
        return True

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
        if any(issubclass(cls, target) for target in self.targets):
            excluded = set(self._exclude_everywhere)
            for owner, names in self._exclude_by_class.items():
                if issubclass(cls, owner):
                    excluded |= names
            keys = tuple(p.key for p in mapper.column_attrs if p.key not in excluded)
        self._keys[mapper] = keys  # the same answer every time: a race only repeats the work
        return keys

    def _session_of(self, target: Any, mapper: Mapper[Any]) -> tuple[Session, tuple[str, ...]]:
        state: InstanceState[Any] = inspect(target)
        session = state.session
        keys = self._tracked_keys(mapper)
        if session is None or keys is None or not self._wants(session):
            raise LookupError  # not ours to record
        return session, keys

    # -- objects: one entry per insert, update, delete -------------------------------------------

    def _before_update(self, mapper: Mapper[Any], connection: Any, target: Any) -> None:
        """Right before the row's UPDATE (the flush has set every column it writes, a foreign
        key set through a relationship included): read the old values the session lacks."""
        try:
            session, keys = self._session_of(target, mapper)
        except LookupError:
            return
        state: InstanceState[Any] = inspect(target)
        unknown = changes.unknown_fields(state, keys, deleting=False)
        generated = changes.generated_fields(mapper, state, keys)
        old = {key: state.dict[key] for key in generated if key in state.dict}
        fetch = unknown + [
            key
            for key in generated
            if key not in old and (unknown or changes.computed_in_python(mapper, key))
        ]
        if fetch and state.key is not None:
            old.update(changes.stored_values(connection, state, fetch))
        session.info.setdefault(self._info_key, {})[state] = (old, generated)

    def _before_delete(self, mapper: Mapper[Any], connection: Any, target: Any) -> None:
        try:
            session, keys = self._session_of(target, mapper)
        except LookupError:
            return
        state: InstanceState[Any] = inspect(target)
        unknown = changes.unknown_fields(state, keys, deleting=True)
        if unknown and state.key is not None:
            old = changes.stored_values(connection, state, unknown)
            session.info.setdefault(self._info_key, {})[state] = (old, [])

    def _after_flush(self, session: Session, flush: Any) -> None:
        session.info.pop(self._info_key, None)
        if self._wants(session):
            for mapper, fields in links.link_rows(session, self._is_tracked):
                self._capture(session, mapper, fields)

    def _is_tracked(self, mapper: Mapper[Any]) -> bool:
        return self._tracked_keys(mapper) is not None

    def _after_insert(self, mapper: Mapper[Any], connection: Any, target: Any) -> None:
        self._object_changed(mapper, target, "create")

    def _after_update(self, mapper: Mapper[Any], connection: Any, target: Any) -> None:
        self._object_changed(mapper, target, "update")

    def _after_delete(self, mapper: Mapper[Any], connection: Any, target: Any) -> None:
        self._object_changed(mapper, target, "delete")

    def _object_changed(self, mapper: Mapper[Any], target: Any, operation: str) -> None:
        try:
            session, keys = self._session_of(target, mapper)
        except LookupError:
            return
        state: InstanceState[Any] = inspect(target)
        old, generated = session.info.get(self._info_key, {}).pop(state, ({}, []))
        if operation == "create":
            diff = changes.created(state, keys)
        elif operation == "update":
            diff = changes.updated(state, keys, old, generated)
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
        self._capture(session, mapper, fields)

    # -- bulk statements and legacy bulk calls: one entry each -----------------------------------

    def _on_orm_execute(self, state: ORMExecuteState) -> Any:
        kind = "update" if state.is_update else "delete" if state.is_delete else None
        if kind is None and state.is_insert:
            kind = "insert"
        mapper = state.bind_mapper
        if kind is None or mapper is None or not self._wants(state.session):
            return None
        if self._tracked_keys(mapper) is None:
            return None
        # preserve_rowcount: SQLAlchemy keeps an INSERT's count (PostgreSQL) only when asked.
        result = state.invoke_statement(execution_options={"preserve_rowcount": True})
        rows, result = changes.row_count(result, state.parameters)
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
        self._capture(state.session, mapper, fields)
        return result

    def _on_legacy_bulk(self, session: Session, method: str, groups: list[legacy.Group]) -> None:
        if self._stopped or not self._wants(session):
            return
        for mapper, update, rows in groups:
            if self._tracked_keys(mapper) is None:
                continue
            kind = "update" if update else "insert"
            table = changes.table_name(mapper)
            self._capture(
                session,
                mapper,
                {
                    "action": f"{table}.{_BULK[kind]}",
                    "operation": _OPERATION[kind],
                    "resource_type": table,
                    "details": {"statement": f"Session.{method}", "rows": rows},
                },
            )

    # -- the transaction: entries wait for its end -----------------------------------------------

    def _capture(self, session: Session, mapper: Mapper[Any], fields: dict[str, Any]) -> None:
        item = build(self.service, mapper, fields)
        if item is None:
            return
        pending = self._pending(session, boundary(session))
        pending.entries.append(item)
        if pending.written:
            # Flushed by the commit after our before_commit wrote the others (another listener
            # changed objects): still inside the transaction, so written now.
            write_atomic(self.service, session, pending)

    def _pending_of(self, session: Session) -> dict[SessionTransaction, Pending]:
        found: dict[SessionTransaction, Pending] = session.info.get(self._pending_key, {})
        return found

    def _pending(self, session: Session, transaction: SessionTransaction) -> Pending:
        by_transaction: dict[SessionTransaction, Pending] = session.info.setdefault(
            self._pending_key, {}
        )
        pending = by_transaction.get(transaction)
        if pending is None:
            pending = by_transaction[transaction] = Pending()
            with self._lock:
                self._waiting.add(session)
        return pending

    def _before_commit(self, session: Session) -> None:
        """atomic: write the transaction's entries through its connection, now, at its end —
        the chain's lock is taken after the application's own row locks, not at its first
        flush (which could deadlock with a transaction holding a row this one needs)."""
        if not self._wants(session) or session.get_nested_transaction() is not None:
            return  # a savepoint's release: its entries wait for the transaction around it
        if not self._stopped:
            session.flush()  # the commit's own flush runs after this: its entries belong here
        elif boundary(session) not in self._pending_of(session):
            return  # stopped, and nothing captured in this transaction
        pending = self._pending(session, boundary(session))
        write_atomic(self.service, session, pending)
        pending.written = True

    def _after_commit(self, session: Session) -> None:
        if not self._wants(session):
            return
        # The transaction that committed: a savepoint's release fires this too.
        pending = self._pending_of(session).get(boundary(session))
        if pending is not None:
            pending.committed = True

    def _after_transaction_end(self, session: Session, transaction: SessionTransaction) -> None:
        by_transaction = self._pending_of(session)
        if not by_transaction:
            return
        pending = by_transaction.pop(transaction, None)
        if not by_transaction:
            with self._lock:
                self._waiting.discard(session)
            if self._stopped:
                self._release_if_done()
        if pending is None or not pending.entries:
            return
        if transaction.parent is None and joined.end_joined(
            self.service, self.mode, self.record_rollbacks, session, transaction, pending
        ):
            return
        if pending.committed and transaction.nested:
            # A released savepoint: its entries now wait for the transaction around it.
            parent = boundary_above(transaction)
            if parent is not None:
                self._pending(session, parent).entries.extend(pending.entries)
            return
        if not pending.committed:
            if self.record_rollbacks:
                hand_on(self.service, pending.entries, failure=True)
        elif self.mode == "after_commit":
            hand_on(self.service, pending.entries, failure=False)
        elif not pending.written:
            # atomic, but committed without our before_commit writing them (a savepoint
            # released by a commit of the transaction around it): the queue, and say so.
            logger.warning(
                "%d audit entries were committed without being written in their transaction; "
                "handed to the audit service's queue instead",
                len(pending.entries),
            )
            hand_on(self.service, pending.entries, failure=False)


def _listen(
    into: list[tuple[Any, str, Callable[..., Any]]],
    target: Any,
    name: str,
    fn: Callable[..., Any],
    **kw: Any,
) -> None:
    event.listen(target, name, fn, **kw)
    into.append((target, name, fn))


def sweep() -> None:
    """Remove the commit listeners of stopped trackings whose sessions have all finished (a
    session dropped with its transaction open never ends it), and the hubs nobody uses."""
    with _registry_lock:
        retiring = list(_retiring)
    for tracking in retiring:
        tracking._release_if_done()
    joined.hub_sweep()


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

    ``mode``: ``"atomic"`` (built at flush, written through the session's connection when it
    commits, inside its transaction: committed or rolled back with the change) or
    ``"after_commit"`` (queued once the commit succeeded, in one hand-off; discarded on
    rollback). ``record_rollbacks=True`` records a change that
    was rolled back, after the rollback, with ``outcome="failure"``. ``session``: which sessions
    (a Session, a sessionmaker, a scoped_session — its sessionmaker — or a Session subclass;
    default every Session).
    ``exclude_fields``: field names never diffed, everywhere (a set of names) or per class
    (a mapping from class to names). A class a live tracking already covers (for sessions both
    select) is refused. Returns the :class:`Tracking`: call ``stop()``.
    """
    options.check(service, targets, mode, record_rollbacks)
    session = options.session_choice(session)  # checked before anything is installed
    everywhere, by_class = options.exclusions(exclude_fields, targets)
    sweep()
    with _registry_lock:
        options.refuse_overlap(targets, session, [(t.targets, t.session) for t in _live])
        tracking = Tracking(
            service,
            targets,
            mode=mode,
            record_rollbacks=record_rollbacks,
            session=session,
            exclude_everywhere=everywhere,
            exclude_by_class=by_class,
        )
        _live.append(tracking)
    return tracking
