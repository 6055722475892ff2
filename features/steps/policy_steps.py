"""Steps for the audit policy: levels, exclusions, sampling, the policy's counters and settings."""

import os
from typing import Any

from behave import then, when
from behave.runner import Context

from audit_engine import AuditService, SettingsError

WAIT_S = 10.0
_WRITES = ("create", "update", "delete")


def _names(text: str) -> list[str]:
    """A comma-separated list from a step; "nothing" is the empty list."""
    if text.strip() == "nothing":
        return []
    return [name.strip() for name in text.split(",")]


# -- recording --------------------------------------------------------------------------------


@when("the tool records these actions:")
def when_record_actions(context: Context) -> None:
    """A table with action and operation, and optionally resource, id and outcome."""
    world = context.world
    assert context.table is not None, "this step needs an | action | operation | table"
    for row in context.table:
        cells = {name: row[name] for name in row.headings}
        fields: dict[str, Any] = {"action": cells["action"], "operation": cells["operation"]}
        if cells.get("resource"):
            fields["resource_type"] = cells["resource"]
        if cells.get("id"):
            fields["resource_id"] = cells["id"]
        if cells.get("outcome"):
            fields["outcome"] = cells["outcome"]
        world.record_labelled(cells["action"], **fields)


@when('the tool records a create, a read, an update and a delete of note "{note_id}"')
def when_record_crud(context: Context, note_id: str) -> None:
    for operation in ("create", "read", "update", "delete"):
        context.world.record_labelled(
            operation,
            action=f"note.{operation}",
            operation=operation,
            resource_type="note",
            resource_id=note_id,
        )


@when("the tool performs {total:d} operations, one write after every {reads:d} reads")
def when_read_heavy(context: Context, total: int, reads: int) -> None:
    world = context.world
    world.operations_performed = total
    for index in range(total):
        is_write = index % (reads + 1) == reads
        operation = _WRITES[index % len(_WRITES)] if is_write else "read"
        world.record_labelled(
            operation,
            action=f"note.{operation}",
            operation=operation,
            resource_type="note",
            resource_id=f"note-{index}",
            details={"seq": index},
        )


# -- what recording returned ------------------------------------------------------------------


@then("only these recordings returned an event id: {labels}")
def then_only_these_returned_ids(context: Context, labels: str) -> None:
    recorded = context.world.labelled
    assert recorded, "nothing was recorded"
    expected = _names(labels)
    unknown = set(expected) - {label for label, _ in recorded}
    assert not unknown, f"never recorded: {sorted(unknown)}"
    for label, result in recorded:
        if label in expected:
            assert result, f"recording {label} returned {result!r}, expected an event id"
        else:
            assert result is None, f"recording {label} returned {result!r}, expected None"


@then("the audit database holds these operations in order: {operations}")
def then_operations_in_order(context: Context, operations: str) -> None:
    expected = _names(operations)
    found = [row["operation"] for row in context.world.audit_rows()]
    assert found == expected, f"stored {found}, expected {expected}"


@then("every stored entry is a write")
def then_only_writes_stored(context: Context) -> None:
    rows = context.world.audit_rows()
    assert rows, "nothing is stored"
    reads = [row for row in rows if row["operation"] not in _WRITES]
    assert not reads, f"{len(reads)} stored entries are not writes, e.g. {reads[0]}"


@then("at most {percent:d} % of the operations are in the audit database")
def then_at_most_percent(context: Context, percent: int) -> None:
    world = context.world
    stored = len(world.audit_rows())
    total = world.operations_performed
    assert 0 < stored * 100 <= total * percent, f"{stored} of {total} operations are stored"


# -- the policy's counters --------------------------------------------------------------------


@then("the service's statistics show:")
def then_statistics(context: Context) -> None:
    assert context.table is not None, "this step needs a | counter | value | table"
    stats = context.world.audit.stats()
    for row in context.table:
        counter, expected = row["counter"], int(row["value"])
        assert hasattr(stats, counter), f"stats() has no counter {counter!r}"
        found = getattr(stats, counter)
        assert found == expected, f"{counter} is {found}, expected {expected}: {stats}"


