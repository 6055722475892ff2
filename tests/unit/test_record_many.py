"""``record_many()`` (#15 item 5): every entry validated first, then all accepted or none, in one
hand-off of the service's write mode; event ids in input order, None where an entry was left out.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trails
from support import locked

from audit_engine import (
    AuditEntry,
    AuditQueueFull,
    AuditService,
    AuditServiceClosed,
    AuditStore,
    AuditWriteError,
    InvalidEntryError,
)
from audit_engine.pipeline.handoff import HandoffQueue

MakeService = Callable[..., AuditService]


def _stored(database: Path | str) -> list[tuple[int, str, str]]:
    return [
        (row[0], row[1], row[2])
        for row in trails.query(
            database, "SELECT id, event_id, action FROM audit_entries ORDER BY id"
        )
    ]


def _verified(database: Path | str) -> int:
    with contextlib.closing(AuditStore(database)) as store:
        report = store.verify(min_retention=timedelta(0))
    assert report.ok, report
    return report.rows_checked


# -- what it takes and returns ------------------------------------------------------------------


def test_models_and_dicts_are_recorded_in_input_order_next_to_each_other(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service()
    service.record(action="before", event_id="b")
    ids = service.record_many(
        [
            {"action": "import.row", "event_id": "r1", "details": {"n": 1}},
            AuditEntry(action="import.row", event_id="r2", actor="bob"),
            {"action": "import.row", "event_id": "r3"},
        ]
    )
    service.record(action="after", event_id="a")
    assert ids == ["r1", "r2", "r3"]
    assert service.flush(10)
    stored = _stored(db_path)
    assert [event_id for _, event_id, _ in stored] == ["b", "r1", "r2", "r3", "a"]
    assert _verified(db_path) == 5
    assert service.stats().accepted == 5


def test_an_empty_list_returns_at_once_even_on_a_closed_service(make_service: MakeService) -> None:
    service = make_service()
    service.close()
    assert service.record_many([]) == []
    assert service.record_many(iter(()), connection="not a connection") == []
    assert service.stats().accepted == 0


def test_a_generator_is_read_once(make_service: MakeService, db_path: Path) -> None:
    service = make_service()
    ids = service.record_many({"action": "gen", "event_id": f"g{n}"} for n in range(3))
    assert ids == ["g0", "g1", "g2"]


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (
            AuditEntry(action="one"),
            "record_many() takes an iterable of entries (AuditEntry objects or dicts of "
            "record()'s keywords), got a single AuditEntry: wrap it in a list",
        ),
        (
            {"action": "one"},
            "record_many() takes an iterable of entries (AuditEntry objects or dicts of "
            "record()'s keywords), got a single dict: wrap it in a list",
        ),
        (5, "record_many() takes an iterable of entries, got int"),
        (
            [{"action": "ok"}, ("action", "tuple")],
            "entries[1]: must be an AuditEntry or a dict of record()'s keywords, got tuple",
        ),
    ],
)
def test_anything_but_entries_is_a_type_error(
    make_service: MakeService, entries: Any, message: str
) -> None:
    service = make_service()
    with pytest.raises(TypeError) as raised:
        service.record_many(entries)
    assert str(raised.value) == message
    assert service.stats().accepted == 0


def test_a_closed_service_refuses(make_service: MakeService) -> None:
    service = make_service()
    service.close()
    with pytest.raises(AuditServiceClosed, match=r"^the audit service is closed$"):
        service.record_many([{"action": "late"}])


def test_a_disabled_service_records_nothing(make_service: MakeService) -> None:
    service = make_service(enabled=False)
    assert service.record_many([{"action": "a"}, {"action": "b"}]) == [None, None]


def test_a_bad_connection_is_refused_before_anything(make_service: MakeService) -> None:
    service = make_service()
    with pytest.raises(TypeError, match=r"^record_many\(\) connection must be"):
        service.record_many([{"action": "a"}], connection=object())


# -- validation first: one bad entry, nothing recorded --------------------------------------------


@pytest.mark.parametrize("async_writes", [True, False], ids=["async", "sync"])
def test_one_invalid_entry_names_its_index_and_nothing_is_recorded(
    make_service: MakeService, db_path: Path, async_writes: bool
) -> None:
    service = make_service(async_writes=async_writes, max_details_bytes=100)
    good = [{"action": "ok", "event_id": f"ok{n}"} for n in range(3)]
    with pytest.raises(InvalidEntryError) as raised:
        service.record_many([*good, {"action": ""}])
    assert str(raised.value).startswith(
        "entries[3]: 1 validation error for AuditEntry\naction\n  String should have at least 1"
    )
    assert isinstance(raised.value, ValueError)
    assert isinstance(raised.value.__cause__, ValueError)  # the model's own error
    too_big = r"(?s)^entries\[1\]: 1 validation error.*details is 208 bytes serialised"
    with pytest.raises(InvalidEntryError, match=too_big):
        service.record_many([good[0], {"action": "big", "details": {"x": "y" * 200}}])
    with pytest.raises(TypeError, match=r"^entries\[1\]: must be an AuditEntry"):
        service.record_many([AuditEntry(action="x"), 7])
    assert service.flush(10)
    assert service.stats().accepted == 0
    assert service.stats().written == 0


def test_an_unknown_keyword_in_a_dict_is_the_models_error(make_service: MakeService) -> None:
    service = make_service()
    with pytest.raises(InvalidEntryError, match=r"^entries\[0\]: .*\nbogus\n  Extra inputs"):
        service.record_many([{"action": "x", "bogus": 1}])


def test_an_event_id_given_twice_in_one_call_is_refused(make_service: MakeService) -> None:
    service = make_service()
    with pytest.raises(InvalidEntryError) as raised:
        service.record_many(
            [
                {"action": "a", "event_id": "same"},
                {"action": "b"},
                {"action": "c", "event_id": "same"},
            ]
        )
    assert str(raised.value) == "entries[2]: event_id 'same' is also the event_id of entries[0]"
    assert service.stats().accepted == 0


# -- what record() applies, applied to each -------------------------------------------------------


def test_context_policy_redaction_and_disabled_apply_to_each_entry(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service(level="writes_only", redact_fields=["password"], async_writes=False)
    with service.context(actor="alice", correlation_id="req-1", source="import"):
        ids = service.record_many(
            [
                {"action": "user.create", "operation": "create", "details": {"password": "s"}},
                {"action": "user.read", "operation": "read"},  # filtered by level
                AuditEntry(action="user.delete", operation="delete", actor="bob"),
            ]
        )
        with service.disabled():
            skipped = service.record_many(
                [{"action": "quiet", "operation": "update"}, {"action": "loud", "critical": True}]
            )
    assert [i is None for i in ids] == [False, True, False]
    assert [i is None for i in skipped] == [True, False]
    with contextlib.closing(AuditStore(db_path)) as store:
        entries = {e.action: e for e in store.query()}
    assert set(entries) == {"user.create", "user.delete", "loud"}
    created = entries["user.create"]
    assert (created.actor, created.correlation_id) == ("alice", "req-1")
    assert created.details == {"password": "[REDACTED]", "source": "import"}
    assert entries["user.delete"].actor == "bob"  # the entry's own field wins
    stats = service.stats()
    assert (stats.filtered_by_level, stats.skipped_disabled, stats.accepted) == (1, 1, 3)


def test_a_scope_drops_repeats_within_the_call_and_against_earlier_entries(
    make_service: MakeService,
) -> None:
    service = make_service(async_writes=False)
    with service.scope():
        first = service.record(action="note.read", resource_id="1")
        ids = service.record_many(
            [
                {"action": "note.read", "resource_id": "1"},  # repeats record()'s
                {"action": "note.read", "resource_id": "2"},
                {"action": "note.read", "resource_id": "2"},  # repeats the one before
                {"action": "note.read", "resource_id": "2", "critical": True},  # never dropped
            ]
        )
        again = service.record_many([{"action": "note.read", "resource_id": "2"}])
    assert first is not None
    assert [i is None for i in ids] == [True, False, True, False]
    assert again == [None]  # marked seen once accepted
    assert service.stats().deduplicated == 3


def test_a_scope_marks_nothing_when_the_call_fails(make_service: MakeService) -> None:
    service = make_service(async_writes=False)
    with service.scope():
        with pytest.raises(InvalidEntryError):
            service.record_many([{"action": "note.read"}, {"action": ""}])
        assert service.record_many([{"action": "note.read"}])[0] is not None


# -- the hand-off: one step, all or none ----------------------------------------------------------


def test_sync_mode_writes_all_in_one_transaction_or_none(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service(async_writes=False)
    service.record(action="first", event_id="taken")
    with pytest.raises(AuditWriteError) as raised:
        service.record_many(
            [{"action": "x", "event_id": "new-1"}, {"action": "x", "event_id": "taken"}]
        )
    assert str(raised.value).startswith("could not write 2 audit entries (new-1 to taken): ")
    assert str(raised.value).endswith(
        "; none of the 2 entries of this record_many() call was recorded (one transaction)"
    )
    assert [e for _, e, _ in _stored(db_path)] == ["taken"]  # new-1 rolled back with it
    assert service.record_many([{"action": "y", "event_id": "y1"}, {"action": "y"}])[0] == "y1"
    assert _verified(db_path) == 3
    assert service.stats().written == 3


def test_the_entries_stay_together_while_another_thread_records(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service(buffer_max_size=7)
    stop = threading.Event()

    def chatter() -> None:
        while not stop.is_set():
            service.record(action="other")

    thread = threading.Thread(target=chatter)
    thread.start()
    try:
        ids = service.record_many([{"action": "bulk", "event_id": f"b{n}"} for n in range(50)])
    finally:
        stop.set()
        thread.join(10)
    assert service.flush(10)
    stored = _stored(db_path)
    bulk = [(row_id, event_id) for row_id, event_id, action in stored if action == "bulk"]
    assert [event_id for _, event_id in bulk] == ids
    assert [row_id for row_id, _ in bulk] == list(range(bulk[0][0], bulk[0][0] + 50))
    assert _verified(db_path) == len(stored)


def test_a_full_queue_with_block_waits_then_refuses_them_all(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service(queue_maxsize=5, buffer_max_size=1, block_timeout=0.2)
    with locked(db_path) as lock:
        filled = service.record_many([{"action": "fill"} for _ in range(5)])
        with pytest.raises(AuditQueueFull) as raised:
            service.record_many([{"action": "late", "event_id": f"l{n}"} for n in range(2)])
        lock.release()
        assert service.flush(30)
    assert str(raised.value) == (
        "the audit queue had no room for 2 entries within 0.2s (queue_maxsize=5); none of them "
        "was recorded"
    )
    assert [e for _, e, _ in _stored(db_path)] == filled


def test_more_than_queue_maxsize_wait_for_an_empty_queue(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service(queue_maxsize=3, buffer_max_size=2, block_timeout=30)
    with locked(db_path, release_after=0.2):
        service.record(action="first")
        ids = service.record_many([{"action": "big"} for _ in range(8)])
    assert service.flush(30)
    assert service.stats().max_queue_depth >= 8
    assert [e for _, e, a in _stored(db_path) if a == "big"] == ids


def test_more_than_queue_maxsize_are_refused_saying_why_when_they_cannot_wait(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service(queue_maxsize=3, buffer_max_size=1, block_timeout=0)
    with locked(db_path) as lock:
        service.record(action="fill")
        with pytest.raises(AuditQueueFull) as raised:
            service.record_many([{"action": "big"} for _ in range(4)])
        lock.release()
        assert service.flush(30)
    assert str(raised.value) == (
        "the audit queue had no room for 4 entries within 0.0s (queue_maxsize=3; more than "
        "queue_maxsize entries wait for an empty queue); none of them was recorded"
    )


def test_a_full_queue_with_drop_drops_them_all_and_counts_them(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service(on_full="drop", queue_maxsize=5, buffer_max_size=1)
    with locked(db_path) as lock:
        filled = service.record_many([{"action": "fill"} for _ in range(5)])
        dropped = service.record_many([{"action": "late"} for _ in range(3)])
        lock.release()
        assert service.flush(30)
    assert dropped == [None, None, None]
    assert service.stats().dropped == 3
    assert [e for _, e, _ in _stored(db_path)] == filled


def test_with_drop_a_critical_entry_makes_them_all_wait_then_raise(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service(on_full="drop", queue_maxsize=5, buffer_max_size=1, block_timeout=0.2)
    with locked(db_path) as lock:
        service.record_many([{"action": "fill"} for _ in range(5)])
        with pytest.raises(AuditQueueFull) as raised:
            service.record_many([{"action": "late"}, {"action": "crit", "critical": True}])
        lock.release()
        assert service.flush(30)
    assert "(with a critical entry among them they are never dropped" in str(raised.value)
    assert service.stats().dropped == 0
    assert [a for _, _, a in _stored(db_path)] == ["fill"] * 5


def test_a_full_queue_with_sync_writes_them_here_in_one_transaction(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service(on_full="sync", queue_maxsize=5, buffer_max_size=1)
    with locked(db_path, release_after=0.3):
        service.record_many([{"action": "fill"} for _ in range(5)])
        ids = service.record_many([{"action": "here", "event_id": f"h{n}"} for n in range(3)])
    # Written in this thread: committed before the call returned (the queue may still wait).
    here = [(row_id, e) for row_id, e, a in _stored(db_path) if a == "here"]
    assert [e for _, e in here] == ids
    assert [row_id for row_id, _ in here] == list(range(here[0][0], here[0][0] + 3))
    assert service.flush(30)
    assert _verified(db_path) == 8


def test_critical_entries_are_committed_when_the_call_returns(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service(buffer_flush_interval=60)  # nothing commits by the clock
    ids = service.record_many([{"action": "plain"}, {"action": "crit", "critical": True}])
    assert [e for _, e, _ in _stored(db_path)] == ids


def test_a_critical_entry_set_aside_raises_naming_it(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service()
    service.record(action="x", event_id="taken", critical=True)
    with pytest.raises(AuditWriteError) as raised:
        service.record_many(
            [
                {"action": "x", "event_id": "ok"},
                {"action": "left out", "operation": "read"},  # the policy: not kept
                {"action": "x", "event_id": "taken", "critical": True},
                {"action": "x", "event_id": "ok2", "critical": True},
            ]
        )
    message = str(raised.value)
    # The index is the input's; the event id "ok" is part of "ok2" and of the text: not named.
    assert message.startswith("entries[2]: critical entry taken was not committed: ")
    assert message.endswith(
        "; record_many() queued the call's 3 entries together and the queue does not take them "
        "back: the writer commits or sets aside each one on its own, so the call's other entries "
        "may be in the trail"
    )
    # As the message says: the others went in, the one refused is in the dead-letter file.
    assert service.flush(10)
    assert [e for _, e, _ in _stored(db_path)] == ["taken", "ok", "ok2"]
    assert service.stats().dead_lettered == 1


def test_with_on_full_sync_a_failed_transaction_here_says_none_was_recorded(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service(on_full="sync", queue_maxsize=2, buffer_max_size=1, busy_timeout=0.2)
    with locked(db_path):
        service.record_many([{"action": "fill"}, {"action": "fill"}])
        with pytest.raises(AuditWriteError) as raised:
            service.record_many([{"action": "here"}, {"action": "here", "critical": True}])
    message = str(raised.value)
    assert message.startswith("could not write 2 audit entries (")
    assert message.endswith(
        "; none of the 2 entries of this record_many() call was recorded (one transaction)"
    )
    assert "queue does not take them back" not in message
    assert service.flush(10)
    assert [a for _, _, a in _stored(db_path)] == ["fill", "fill"]


# -- an injected connection: the caller's transaction ---------------------------------------------


@pytest.fixture
def app_conn(trail_db: Path | str) -> Iterator[Any]:
    """The application's own connection to the trail (not autocommit)."""
    if trails.is_pg(trail_db):
        with psycopg.connect(str(trail_db)) as pg:
            yield pg
        return
    lite = sqlite3.connect(trail_db)
    try:
        yield lite
    finally:
        lite.close()


