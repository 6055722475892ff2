"""Steps for using the service as a context manager."""

from behave import then, when
from behave.runner import Context

from audit_engine import AuditService


class ToolCrashed(RuntimeError):
    """The tool's own failure inside the with-block."""


@when("the tool records {count:d} entries inside a with-block of its audit service")
def when_with_block(context: Context, count: int) -> None:
    world = context.world
    with world.track(AuditService(world.settings())) as audit:
        world.service = audit
        world.record_notes(count)
        assert not audit.closed


@when("the tool records {count:d} entries inside a with-block of its audit service and then fails")
def when_with_block_fails(context: Context, count: int) -> None:
    world = context.world
    crash = ToolCrashed("the tool failed half-way")
    try:
        with world.track(AuditService(world.settings())) as audit:
            world.service = audit
            world.record_notes(count)
            raise crash
    except ToolCrashed as exc:
        world.error = exc
    world.expected_error = crash


@then("the tool's own error comes out of the with-block unchanged")
def then_error_unchanged(context: Context) -> None:
    assert context.world.error is context.world.expected_error, context.world.error


@when("the tool closes the audit service, waiting at most {timeout_s:g} seconds")
def when_close_bounded(context: Context, timeout_s: float) -> None:
    world = context.world
    world.attempt(lambda: world.audit.close(timeout_s))
    assert world.error is None, f"close() raised {world.error!r}"
    # Bounded: the timeout plus the writer's grace to set its batch aside, with room for a slow CI.
    assert world.elapsed_s < timeout_s + 3.0, world.elapsed_s


@then("closing reports that not everything could be committed")
def then_close_incomplete(context: Context) -> None:
    world = context.world
    assert world.returned is False, world.returned
    stats = world.audit.stats()
    # The operator learns where the entries went.
    assert str(world.deadletter_path) in (stats.last_error or ""), stats
    assert not stats.writer_alive, stats


@then("the dead-letter file holds every recorded entry")
def then_all_dead_lettered(context: Context) -> None:
    world = context.world
    letters = [letter["entry"]["event_id"] for letter in world.dead_letters()]
    assert world.accepted, "the tool recorded nothing"
    assert sorted(letters) == sorted(world.accepted), letters
