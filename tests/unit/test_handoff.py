"""The hand-off queue without a lock on the producer's path: positions, bounds and closing.

Races are made deterministic by a deque whose ``append`` runs a hook — what another thread would
do between a producer's first look and its append.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest

from audit_engine.errors import AuditServiceClosed
from audit_engine.pipeline.handoff import HandoffQueue


class _RacingDeque(deque[Any]):
    """Runs ``hook`` right after the next append: another thread acting in that gap."""

    hook: Callable[[], None] | None = None

    def append(self, item: Any) -> None:
        super().append(item)
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()


def _racing(queue: HandoffQueue) -> _RacingDeque:
    items = _RacingDeque(queue._items)
    queue._items = items
    return items


def _raced_full() -> tuple[HandoffQueue, _RacingDeque]:
    """A queue of capacity 2 holding "other" and "a", and a void: "b"'s producer checked for
    room, another producer filled the queue before "b" was appended, so "b" was taken back."""
    queue = HandoffQueue(2)
    items = _racing(queue)
    queue.offer("a")
    # Between this producer's look (room for one) and its append, another one filled the queue.
    items.hook = lambda: items.appendleft("other")
    assert queue.offer("b") is False
    return queue, items


def test_positions_count_every_entry_appended_before_the_read() -> None:
    queue = HandoffQueue(10)
    assert [queue.offer(n) for n in range(3)] == [True, True, True]
    assert queue.enqueued == 3
    assert queue.take(2, 0.0, lambda: True) == ([0, 1], 2)
    assert (queue.enqueued, queue.depth(), queue.max_depth) == (3, 1, 3)
    assert queue.offer_many([3, 4]) == 5


def test_a_producer_raced_past_the_capacity_takes_its_entry_back_and_reports_full() -> None:
    queue, _ = _raced_full()
    assert (queue.depth(), queue.enqueued, queue.max_depth) == (2, 3, 1)
    # The void keeps positions exact: three slots, two entries, all finished by one take.
    assert queue.take(10, 0.0, lambda: True) == (["other", "a"], 3)
    assert (queue.depth(), queue.enqueued) == (0, 3)


def test_a_raced_producer_keeps_its_entry_when_the_writer_made_room_meanwhile() -> None:
    queue = HandoffQueue(2)
    items = _racing(queue)
    queue.offer("a")

    def race() -> None:
        items.appendleft("other")  # over capacity...
        queue.take(1, 0.0, lambda: True)  # ...until the writer takes one

    items.hook = race
    assert queue.offer("b") is True
    assert queue.drain() == (["a", "b"], 2)


def test_an_entry_appended_as_the_queue_closes_is_refused_loudly_not_lost() -> None:
    queue = HandoffQueue(5)
    items = _racing(queue)
    items.hook = queue.close  # closed between the first look and the append
    with pytest.raises(AuditServiceClosed):
        queue.offer("late")
    assert queue.drain() == ([], 1)  # its slot is a void: nobody writes it


def test_an_entry_the_writer_took_before_the_close_counts_as_accepted() -> None:
    queue = HandoffQueue(5)
    items = _racing(queue)

    def close_after_taking() -> None:
        queue.drain()  # the writer's last drain took it...
        queue.close()  # ...then the queue closed

    items.hook = close_after_taking
    assert queue.offer("taken") is True


def test_offer_after_close_raises_and_a_full_queue_says_false() -> None:
    queue = HandoffQueue(1)
    assert queue.offer("a") is True
    assert queue.offer("b") is False
    queue.close()
    with pytest.raises(AuditServiceClosed):
        queue.offer("c")


def test_voids_do_not_count_as_waiting_entries() -> None:
    queue, _ = _raced_full()
    assert queue.wait_for_room(0.0) is False  # two entries wait: full
    assert queue.take(1, 0.0, lambda: True) == (["other"], 1)
    assert queue.wait_for_room(0.0) is True
    assert queue.offer_many(["c"]) == 4  # positions: other, a, void, c


def test_a_waiting_writer_is_woken_by_the_first_entry() -> None:
    queue = HandoffQueue(10)
    taken: list[tuple[list[Any], int]] = []
    waiting = threading.Event()

    def consumer() -> None:
        waiting.set()
        taken.append(queue.take(1, 5.0, lambda: False))

    thread = threading.Thread(target=consumer)
    thread.start()
    waiting.wait(5)
    queue.offer("first")
    thread.join(10)
    assert not thread.is_alive()
    assert taken == [(["first"], 1)]


def test_many_producers_keep_every_entry_exactly_once_within_capacity() -> None:
    queue = HandoffQueue(50)
    per_thread, producers = 2000, 4
    got: list[Any] = []
    done = threading.Event()

    def consumer() -> None:
        while not done.is_set() or queue.depth():
            batch, _ = queue.take(64, 0.001, done.is_set)
            got.extend(batch)

    def producer(n: int) -> None:
        for i in range(per_thread):
            while not queue.offer((n, i)):
                queue.wait_for_room(1.0)

    reader = threading.Thread(target=consumer)
    reader.start()
    writers = [threading.Thread(target=producer, args=(n,)) for n in range(producers)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join(60)
    done.set()
    queue.wake()
    reader.join(60)
    assert not reader.is_alive()
    assert sorted(got) == [(n, i) for n in range(producers) for i in range(per_thread)]
    for n in range(producers):  # each producer's entries in its own order
        assert [i for m, i in got if m == n] == list(range(per_thread))
    assert queue.max_depth <= 50
    assert queue.enqueued >= producers * per_thread


def test_void_slots_never_make_the_queue_refuse_an_entry_it_has_room_for() -> None:
    queue = HandoffQueue(2)
    items = _racing(queue)
    queue.offer("a")
    items.hook = lambda: items.appendleft("other")
    assert queue.offer("b") is False  # ["other", "a", void]: two entries wait, full
    assert queue.take(2, 0.0, lambda: True) == (["other", "a"], 2)
    # Only the void is left: it looks like one slot used, but the queue is empty.
    assert (queue.depth(), len(queue._items)) == (0, 1)
    assert queue.wait_for_room(0.0) is True
    assert queue.offer("c") is True
    assert queue.offer("d") is True  # room for two: the void does not count
    assert queue.offer("e") is False
    assert queue.max_depth == 2
    assert queue.drain() == (["c", "d"], 3)


def test_accepted_leaves_out_entries_taken_back() -> None:
    queue, items = _raced_full()
    assert (queue.accepted, queue.enqueued) == (2, 3)  # "other" and "a"; "b" was refused
    items.hook = queue.close
    queue.take(3, 0.0, lambda: True)
    with pytest.raises(AuditServiceClosed):
        queue.offer("late")
    assert (queue.accepted, queue.enqueued) == (2, 4)


def test_a_queue_looking_full_still_refuses_once_closed() -> None:
    # What offer() does when the queue closes between its first look and its look under the lock.
    queue = HandoffQueue(1)
    queue.offer("a")
    queue.close()
    with pytest.raises(AuditServiceClosed):
        queue._offer_locked("b")
