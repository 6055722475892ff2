"""Steps for synchronous mode (async_writes=false) and for a disabled audit service."""

import os

from behave import given, then, when
from behave.runner import Context
from trail_backend import count_event, trail_exists

from audit_engine import AuditService, AuditWriteError

WAIT_S = 10.0


@when("the tool records {count:d} entries, another program looking after each one")
def when_record_and_look(context: Context, count: int) -> None:
    world = context.world
    world.seen_after_each = []
    for _ in range(count):
        event_id = world.record_notes(1)[0]
        # A fresh connection each time: nothing cached, only what is committed.
        world.seen_after_each.append(count_event(world.database, event_id) == 1)


@then("the other program saw each entry as soon as recording returned")
def then_seen_each(context: Context) -> None:
    seen = context.world.seen_after_each
    assert seen, "nothing was recorded"
    assert all(seen), f"not committed when record() returned: {seen}"


@then("recording fails with an audit write error")
def then_write_error(context: Context) -> None:
    error = context.world.error
    assert isinstance(error, AuditWriteError), f"expected AuditWriteError, got {error!r}"
    # SQLite: "database is locked"; PostgreSQL: the chain's lock not had within busy_timeout.
    assert "locked" in str(error) or "lock timeout" in str(error), str(error)


@given("auditing is switched off {where}")
def given_disabled(context: Context, where: str) -> None:
    world = context.world
    if where == "in the tool's code":
        world.open_service(world.settings(enabled=False))
    elif where == "with the environment variable AUDIT_TRAIL_ENABLED":
        os.environ["AUDIT_TRAIL_ENABLED"] = "false"
        os.environ["AUDIT_TRAIL_DATABASE"] = str(world.database)
        world.service = world.track(AuditService())
    else:
        raise AssertionError(f"no way to switch auditing off {where!r}")
    assert not world.audit.settings.enabled


@then("no recording returned an event id")
def then_no_ids(context: Context) -> None:
    results = context.world.results
    assert results, "nothing was recorded"
    assert results == [None] * len(results), results


@then("flushing and closing the audit service both succeed")
def then_flush_close(context: Context) -> None:
    audit = context.world.audit
    assert audit.flush(timeout=WAIT_S) is True
    assert audit.close(WAIT_S) is True
    assert audit.closed


@then("no audit database file was created")
def then_no_file(context: Context) -> None:
    world = context.world
    assert not trail_exists(world.database)
    leftovers = sorted(path.name for path in world.root.iterdir())
    assert leftovers == [], f"files were created: {leftovers}"


@then("the audit service started no writer thread")
def then_no_writer_started(context: Context) -> None:
    stats = context.world.audit.stats()
    assert not stats.writer_alive, stats
    assert (stats.accepted, stats.written, stats.batches) == (0, 0, 0), stats