# -- sampling ---------------------------------------------------------------------------------


@when(
    "two freshly started audit services each record reads"
    ' with the event ids "read-1" to "read-{last:d}"'
)
def when_two_services_sample(context: Context, last: int) -> None:
    world = context.world
    world.sampling_runs = []
    for name in ("first", "second"):
        database = world.root / f"{name}.db"
        audit = world.track(AuditService(world.settings(database=database)))
        returned = []
        for number in range(1, last + 1):
            result = audit.record(
                event_id=f"read-{number}",
                action="note.open",
                actor="alice",
                operation="read",
                resource_type="note",
                resource_id=f"note-{number}",
            )
            returned.append(result)
        assert audit.close(WAIT_S), f"close() could not drain: {audit.stats()}"
        kept = [event_id for event_id in returned if event_id is not None]
        stored = [row["event_id"] for row in world.audit_rows(database)]
        assert stored == kept, f"{name}: stored {stored}, record() returned {kept}"
        world.sampling_runs.append((kept, audit.stats(), last))


@then("both services kept the same event ids")
def then_same_sampling(context: Context) -> None:
    (first, _, _), (second, _, _) = context.world.sampling_runs
    assert first == second, f"first kept {first}, second kept {second}"


@then("some reads were kept and the others were counted as sampled out")
def then_some_sampled(context: Context) -> None:
    for kept, stats, total in context.world.sampling_runs:
        assert 0 < len(kept) < total, f"kept {len(kept)} of {total}: not a sample"
        assert stats.sampled_out == total - len(kept), stats
        assert stats.written == len(kept), stats


# -- the policy from the environment ----------------------------------------------------------


def _shown(value: object) -> str:
    """A setting's value as an operator writes it in AUDIT_TRAIL_* variables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value)
    return str(value)


@when("the tool starts its audit service from the environment")
def when_start_from_environment(context: Context) -> None:
    world = context.world
    if isinstance(world.database, str):
        # On the team's server the deployment names the database; everything else stays default.
        os.environ["AUDIT_TRAIL_DATABASE"] = world.database
    world.attempt(lambda: world.track(AuditService()))
    if world.error is None:
        world.service = world.returned
        if isinstance(world.database, str):
            assert world.service.settings.database == world.database
        else:
            # Started in the scenario's folder: the default audit.db is the one the steps read.
            assert world.service.settings.database.resolve() == world.database.resolve()


@then("the tool's audit policy is:")
def then_policy(context: Context) -> None:
    world = context.world
    assert world.error is None, f"the service did not start: {world.error!r}"
    assert context.table is not None, "this step needs a | setting | value | table"
    settings, policy = world.audit.settings, world.audit.policy
    for row in context.table:
        setting, expected = row["setting"], row["value"]
        found = _shown(getattr(settings, setting))
        assert found == expected, f"setting {setting} is {found!r}, expected {expected!r}"
        if hasattr(policy, setting):  # the policy the service applies, not only the setting
            applied = _shown(getattr(policy, setting))
            assert applied == expected, f"policy {setting} is {applied!r}, expected {expected!r}"


@then("details keys named {names} are redacted by default")
def then_default_redaction(context: Context, names: str) -> None:
    fields = {name.lower() for name in context.world.audit.policy.redact_fields}
    missing = [name for name in _names(names.replace(" and ", ", ")) if name not in fields]
    assert not missing, f"not redacted by default: {missing} (redact_fields={sorted(fields)})"


@then('the tool fails to start with a settings error that says "{text}"')
def then_startup_fails(context: Context, text: str) -> None:
    world = context.world
    assert isinstance(world.error, SettingsError), f"expected SettingsError, got {world.error!r}"
    assert text in str(world.error), f"{text!r} is not in {str(world.error)!r}"
    assert world.service is None, "an audit service was started anyway"
