"""Steps for recording from several threads at once."""

import threading

from behave import then, when
from behave.runner import Context

WAIT_S = 10.0


@when("{threads:d} threads of the tool each record {per_thread:d} entries at the same time")
def when_threads_record(context: Context, threads: int, per_thread: int) -> None:
    world = context.world
    audit = world.audit
    start = threading.Barrier(threads, timeout=WAIT_S)
    recorded: dict[str, list[str | None]] = {f"worker-{n}": [] for n in range(threads)}
    failures: list[BaseException] = []

    def work(actor: str) -> None:
        try:
            start.wait()
            for seq in range(per_thread):
                recorded[actor].append(
                    audit.record(
                        action="note.save",
                        actor=actor,
                        operation="update",
                        resource_type="note",
                        resource_id=f"{actor}-note-{seq}",
                        details={"seq": seq},
                    )
                )
        except BaseException as exc:
            failures.append(exc)
            raise

    for actor in recorded:
        thread = threading.Thread(target=work, args=(actor,), name=actor, daemon=True)
        world.threads.append(thread)
        thread.start()
    for thread in world.threads:
        thread.join(WAIT_S)
        assert not thread.is_alive(), f"{thread.name} did not finish within {WAIT_S}s"
    assert not failures, f"recording threads failed: {failures!r}"
    world.recorded_by_thread = recorded


@then("each thread's entries are stored in the order that thread recorded them")
def then_thread_order(context: Context) -> None:
    rows = context.world.audit_rows()
    for actor, recorded in context.world.recorded_by_thread.items():
        assert all(recorded), f"{actor} got no event id for some entries"
        stored = [row for row in rows if row["actor"] == actor]
        assert [row["event_id"] for row in stored] == recorded, f"{actor}'s order differs"
        assert [row["details"]["seq"] for row in stored] == list(range(len(recorded)))


@then("the audit writer needed more than {count:d} transactions")
def then_many_batches(context: Context, count: int) -> None:
    stats = context.world.audit.stats()
    assert stats.batches > count, stats
