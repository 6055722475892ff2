"""Steps for retention: a trail recorded over time, purges, batches, anchors and dry runs."""

from datetime import UTC, datetime, timedelta
from typing import Any

from behave import given, then, when
from behave.runner import Context
from trail_backend import query

from audit_engine import AuditStore, AuditStoreError

WAIT_S = 10.0


def _query(context: Context, sql: str) -> list[tuple[Any, ...]]:
    return query(context.world.database, sql)


# -- the trail --------------------------------------------------------------------------------


@given("an audit trail recorded in this order:")
def given_trail(context: Context) -> None:
    assert context.table is not None, "this step needs an | entries | recorded | table"
    for row in context.table:
        context.world.write_entries(int(row["entries"]), row["recorded"])


@when("the tool starts its audit service and records {count:d} entries")
def when_service_records(context: Context, count: int) -> None:
    world = context.world
    world.open_service()
    world.record_notes(count)
    assert world.audit.flush(timeout=WAIT_S), f"flush() timed out: {world.audit.stats()}"


@then("the remaining entries are entries {first:d} to {last:d}")
def then_remaining(context: Context, first: int, last: int) -> None:
    ids = [row["id"] for row in context.world.audit_rows()]
    assert ids == list(range(first, last + 1)), f"expected entries {first}..{last}, found {ids}"


def _older_than_90_days(context: Context) -> int:
    cutoff = datetime.now(UTC) - timedelta(days=90)
    rows = context.world.audit_rows()
    return sum(1 for row in rows if datetime.fromisoformat(row["timestamp"]) < cutoff)


@then("no remaining entry is older than 90 days")
def then_none_old(context: Context) -> None:
    found = _older_than_90_days(context)
    assert found == 0, f"{found} entries older than 90 days remain"


@then("{count:d} remaining entry is older than 90 days")
def then_some_old(context: Context, count: int) -> None:
    found = _older_than_90_days(context)
    assert found == count, f"expected {count} entries older than 90 days, found {found}"


# -- purging ----------------------------------------------------------------------------------


def _purge(context: Context, days: int, batch_size: int | None = None, **kwargs: Any) -> None:
    world = context.world
    with AuditStore(world.database) as store:
        world.purge_report = store.purge(timedelta(days=days), batch_size=batch_size, **kwargs)


@when("the operator purges entries older than {days:d} days")
def when_purge(context: Context, days: int) -> None:
    _purge(context, days)


@when("the operator purges entries older than {days:d} days in batches of {size:d}")
def when_purge_batches(context: Context, days: int, size: int) -> None:
    _purge(context, days, size)


@when("the operator asks what a purge of entries older than {days:d} days would delete")
def when_dry_run(context: Context, days: int) -> None:
    _purge(context, days, dry_run=True)


@when("the operator tries to purge entries older than {days:d} days in batches of {size:d}")
def when_try_purge(context: Context, days: int, size: int) -> None:
    world = context.world
    world.attempt(lambda: _purge(context, days, size))


@when("the background cleanup has completed its first run")
def when_cleanup_ran(context: Context) -> None:
    audit = context.world.audit
    # The cleanup thread reports its runs only as a counter: nothing to wait on but that.
    context.world.wait_until(
        lambda: audit.stats().cleanup_runs >= 1, "the background cleanup has run once"
    )


@then("the purge reports {count:d} entries deleted")
def then_purged(context: Context, count: int) -> None:
    report = context.world.purge_report
    assert not report.dry_run, report
    assert report.rows_deleted == count, f"expected {count} entries deleted: {report}"


@then("the purge reports {count:d} entries deleted in {batches:d} batches")
def then_purged_in_batches(context: Context, count: int, batches: int) -> None:
    then_purged(context, count)
    report = context.world.purge_report
    assert report.batches == batches, f"expected {batches} batches: {report}"


@then("the dry run reports {count:d} entries")
def then_dry_run(context: Context, count: int) -> None:
    report = context.world.purge_report
    assert report.dry_run, report
    assert (report.rows_deleted, report.batches) == (count, 0), report


@then("the service reports {count:d} entries purged")
def then_service_purged(context: Context, count: int) -> None:
    stats = context.world.audit.stats()
    assert stats.rows_purged == count, stats


@then(
    "the cleanup-runs table records one run that deleted {count:d} entries in {batches:d} batches"
)
def then_cleanup_run(context: Context, count: int, batches: int) -> None:
    runs = _query(context, "SELECT rows_deleted, batches FROM audit_cleanup_runs")
    assert runs == [(count, batches)], f"cleanup runs recorded: {runs}"


@then("the purge left one anchor at entry {entry:d}")
def then_anchor(context: Context, entry: int) -> None:
    anchors = _query(context, "SELECT last_deleted_id, last_deleted_hash FROM audit_anchors")
    assert [anchor[0] for anchor in anchors] == [entry], f"anchors recorded: {anchors}"
    # The anchor holds the purged entry's own hash: the first remaining entry links to it.
    first = _query(context, "SELECT prev_hash FROM audit_entries ORDER BY id LIMIT 1")
    if first:
        assert first[0][0] == anchors[0][1], "the first remaining entry does not link to the anchor"


@then("no purge anchor and no cleanup run were recorded")
def then_no_evidence(context: Context) -> None:
    anchors = _query(context, "SELECT count(*) FROM audit_anchors")[0][0]
    runs = _query(context, "SELECT count(*) FROM audit_cleanup_runs")[0][0]
    assert (anchors, runs) == (0, 0), f"{anchors} anchors and {runs} cleanup runs recorded"


@then('the purge is refused with the message "{message}"')
def then_purge_refused(context: Context, message: str) -> None:
    error = context.world.error
    assert isinstance(error, AuditStoreError), f"expected AuditStoreError, got {error!r}"
    assert str(error) == message, f"the message was {str(error)!r}"


# -- what remains still proves itself ---------------------------------------------------------


@then("the audit trail verifies, checking {count:d} entries")
def then_verifies(context: Context, count: int) -> None:
    report = context.world.verify_trail()
    assert report.ok, report
    assert report.rows_checked == count, report


@then(
    "the audit trail verifies with a minimum retention of {days:d} days, checking {count:d} entries"
)
def then_verifies_with_minimum(context: Context, days: int, count: int) -> None:
    with AuditStore(context.world.database) as audit_store:
        report = audit_store.verify(min_retention=timedelta(days=days))
    assert report.ok, report
    assert report.rows_checked == count, report


@then("the audit trail verifies against the published head, checking {count:d} entries")
def then_verifies_against_head(context: Context, count: int) -> None:
    report = context.world.verify_trail(context.world.published_head)
    assert report.ok, report
    assert report.rows_checked == count, report


@then("the audit trail no longer verifies against the published head, whose entry was purged")
def then_published_head_purged(context: Context) -> None:
    # A published head must still be a row: an anchor only claims what it replaced.
    head = context.world.published_head
    report = context.world.verify_trail(head)
    assert not report.ok, report
    assert report.first_bad_id == head.id, report
    assert report.reason is not None
    assert report.reason.startswith(f"row {head.id}, the expected head, is gone"), report


@then("the chain head is still entry {entry:d}, the same as the published head")
def then_head_kept(context: Context, entry: int) -> None:
    with AuditStore(context.world.database) as store:
        head = store.head()
    assert head is not None, "the purged trail has no head"
    assert head.id == entry, head
    assert head == context.world.published_head, (head, context.world.published_head)
