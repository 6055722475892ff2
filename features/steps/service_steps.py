"""Steps shared by most features: start a service, record, flush, close, hold a lock, look."""

from behave import given, then, when
from behave.runner import Context

from audit_engine import AuditServiceClosed

WAIT_S = 10.0


def _settings_table(context: Context) -> dict[str, str]:
    assert context.table is not None, "this step needs a | setting | value | table"
    return {row["setting"]: row["value"] for row in context.table}


# -- starting the service ---------------------------------------------------------------------


@given("the tool's audit settings are:")
def given_settings(context: Context) -> None:
    context.world.settings_values.update(_settings_table(context))


@given("a tool with an audit service")
def given_service(context: Context) -> None:
    context.world.open_service()


@given("a tool with an audit service configured with:")
def given_configured_service(context: Context) -> None:
    context.world.settings_values.update(_settings_table(context))
    context.world.open_service()


@given("the tool has started its audit service")
def given_started(context: Context) -> None:
    context.world.open_service()


# -- another program's lock -------------------------------------------------------------------


@given("another program holds the audit database's write lock")
def given_lock(context: Context) -> None:
    context.world.hold_write_lock()
    assert context.world.lock_held


@when("the other program releases the write lock")
def when_release(context: Context) -> None:
    context.world.release_write_locks()


@given("the other program will release the write lock in {delay_s:g} seconds")
def given_release_later(context: Context, delay_s: float) -> None:
    context.world.release_locks_later(delay_s)


# -- recording --------------------------------------------------------------------------------


@given("the tool has recorded {count:d} entries")
@when("the tool records {count:d} entries")
def when_record(context: Context, count: int) -> None:
    context.world.record_notes(count)


@when("the tool tries to record an entry")
def when_try_record(context: Context) -> None:
    world = context.world
    world.attempt(lambda: world.record_notes(1)[0])


@then("every recording returned an event id")
def then_all_ids(context: Context) -> None:
    results = context.world.results
    assert results, "nothing was recorded"
    assert all(results), f"some recordings returned no event id: {results}"
    assert len(set(results)) == len(results), "event ids are not unique"


@then("every recording returned an event id while the lock was still held")
def then_ids_while_locked(context: Context) -> None:
    then_all_ids(context)
    assert context.world.lock_held, "the other program's lock is gone"


# -- flush and close --------------------------------------------------------------------------


@given("the tool has flushed the audit trail")
@when("the tool flushes the audit trail")
def when_flush(context: Context) -> None:
    done = context.world.audit.flush(timeout=WAIT_S)
    assert done, f"flush() did not finish within {WAIT_S}s: {context.world.audit.stats()}"


@given("the tool has closed the audit service")
@when("the tool closes the audit service")
def when_close(context: Context) -> None:
    world = context.world
    world.close_results.append(world.audit.close(WAIT_S))
    assert world.close_results[-1], f"close() could not drain: {world.audit.stats()}"


@when("the tool closes the audit service again")
def when_close_again(context: Context) -> None:
    world = context.world
    world.attempt(lambda: world.audit.close(WAIT_S))
    assert world.error is None, f"the second close() raised {world.error!r}"
    world.close_results.append(world.returned)


@then("closing reported success both times")
def then_closed_twice(context: Context) -> None:
    assert context.world.close_results == [True, True], context.world.close_results


@then("recording is refused because the audit service is closed")
def then_refused_closed(context: Context) -> None:
    error = context.world.error
    assert isinstance(error, AuditServiceClosed), f"expected AuditServiceClosed, got {error!r}"
    assert "closed" in str(error)


@then("the audit service is closed")
def then_service_closed(context: Context) -> None:
    assert context.world.audit.closed


@then("the audit writer has stopped")
def then_writer_stopped(context: Context) -> None:
    stats = context.world.audit.stats()
    assert not stats.writer_alive, stats


@then("the audit writer is still running")
def then_writer_running(context: Context) -> None:
    stats = context.world.audit.stats()
    assert stats.writer_alive, stats


# -- what the database holds ------------------------------------------------------------------


def _event_ids(context: Context) -> list[str]:
    return [row["event_id"] for row in context.world.audit_rows()]


@then("the audit database holds no entries yet")
@then("the audit database holds no entries")
def then_no_entries(context: Context) -> None:
    rows = context.world.audit_rows()
    assert rows == [], f"expected no audit entries, found {len(rows)}"


@then("the audit database holds {count:d} entries")
def then_count(context: Context, count: int) -> None:
    found = len(context.world.audit_rows())
    assert found == count, f"expected {count} audit entries, found {found}"


@then("the audit database holds exactly the recorded entries")
def then_exactly_recorded(context: Context) -> None:
    accepted = context.world.accepted
    assert accepted, "the tool recorded nothing"
    stored = _event_ids(context)
    assert sorted(stored) == sorted(accepted), (
        f"stored {len(stored)} entries, recorded {len(accepted)}; "
        f"missing {set(accepted) - set(stored)}, unexpected {set(stored) - set(accepted)}"
    )


@then("the audit database holds the recorded entries in recording order")
def then_in_order(context: Context) -> None:
    accepted = context.world.accepted
    assert accepted, "the tool recorded nothing"
    stored = _event_ids(context)
    assert stored == accepted, "the stored order differs from the recording order"


@then("the service reports {count:d} accepted entries")
def then_accepted_count(context: Context, count: int) -> None:
    stats = context.world.audit.stats()
    assert stats.accepted == count, stats
