"""A Session joined into a transaction of the Connection it is bound to, and the session events a
tracking waits on.

``with engine.begin() as conn: Session(bind=conn)`` (or ``conn.begin()`` first, the test-suite
pattern), in any ``join_transaction_mode`` but ``"control_fully"``: the session's commit does not
commit the database transaction (``rollback_only``) or only releases a savepoint of its own
(``create_savepoint``), and a session closed uncommitted leaves its flushed rows to the outer
transaction (``rollback_only``). The outer transaction decides, so :func:`outer_connections`
tells the tracking to let it: see ``Tracking._end_joined``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, NestedTransaction
from sqlalchemy.orm import Session, SessionTransaction

from audit_engine import AuditService
from audit_engine.integrations.sqlalchemy_handoff import Pending, hand_on, write_atomic


def outer_connections(transaction: SessionTransaction, committed: bool) -> dict[Any, Connection]:
    """The session's binds whose Connection's transaction goes on after ``transaction`` (the
    session's outermost) ended and holds its flushed rows: bind -> Connection. Empty when the
    session owned its transactions (bound to an engine, or ``control_fully``) or its rows are
    gone (its savepoint, or the joined transaction, rolled back)."""
    # SessionTransaction keeps (connection, its transaction, whether the session ends it,
    # whether the session opened the connection) per bind; no public accessor gives them.
    joined: dict[Any, Connection] = {}
    connections: dict[Any, tuple[Any, ...]] = getattr(transaction, "_connections", {})
    for bind, (connection, own, should_commit, autoclose) in list(connections.items()):
        if autoclose or not isinstance(connection, Connection) or connection.closed:
            continue  # the session opened this connection: its end is the session's
        savepoint_of_its_own = should_commit and isinstance(own, NestedTransaction)
        if not (savepoint_of_its_own or not should_commit):
            continue  # control_fully, or a transaction the session began itself
        if not connection.in_transaction():
            continue
        if committed or (not should_commit and own.is_active):
            joined[bind] = connection
    return joined


def end_joined(
    service: AuditService,
    mode: str,
    record_rollbacks: bool,
    session: Session,
    transaction: SessionTransaction,
    pending: Pending,
) -> bool:
    """The end of a session joined into its Connection's transaction, which goes on with the
    rows: that transaction decides, not the session's end. atomic writes what is not written
    yet through it now (raising if it cannot, so the outer transaction does not commit
    without them); after_commit hands the entries on when it commits; a rollback of it
    records the failures (``record_rollbacks``). False when the session's own end decides."""
    outer = outer_connections(transaction, pending.committed)
    if not outer:
        return False
    connections: dict[int, Connection] = {}
    for item in pending.entries:
        connection = outer.get(session.get_bind(mapper=item.mapper))
        if connection is None:
            return False  # a bind the session owned: its end decides, as usual
        connections[id(connection)] = connection
    atomic = mode == "atomic"
    if atomic:
        write_atomic(service, session, pending, lambda m: outer[session.get_bind(mapper=m)])
    entries = list(pending.entries)

    def ended(committed: bool) -> None:
        if not committed and record_rollbacks:
            hand_on(service, entries, failure=True)
        elif committed and not atomic:
            hand_on(service, entries, failure=False)

    if record_rollbacks or not atomic:
        # One listener for the lot: the entries of two joined connections go on the first's end.
        on_outer_end(next(iter(connections.values())), ended)
    return True


def on_outer_end(connection: Connection, ended: Callable[[bool], None]) -> None:
    """Call ``ended(committed)`` once, when ``connection``'s transaction commits or rolls back
    (``ConnectionEvents.commit`` fires right before the COMMIT is sent; a connection closed
    with its transaction open rolls it back)."""
    once = threading.Lock()

    def commit(conn: Connection) -> None:
        if once.acquire(blocking=False):
            ended(True)

    def rollback(conn: Connection) -> None:
        if once.acquire(blocking=False):
            ended(False)

    # once=True: each fires at most once; the other stays on this Connection object (no removal
    # from inside a dispatch) and does nothing, the lock taken.
    event.listen(connection, "commit", commit, once=True)
    event.listen(connection, "rollback", rollback, once=True)


class Hub:
    """One listener per (target, event) that calls the trackings' functions: a stopped tracking
    leaves it at once, even from inside an event — SQLAlchemy refuses to remove a listener while
    it dispatches, a tuple replaced (never changed in place) does not mind."""

    __slots__ = ("__weakref__", "fns", "name", "target")  # SQLAlchemy keeps a weakref

    def __init__(self, target: Any, name: str) -> None:
        self.target = target
        self.name = name
        self.fns: tuple[Callable[..., Any], ...] = ()

    def __call__(self, *args: Any) -> None:
        for fn in self.fns:
            fn(*args)


_hubs: dict[tuple[int, str], Hub] = {}
_hubs_lock = threading.Lock()


def hub_add(target: Any, name: str, fn: Callable[..., Any]) -> None:
    with _hubs_lock:
        hub = _hubs.get((id(target), name))
        if hub is None:
            hub = _hubs[(id(target), name)] = Hub(target, name)
            event.listen(target, name, hub)
        hub.fns += (fn,)


def hub_discard(target: Any, name: str, fn: Callable[..., Any]) -> None:
    with _hubs_lock:
        hub = _hubs.get((id(target), name))
        if hub is not None:
            hub.fns = tuple(f for f in hub.fns if f != fn)


def hub_sweep() -> None:
    """Remove the hubs no tracking uses (never from inside an event)."""
    with _hubs_lock:
        empty = [key for key, hub in _hubs.items() if not hub.fns]
        hubs = [_hubs.pop(key) for key in empty]
    for hub in hubs:
        event.remove(hub.target, hub.name, hub)


def hub_has(target: Any, name: str, fn: Callable[..., Any]) -> bool:
    with _hubs_lock:
        hub = _hubs.get((id(target), name))
        return hub is not None and fn in hub.fns
