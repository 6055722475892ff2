"""AuditService: the facade an application holds.

``record()`` validates in the caller's thread and hands the entry to the write-behind writer (or
writes it synchronously, in sync mode or through an injected connection). The service owns its
writer thread and its connections; nothing here is global except the registry that lets atexit and
``os.fork()`` find the live services.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any, Self

from audit_engine.errors import (
    AuditServiceClosed,
    AuditWriteError,
)
from audit_engine.models import AuditEntry, AuditStats, SignedCheckpoint
from audit_engine.pipeline import audited, bulk, intake, lifecycle
from audit_engine.pipeline.bus import DomainEvent, EventBus
from audit_engine.pipeline.context import ContextStack, Frame, context_values, entry_fields
from audit_engine.pipeline.counters import CallerCounters
from audit_engine.pipeline.enqueue import enqueue_waiting
from audit_engine.pipeline.policy import AuditPolicy, Decision
from audit_engine.pipeline.scope import AuditScope, KeyFunc
from audit_engine.pipeline.syncwrite import SyncConnection
from audit_engine.pipeline.writer import _WRITER_BUSY_SLICE_S, Writer
from audit_engine.rows import Row
from audit_engine.settings import AuditSettings
from audit_engine.settings import resolve as resolve_settings
from audit_engine.storage import backends, checkpointing, deadletter
from audit_engine.storage.dialect import DATABASE_ERRORS
from audit_engine.storage.linker import UNKEYED, load_linker
from audit_engine.storage.retention import CleanupThread

logger = logging.getLogger("audit_engine.service")  # the documented logger name

# close() waits this long for the cleanup thread to finish its current batch.
_CLEANUP_STOP_TIMEOUT_S = 5.0

Mapper = Callable[[DomainEvent], AuditEntry | None]


def _no_connection(entry: Row) -> None:  # pragma: no cover - chosen only with a connection
    raise AssertionError("this service has no injected connection")


class AuditService:
    """Records audit entries; see the module docstring and docs/guarantees.md.

    ``AuditService()`` reads :class:`AuditSettings` from the environment;
    ``AuditService("audit.db")`` takes the database path, ``AuditService(settings)`` given
    settings, and keyword arguments override single settings (``queue_maxsize=50``), validated
    like settings. With ``connection=`` every entry is written through that connection, inside
    the caller's transaction, uncommitted. With ``signing_key_file`` set, the writer signs
    checkpoints into ``checkpoint_file`` and/or passes each to ``on_checkpoint``
    (docs/checkpoints.md).
    """

    def __init__(
        self,
        settings: AuditSettings | str | os.PathLike[str] | None = None,
        *,
        connection: Any = None,
        on_checkpoint: Callable[[SignedCheckpoint], Any] | None = None,
        **overrides: Any,
    ) -> None:
        injected = (
            None
            if connection is None
            else backends.injected_writer(connection, "AuditService() connection")
        )
        self.settings = resolve_settings(settings, overrides)
        s = self.settings
        # How rows are hashed: keyed with the chain key file's first key, or not. A disabled
        # service writes nothing and reads no key.
        self._linker = linker = load_linker(s.chain_key_file) if s.enabled else UNKEYED
        if connection is not None:
            injected = backends.injected_writer(
                connection, "AuditService() connection", linker, s.busy_timeout
            )
        self._enabled = s.enabled
        self.policy = AuditPolicy.from_settings(s)
        # context(), disabled() and scope() blocks: one ContextVar per service.
        self._frames = ContextStack(f"audit_context_{id(self):x}")
        self._frame = self._frames.var.get  # read once per record()
        self._max_details_bytes = s.max_details_bytes
        self._connection = connection
        self._own_connection_writer: backends.InjectedWriter = _no_connection
        self._closed = False
        self._close_lock = threading.RLock()
        self._close_result = True
        self._writer: Writer | None = None
        self._cleanup: CleanupThread | None = None
        self._sync = SyncConnection(s, self._linker)
        self._counters = CallerCounters()
        self._last_error: str | None = None
        self._warnings: list[str] = []
        # The write mode, chosen once here: how record() hands on a kept row (a connection passed
        # to record() itself overrides it for that call). Disabled: record() stops earlier. A
        # function of the class, not a bound method: that would make the service a cycle, and
        # an unclosed service is drained when dropped (the weakref.finalize below).
        self._accept_row: Callable[[AuditService, Row], str | None] = AuditService._write_sync
        if not self._enabled:
            return
        if connection is None:
            # Checked before anything opens the trail; the connection logs the same warning.
            loose = backends.permission_warning(s.database)
            if loose is not None:
                self._warnings.append(loose)
            # A wrong URL fails here, not at close(); so does an unkeyed writer on a keyed trail.
            backends.check_reachable(s.database, self._linker)
        checkpointer = checkpointing.from_settings(
            s,
            on_checkpoint,
            lambda: backends.open_trail(
                s.database, busy_timeout=s.busy_timeout, create=True, synchronous=s.synchronous
            ),
            mode=None if injected is None else "AuditService(connection=...)",
        )
        if injected is not None:
            write, migrate = injected
            migrate()
            self._own_connection_writer = write
            self._accept_row = AuditService._write_to_own_connection
        elif s.async_writes:
            busy_s = min(s.busy_timeout, _WRITER_BUSY_SLICE_S)
            writer = Writer(
                lambda: backends.open_sink(s, busy_s, linker),  # not self: no cycle
                deadletter.DeadLetterFile(s.deadletter_file),
                queue_maxsize=s.queue_maxsize,
                batch_size=s.buffer_max_size,
                flush_interval_s=s.buffer_flush_interval,
                checkpointer=checkpointer,
            )
            self._writer = self._queued = writer
            self._accept_row = AuditService._enqueue
            # Drain the writer if the service is garbage-collected unclosed; the callback must not
            # hold the service itself.
            weakref.finalize(self, writer.request_stop)
        else:
            self._sync.open()
        if connection is None and s.cleanup_enabled:
            self._cleanup = self._start_cleanup()
            weakref.finalize(self, self._cleanup.request_stop)
        lifecycle.register(self)

    def _start_cleanup(self) -> CleanupThread:
        s = self.settings
        return CleanupThread(
            lambda: backends.open_trail(
                s.database, busy_timeout=s.busy_timeout, create=True, synchronous=s.synchronous
            ),
            retention=timedelta(days=s.retention_days),
            batch_size=s.cleanup_batch_size,
            interval_s=s.cleanup_interval,
            gate=self._writer.fork_gate if self._writer is not None else None,
            linker=self._linker,
        )

    def fork_gates(self) -> list[threading.RLock]:
        """Locks held while inside SQLite, which ``os.fork()`` waits for (audit_engine.forks).

        The writer's and the cleanup thread's gates (each also registers its own, for when it
        outlives the service) and the synchronous lock, held for a whole synchronous write.
        """
        gates = []
        if self._writer is not None:
            gates.append(self._writer.fork_gate)
        if self._cleanup is not None:
            gates.append(self._cleanup.fork_gate)
        gates.append(self._sync.lock)  # held for a whole synchronous write
        return gates

    @property
    def writer(self) -> Writer | None:
        """The write-behind worker (None in sync mode, with an injected connection, or disabled)."""
        return self._writer

    # -- recording ---------------------------------------------------------------------------

    def record(
        self,
        entry: AuditEntry | None = None,
        /,
        *,
        connection: Any = None,
        **fields: Any,
    ) -> str | None:
        """Record one entry; returns its ``event_id``, or None when it was not recorded.

        Pass an :class:`AuditEntry` or its fields as keywords. Validation happens here, in the
        caller's thread: bad input raises a ``ValueError`` subclass naming the field. Then the
        policy decides (level, exclusions, sampling; critical entries bypass them), ``details``
        are redacted, and a scope (:meth:`scope`) suppresses repeats. None means the entry was
        not recorded: the service is disabled, the policy filtered it out, it repeated an entry
        of the current scope, or the queue was full with ``on_full='drop'`` (never for a
        critical entry: it waits for room as with ``'block'``, then raises AuditQueueFull).
        With ``connection=`` the entry is written through that connection, uncommitted.
        """
        if self._closed:
            raise AuditServiceClosed("the audit service is closed")
        write_injected = (
            None
            if connection is None
            else backends.injected_writer(
                connection, "record() connection", self._linker, self.settings.busy_timeout
            )[0]
        )
        if not self._enabled:
            return None
        # The common path (keywords, default policy, no block open, room in the queue) is
        # written straight through: it runs for every entry and its cost is the caller's.
        frame = self._frame()
        if frame is not None and frame.bound:
            if entry is not None:
                intake.check_entry_argument(entry, fields)
                fields, entry = entry_fields(entry), None
            fields = frame.apply(fields)
        if entry is None:
            row, details = intake.validated_row(fields, self._max_details_bytes)
        else:
            row, details = intake.given_entry_row(entry, fields, self._max_details_bytes)
        if frame is not None and frame.disabled and not row.critical:
            self._counters.count_skipped_disabled()
            return None
        policy = self.policy
        if not (policy.keeps_everything or row.critical):
            decision = policy.decide_values(
                row.operation, row.outcome, row.action, row.resource_type, row.event_id, False
            )
            if decision is not Decision.KEEP:
                self._counters.count_not_kept(decision)
                return None
        redacted = policy.redact_details(details)
        if redacted is not details:
            row = intake.with_details(row, redacted)
        scope = None if frame is None else frame.scope
        if scope is None or row.critical:  # critical entries are never de-duplicated
            if write_injected is None:
                return self._accept_row(self, row)
            return self._write_injected(write_injected, row)
        key = scope.row_key(row)  # the default key reads the row; a custom one gets a model
        if key in scope.seen:
            self._counters.count_deduplicated()
            return None
        if write_injected is None:
            event_id = self._accept_row(self, row)
        else:
            event_id = self._write_injected(write_injected, row)
        # Marked only once accepted: after a failed record() the same entry is tried again.
        if event_id is not None:
            scope.seen.add(key)
        return event_id

    # -- the write modes: one of these is _accept_row ------------------------------------------

    def _enqueue(self, entry: Row) -> str | None:
        """Async mode: queue a kept entry; None if dropped (full queue, ``on_full='drop'``)."""
        # Room in the queue for a plain entry: the common case, done.
        if not entry.critical and self._queued.offer(entry):
            return entry.event_id
        return enqueue_waiting(
            self._queued,
            entry,
            self.settings,
            write_sync=self._write_sync,
            drop=self._counters.count_drop,
        )

    def _write_sync(self, entry: Row) -> str:
        """Sync mode (and ``on_full='sync'``): commit the entry in the caller's thread."""
        self._sync.write(entry)
        return entry.event_id

    def _write_to_own_connection(self, entry: Row) -> str:
        """A service built with ``connection=``: every entry goes through that connection."""
        return self._write_injected(self._own_connection_writer, entry)

    def _write_injected(self, write: backends.InjectedWriter, entry: Row) -> str:
        """Insert the entry through the caller's connection, in the caller's transaction."""
        try:
            write(entry)
        except DATABASE_ERRORS as exc:
            raise AuditWriteError(f"could not write audit entry {entry.event_id}: {exc}") from exc
        self._counters.count_injected()
        return entry.event_id

    def scope(
        self, key: KeyFunc | None = None, *, fresh: bool = False
    ) -> AbstractContextManager[AuditScope]:
        """Open a unit of work in which repeated entries are recorded once.

        Entries are repeats when ``key(entry)`` is equal — by default (actor, action,
        resource_type, resource_id). Scopes follow the current thread / contextvars context and
        nest; an inner scope shares the outer one's markers unless opened with ``fresh=True``.
        Critical entries are never de-duplicated.
        """
        return self._frames.open_scope(key, fresh=fresh)

    def context(
        self, *, details: dict[str, Any] | None = None, **fields: Any
    ) -> AbstractContextManager[Frame]:
        """A block whose entries get these fields where ``record()`` was not given them.

        ``actor``, ``correlation_id``, ``resource_type`` and ``resource_id`` are fields; every
        other keyword (and ``details=``) is merged into ``details``. A keyword given to
        ``record()`` wins, even None; details merge key by key, the entry's own keys winning;
        an inner block wins over an outer one. Follows the contextvars context like
        :meth:`scope` (a new thread starts with none). Applies to everything that goes through
        ``record()``: bus events, captured ORM changes, log records, decorated calls. Values are
        validated here; fields that belong to each entry (``action``, ``outcome``…) raise
        TypeError.
        """
        bound, bound_details = context_values(details, fields, self._max_details_bytes)
        return self._frames.bind(bound, bound_details)

    def disabled(self) -> AbstractContextManager[Frame]:
        """A block in which ``record()`` records nothing (returns None) but critical entries.

        For maintenance scripts; what it skips is counted in ``stats().skipped_disabled``.
        """
        return self._frames.disable()

    def audited(self, action: str, **fields: Any) -> audited.Decorator:
        """A decorator recording one entry per call of the function (docs/integrations.md)."""
        return audited.audited(self, action, **fields)

    def record_many(
        self, entries: Iterable[AuditEntry | dict[str, Any]], /, *, connection: Any = None
    ) -> list[str | None]:
        """Record many entries: all validated first, then all accepted or none, in one hand-off.

        Returns each entry's ``event_id`` (None where the policy or a scope left it out).
        See docs/integrations.md.
        """
        return bulk.record_many(self, entries, connection)

    def subscribe(
        self, bus: EventBus, mapper: Mapper | None = None
    ) -> Callable[[DomainEvent], None]:
        """Audit every :class:`DomainEvent` emitted on ``bus``; returns the handler it subscribed.

        Each event becomes an entry through ``mapper(event)`` (returning None skips the event) or
        :meth:`DomainEvent.to_audit_entry`.
        """
        return bus.audit_into(self.record, mapper)

    # -- lifecycle ---------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every entry accepted before this call is committed; False on timeout.

        ``timeout`` is in seconds (None waits as long as it takes). Returns False at once if the
        writer thread is gone. Entries moved to the dead-letter file count as handled.
        """
        writer = self._writer
        if writer is None:
            return True  # synchronous writes are committed before record() returns
        return writer.flush(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Stop accepting, commit everything accepted, stop the writer, close the connections.

        Returns False if the queue could not be drained within ``timeout`` seconds; what was left is
        then in the dead-letter file (see ``stats()``). Idempotent.
        """
        with self._close_lock:
            if self._closed:
                return self._close_result
            self._closed = True
            if self._cleanup is not None:
                # First, so a long purge stops taking turns with the writer while it drains.
                self._cleanup.request_stop()
            writer = self._writer
            if writer is not None:
                drained, left = writer.stop(timeout)
                if not drained:
                    self._last_error = (
                        f"close() could not drain the queue in time: {left} entries moved to "
                        f"{writer.moved_to}"
                    )
                # Entries only in the log, or a batch the loop failed on: not a clean close.
                self._close_result = drained and writer.clean
            if self._cleanup is not None:
                self._cleanup.stop(_CLEANUP_STOP_TIMEOUT_S)
            self._sync.close()
            lifecycle.unregister(self)
            return self._close_result

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def stats(self) -> AuditStats:
        """A snapshot of the counters (still answers after close())."""
        w = self._writer
        c = self._counters
        synchronous = self._sync.written + c.injected_written
        return AuditStats(
            accepted=(w.accepted if w else 0) + synchronous,
            written=(w.written if w else 0) + synchronous,
            dropped=c.dropped,
            batches=w.batches if w else 0,
            queue_depth=w.queue_depth if w else 0,
            max_queue_depth=w.max_queue_depth if w else 0,
            retries=w.retries if w else 0,
            dead_lettered=w.dead_lettered if w else 0,
            writer_alive=w.alive if w else False,
            last_error=self._last_error
            or (w.last_error if w else None)
            or (self._cleanup.last_error if self._cleanup else None),
            filtered_by_level=c.not_kept[Decision.FILTERED_BY_LEVEL],
            excluded=c.not_kept[Decision.EXCLUDED],
            sampled_out=c.not_kept[Decision.SAMPLED_OUT],
            deduplicated=c.deduplicated,
            skipped_disabled=c.skipped_disabled,
            longest_batch_s=w.longest_batch_s if w else 0.0,
            cleanup_runs=self._cleanup.runs if self._cleanup else 0,
            rows_purged=self._cleanup.rows_deleted if self._cleanup else 0,
            logged_only=w.logged_only if w else 0,
            warnings=list(self._warnings),
            **(w.checkpointer.stats() if w and w.checkpointer else {}),
        )

    def after_fork_in_child(self) -> None:
        """In a forked child: fresh locks and counters; an open service starts its threads again."""
        self._close_lock = threading.RLock()
        self._counters = CallerCounters()
        self._sync.reset_after_fork()
        if self._closed:
            return
        if self._writer is not None:
            self._writer.reset_after_fork()
        if self._cleanup is not None:
            self._cleanup = self._start_cleanup()  # threads do not survive a fork
