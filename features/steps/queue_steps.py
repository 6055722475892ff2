"""Steps that fill the audit queue for real, behind another program's write lock."""

import logging

from behave import given, then
from behave.runner import Context
from trail_backend import writers_waiting

from audit_engine import AuditQueueFull

WAIT_S = 10.0


@given("the audit writer is stuck behind the lock with one entry in hand")
def given_writer_stuck(context: Context) -> None:
    world = context.world
    audit = world.audit
    assert audit.settings.buffer_max_size == 1, "the writer must take one entry per batch"
    assert world.lock_held
    world.record_notes(1)
    if isinstance(world.database, str):
        # PostgreSQL: the writer took the entry off the queue and waits for the chain's lock.
        world.wait_until(
            lambda: audit.stats().queue_depth == 0 and writers_waiting(world.database) > 0,
            "the writer waits for the chain's lock",
        )
    else:
        # A retry means the writer took the entry off the queue and met the lock.
        world.wait_until(lambda: audit.stats().retries > 0, "the writer retries a busy database")
    stats = audit.stats()
    assert stats.queue_depth == 0, stats
    assert stats.written == 0, stats


@given("the tool has filled the audit queue with {count:d} entries")
def given_queue_filled(context: Context, count: int) -> None:
    world = context.world
    results = world.record_notes(count)
    assert all(results), f"the queue refused entries before it was full: {results}"
    stats = world.audit.stats()
    assert stats.queue_depth == count == world.audit.settings.queue_maxsize, stats


@then("recording fails with AuditQueueFull after waiting about {timeout_s:g} seconds")
def then_queue_full(context: Context, timeout_s: float) -> None:
    world = context.world
    assert isinstance(world.error, AuditQueueFull), f"expected AuditQueueFull, got {world.error!r}"
    assert "queue_maxsize=2" in str(world.error), str(world.error)
    # Bounded below by the setting; the upper bound only catches a wait that ignores it.
    assert timeout_s * 0.9 <= world.elapsed_s < timeout_s + 3.0, world.elapsed_s
    assert world.lock_held, "the lock was released while the tool waited"


@then("none of those {count:d} entries was accepted")
def then_none_accepted(context: Context, count: int) -> None:
    results = context.world.last_results
    assert len(results) == count, results
    assert results == [None] * count, f"some entries were accepted: {results}"


@then("the service reports {count:d} dropped entries")
def then_dropped(context: Context, count: int) -> None:
    stats = context.world.audit.stats()
    assert stats.dropped == count, stats


@then("recording returned an event id only after the lock was released")
def then_returned_after_release(context: Context) -> None:
    world = context.world
    assert world.error is None, f"recording failed: {world.error!r}"
    assert world.returned, "recording returned no event id"
    assert world.lock_released.wait(WAIT_S), "the other program never released its lock"
    # The release time is taken just before the lock is let go: a write that did not wait for
    # the lock would have returned earlier.
    assert world.release_started_at is not None
    assert world.finished_at > world.release_started_at, "record() returned before the release"


@then("that entry is in the audit database before any flush")
def then_written_synchronously(context: Context) -> None:
    world = context.world
    stored = [row["event_id"] for row in world.audit_rows()]
    assert world.returned in stored, "the entry written in the tool's thread is not committed"


@then("the operator is warned in the log that audit entries were dropped")
def then_drop_warning(context: Context) -> None:
    warnings = [
        record.getMessage()
        for record in context.world.log.records
        if record.levelno >= logging.WARNING and "dropped" in record.getMessage()
    ]
    assert warnings, "nothing about dropped entries was logged"
