"""The bounded hand-off queue between callers and the writer thread.

Built on ``queue.Queue``'s lock and conditions (so the consumer blocks in ``get()`` without
polling), with two additions: entries are counted as they go in, under the queue's own lock, and
wake markers can be added without taking an entry's room.
"""

from __future__ import annotations

import queue
from typing import Any


class Wake:
    """Marker put on the queue to wake the writer (flush, close); never written."""


WAKE = Wake()


class HandoffQueue(queue.Queue[Any]):
    """A bounded FIFO of entries for one consumer, built on ``queue.Queue``'s lock and conditions.

    Entries go in through :meth:`offer`, which counts them under the queue's own lock: that makes
    ``enqueued`` the exact position of the last entry, which is what ``flush()`` waits for. Wake
    markers (:meth:`wake`) ride along without taking an entry's room. The consumer uses the
    ordinary ``get()`` / ``get_nowait()``.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__()  # unbounded underneath: offer() enforces the capacity for entries
        self.capacity = capacity
        self.enqueued = 0
        self.max_depth = 0
        self.markers = 0

    def depth(self) -> int:
        """Entries waiting now (wake markers not counted)."""
        with self.mutex:
            return len(self.queue) - self.markers

    def _has_room(self) -> bool:
        return len(self.queue) - self.markers < self.capacity

    def offer(self, item: Any) -> bool:
        """Append an entry if there is room; never blocks."""
        with self.mutex:
            if not self._has_room():
                return False
            self.queue.append(item)
            self.enqueued += 1
            depth = len(self.queue) - self.markers
            if depth > self.max_depth:
                self.max_depth = depth
            self.unfinished_tasks += 1
            self.not_empty.notify()
            return True

    def _get(self) -> Any:
        item = self.queue.popleft()
        if item is WAKE:
            self.markers -= 1
        return item

    def wake(self) -> None:
        """Wake a consumer blocked in get(), even when the queue is full; one marker at a time."""
        with self.mutex:
            if self.markers:
                return  # one pending marker wakes the writer as well as several would
            self.queue.append(WAKE)
            self.markers += 1
            self.unfinished_tasks += 1
            self.not_empty.notify()

    def wait_for_room(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until an entry could be offered; True if there is room."""
        with self.not_full:
            return self.not_full.wait_for(self._has_room, timeout)
