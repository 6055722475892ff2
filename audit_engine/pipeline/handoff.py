"""The bounded hand-off queue between callers and the writer thread.

One consumer that takes whole batches: the writer sleeps until the first entry arrives, then
until a batch is full, the flush interval has passed, or someone asks for a commit — so a busy
caller wakes the writer once per batch, not once per entry (every wake-up costs the caller the
GIL). Entries are counted as they go in, under the queue's lock, so ``enqueued`` is the exact
position of the last entry: what ``flush()`` waits for. Closing is a flag under the same lock, so
"not closed" and "appended" are one step — nothing lands after a drain began — at the cost of
one lock per entry, not two.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from audit_engine.errors import AuditServiceClosed

_NOT_WAITING = sys.maxsize


class HandoffQueue:
    """A bounded FIFO of entries with batch-sized wake-ups for its one consumer."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.enqueued = 0
        self.max_depth = 0
        self._items: deque[Any] = deque()
        self._mutex = threading.Lock()
        self._not_empty = threading.Condition(self._mutex)  # the consumer waits here
        self._not_full = threading.Condition(self._mutex)  # producers wait here for room
        # How many waiting entries wake the consumer; "never" while it is not waiting at all
        # (busy writing), so producers skip the notify (~0.5 µs each) — it looks at the queue,
        # under this lock, before it waits again.
        self._wanted = _NOT_WAITING
        self._woken = False
        self.closed = False

    def depth(self) -> int:
        """Entries waiting now."""
        with self._mutex:
            return len(self._items)

    def offer(self, item: Any) -> int:
        """Append an entry if there is room; never blocks.

        Returns the entry's position (1-based, what :attr:`enqueued` counts), or 0 when the queue
        is full. Raises :class:`AuditServiceClosed` once :meth:`close` was called.
        """
        with self._mutex:
            if self.closed:
                raise AuditServiceClosed("the audit service is closed")
            depth = len(self._items)
            if depth >= self.capacity:
                return 0
            self._items.append(item)
            self.enqueued += 1
            depth += 1
            if depth > self.max_depth:
                self.max_depth = depth
            if depth >= self._wanted:
                self._not_empty.notify()
            return self.enqueued

    def offer_many(self, items: Sequence[Any]) -> int:
        """Append all of ``items``, next to each other, if there is room for all; never blocks.

        Returns the last one's position (the first's is ``position - len(items) + 1``), or 0 when
        there is not room for all of them. More than :attr:`capacity` items go only into an empty
        queue, which then holds more than its capacity until the writer takes them (a bulk import
        is all or none: cutting it would break that). Raises :class:`AuditServiceClosed` once
        :meth:`close` was called.
        """
        with self._mutex:
            if self.closed:
                raise AuditServiceClosed("the audit service is closed")
            if not self._has_room(len(items)):
                return 0
            self._items.extend(items)
            self.enqueued += len(items)
            depth = len(self._items)
            if depth > self.max_depth:
                self.max_depth = depth
            if depth >= self._wanted:
                self._not_empty.notify()
            return self.enqueued

    def _has_room(self, count: int) -> bool:
        # Called under the lock. An empty queue takes any number (see offer_many).
        return len(self._items) + count <= self.capacity or not self._items

    def close(self) -> None:
        """Accept nothing more; producers waiting for room wake up (and find it closed)."""
        with self._mutex:
            self.closed = True
            self._not_full.notify_all()

    def wait_for_room(self, timeout: float, count: int = 1) -> bool:
        """Wait up to ``timeout`` seconds until ``count`` entries could be offered together (or
        the queue closed).

        True if there is room.
        """
        with self._not_full:
            return self._not_full.wait_for(
                lambda: self.closed or self._has_room(count), timeout
            ) and self._has_room(count)

    def wake(self) -> None:
        """Make the consumer look at its ``urgent`` condition now (flush, close)."""
        with self._mutex:
            self._woken = True
            self._not_empty.notify()

    def take(self, max_n: int, fill_s: float, urgent: Callable[[], bool]) -> list[Any]:
        """Wait for a batch: up to ``max_n`` entries, at most ``fill_s`` after the first one.

        Returns at once with what is there when ``urgent()`` (checked under the lock, after every
        wake-up); returns an empty list when woken with nothing queued.
        """
        with self._mutex:
            items = self._items
            while not items:
                if self._woken or urgent():
                    self._woken = False
                    self._wanted = _NOT_WAITING
                    return []
                self._wanted = 1
                self._not_empty.wait()
            deadline = time.monotonic() + fill_s
            self._wanted = max_n
            while len(items) < max_n and not self._woken and not urgent():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._not_empty.wait(remaining)
            self._wanted = _NOT_WAITING
            self._woken = False
            batch = [items.popleft() for _ in range(min(max_n, len(items)))]
            self._not_full.notify_all()
            return batch

    def drain(self) -> list[Any]:
        """Take everything that is queued, at once."""
        with self._mutex:
            batch = list(self._items)
            self._items.clear()
            self._not_full.notify_all()
            return batch