@pytest.mark.parametrize("where", ["call", "service"])
def test_with_a_connection_they_commit_and_roll_back_with_the_callers_transaction(
    trail_db: Path | str, app_conn: Any, where: str
) -> None:
    if where == "service":
        service = AuditService(database=trail_db, connection=app_conn)
        extra: dict[str, Any] = {}
    else:
        service = AuditService(database=trail_db, cleanup_enabled=False)
        extra = {"connection": app_conn}
    try:
        ids = service.record_many(
            [{"action": "kept", "event_id": f"k{n}"} for n in range(3)], **extra
        )
        app_conn.commit()
        service.record_many([{"action": "undone"} for _ in range(2)], **extra)
        app_conn.rollback()
        assert service.stats().accepted == 5  # as record(): counted when written, uncommitted
    finally:
        service.close(timeout=10)
    assert [(e, a) for _, e, a in _stored(trail_db)] == [(i, "kept") for i in ids]
    assert _verified(trail_db) == 3


def test_with_a_connection_a_failing_entry_leaves_none_of_the_call_in_the_transaction(
    db_path: Path, make_service: MakeService
) -> None:
    service = make_service(async_writes=False)
    service.record(action="x", event_id="taken")
    lite = sqlite3.connect(db_path)
    try:
        lite.execute("CREATE TABLE notes (id INTEGER)")
        lite.execute("INSERT INTO notes VALUES (1)")  # the caller's own change, kept below
        with pytest.raises(AuditWriteError) as raised:
            service.record_many(
                [{"action": "a", "event_id": "a1"}, {"action": "a", "event_id": "taken"}],
                connection=lite,
            )
        lite.commit()
        notes = lite.execute("SELECT id FROM notes").fetchall()
    finally:
        lite.close()
    assert str(raised.value).startswith(
        "could not write the 2 audit entries a1 to taken of this record_many() call: "
    )
    assert str(raised.value).endswith(
        "; none of them was written (only the call's own writes were rolled back: the rest of "
        "your transaction is as it was)"
    )
    assert notes == [(1,)]
    assert [e for _, e, _ in _stored(db_path)] == ["taken"]
    assert service.stats().accepted == 1


# -- the queue's put-many -------------------------------------------------------------------------


def test_the_queue_takes_all_or_none_and_a_big_batch_only_when_empty() -> None:
    queue = HandoffQueue(3)
    assert queue.offer_many(["a", "b"]) == 2
    assert queue.offer_many(["c", "d"]) == 0  # room for one only
    assert queue.wait_for_room(0.0, 2) is False
    assert queue.wait_for_room(0.0, 1) is True
    assert queue.offer_many(["c"]) == 3
    assert queue.drain() == (["a", "b", "c"], 3)
    assert queue.offer_many(list("vwxyz")) == 8  # over capacity, into an empty queue
    assert (queue.depth(), queue.max_depth, queue.offer("late")) == (5, 5, 0)
    queue.close()
    with pytest.raises(AuditServiceClosed):
        queue.offer_many(["after"])
