"""Async mode's slow path: a critical entry, or no room in the queue.

The fast path (a plain entry, room in the queue) is one ``offer`` in the service's
``_enqueue``. Here ``on_full`` decides: wait for room (``block``), write the entry in the
caller's thread (``sync``) or drop it (``drop``; never a critical entry, which waits as with
``block``). With ``critical_sync`` a critical entry is waited for until committed.
:func:`enqueue_many` does the same for ``record_many()``'s entries, all of them or none.

From an audit writer thread (an ``on_checkpoint`` callback that records) nothing waits: that
thread alone makes room and commits, so a wait could only last ``block_timeout`` and fail. A
critical entry is handed off and not waited for; a full queue is handled at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from audit_engine.errors import AuditQueueFull, AuditWriteError
from audit_engine.pipeline.writer import WRITER_THREAD_NAME, Writer
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
    on_writer = _on_writer_thread()
    timeout = settings.block_timeout if on_full == "block" and not on_writer else 0.0
    waits = entry.critical and settings.critical_sync and not on_writer
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
    if on_writer:
        raise AuditQueueFull(
            f"the audit queue is full (queue_maxsize={settings.queue_maxsize}) and record() "
            "was called from the audit writer thread (an on_checkpoint callback), which alone "
            "makes room: it cannot wait; the entry was not recorded"
        )
    raise AuditQueueFull(
        f"the audit queue stayed full for {settings.block_timeout}s "
        f"(queue_maxsize={settings.queue_maxsize}); the "
        f"{'critical ' if never_dropped else ''}entry was not recorded{never_dropped}"
    )


def _on_writer_thread() -> bool:
    # By name, so that no writer thread waits on any writer (two services' callbacks recording
    # into each other would otherwise wait on each other).
    return threading.current_thread().name == WRITER_THREAD_NAME


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


def enqueue_many(
    writer: Writer,
    entries: Sequence[Row],
    settings: AuditSettings,
    *,
    write_sync: Callable[[Sequence[Row]], None],
    drop: Callable[[int], None],
) -> bool:
    """Queue ``entries`` next to each other, write them here, drop them or raise: all or none.

    True if they were accepted, False if dropped (``on_full='drop'``, none of them critical).
    """
    critical = [entry for entry in entries if entry.critical]
    on_full = settings.on_full
    if on_full == "drop" and critical:
        on_full = "block"  # a critical entry is never dropped, so neither are its companions
    on_writer = _on_writer_thread()
    watched = critical if settings.critical_sync and not on_writer else []
    for entry in watched:
        writer.watch(entry)  # before queueing: the writer may set it aside at once
    timeout = settings.block_timeout if on_full == "block" and not on_writer else 0.0
    last = writer.put_many(entries, timeout)
    if last:
        if watched:
            # Waiting for the last critical one waits for every entry queued before it too.
            _wait_all_committed(writer, last - len(entries) + 1, entries, watched, settings)
        return True
    for entry in watched:
        writer.outcome(entry)  # not queued: stop watching them
    if on_full == "sync":
        write_sync(entries)
        return True
    if on_full == "drop":
        drop(len(entries))
        return False
    too_many = (
        "; more than queue_maxsize entries wait for an empty queue"
        if len(entries) > settings.queue_maxsize
        else ""
    )
    never_dropped = (
        " (with a critical entry among them they are never dropped: with on_full='drop' they "
        "wait up to block_timeout for room, as with 'block')"
        if settings.on_full == "drop"
        else ""
    )
    raise AuditQueueFull(
        f"the audit queue had no room for {len(entries)} entries within "
        f"{settings.block_timeout}s (queue_maxsize={settings.queue_maxsize}{too_many}); none "
        f"of them was recorded{never_dropped}"
    )


def _wait_all_committed(
    writer: Writer,
    first: int,
    entries: Sequence[Row],
    watched: Sequence[Row],
    settings: AuditSettings,
) -> None:
    position = first + max(i for i, entry in enumerate(entries) if entry.critical)
    try:
        done = writer.wait_for(position, settings.block_timeout)
    finally:
        # Every watched entry's outcome is taken, so none stays watched.
        why = [(entry, writer.outcome(entry)) for entry in watched]
    failed = [(entry, reason) for entry, reason in why if reason is not None]
    if failed:
        entry, reason = failed[0]
        raise AuditWriteError(f"critical entry {entry.event_id} was not committed: {reason}")
    if not done:
        raise AuditWriteError(
            f"the critical entries ({', '.join(e.event_id for e in watched)}) were not confirmed "
            f"committed within {settings.block_timeout}s (block_timeout); they stay queued and "
            "are still written when the database allows"
        ) from TimeoutError("not confirmed within block_timeout")
