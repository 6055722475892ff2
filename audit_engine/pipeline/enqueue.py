"""Async mode's slow path: a critical entry, or no room in the queue.

The fast path (a plain entry, room in the queue) is one ``offer`` in the service's
``_enqueue``. Here ``on_full`` decides: wait for room (``block``), write the entry in the
caller's thread (``sync``) or drop it (``drop``; never a critical entry, which waits as with
``block``). With ``critical_sync`` a critical entry is waited for until committed.
"""

from __future__ import annotations

from collections.abc import Callable

from audit_engine.errors import AuditQueueFull, AuditWriteError
from audit_engine.pipeline.writer import Writer
from audit_engine.rows import Row
from audit_engine.settings import AuditSettings


def enqueue_waiting(
    writer: Writer,
    entry: Row,
    settings: AuditSettings,
    *,
    write_sync: Callable[[Row], str],
    drop: Callable[[], None],
) -> str | None:
    """A critical entry, or no room in the queue: wait, write it here, drop it or raise."""
    on_full = settings.on_full
    if on_full == "drop" and entry.critical:
        on_full = "block"  # a critical entry is never dropped: it waits, or fails loudly
    timeout = settings.block_timeout if on_full == "block" else 0.0
    waits = entry.critical and settings.critical_sync
    if waits:
        writer.watch(entry)  # before queueing: the writer may set it aside at once
    position = writer.put(entry, timeout)
    if position:
        if waits:
            _wait_committed(writer, position, entry, settings.block_timeout)
        return entry.event_id
    writer.outcome(entry)  # not queued: stop watching it (a no-op if not watched)
    if on_full == "sync":
        return write_sync(entry)
    if on_full == "drop":
        drop()
        return None
    never_dropped = (
        " (a critical entry is never dropped: with on_full='drop' it waits up to "
        "block_timeout for room, as with 'block')"
        if settings.on_full == "drop"
        else ""
    )
    raise AuditQueueFull(
        f"the audit queue stayed full for {settings.block_timeout}s "
        f"(queue_maxsize={settings.queue_maxsize}); the "
        f"{'critical ' if never_dropped else ''}entry was not recorded{never_dropped}"
    )


def _wait_committed(writer: Writer, position: int, entry: Row, block_timeout: float) -> None:
    # The writer commits at once when someone waits; FIFO keeps earlier entries first.
    try:
        done = writer.wait_for(position, block_timeout)
    finally:
        why = writer.outcome(entry)  # set if it went to the dead-letter file or the log
    if why is not None:
        raise AuditWriteError(f"critical entry {entry.event_id} was not committed: {why}")
    if not done:
        # The cause marks the kind that may still end well: the entry is still queued.
        raise AuditWriteError(
            f"critical entry {entry.event_id} was not confirmed committed within "
            f"{block_timeout}s (block_timeout); it stays queued and is still "
            "written when the database allows"
        ) from TimeoutError("not confirmed within block_timeout")
