"""The bounded hand-off queue between callers and the writer thread.

One consumer that takes whole batches: the writer sleeps until the first entry arrives, then
until a batch is full, the flush interval has passed, or someone asks for a commit — so a busy
caller wakes the writer once per batch, not once per entry (every wake-up costs the caller the
GIL).

Producers take no lock on the common path: ``deque.append`` is one step under the GIL, and so is
every read they make. A mutex per entry made a convoy with several producer threads — one
preempted while holding it blocked all others, and each hand-over of the lock then waited for a
hand-over of the GIL (caller p99 of 1-2 ms at 4 threads). The lock is taken only to wake the
writer, to close, and on the rare paths below; everything the consumer does is under it.

* **Positions.** The consumer counts the slots it took (``_taken``, under the lock), so
  ``_taken + len(items)``, read under the lock, counts every entry appended before the read:
  :attr:`enqueued` — the position ``flush()`` waits for. Taken slots are finished in order.
* **Bounded.** A producer checks for room before appending and looks at the depth again after:
  if other producers raced it past ``capacity``, or the queue was closed meanwhile, it settles
  under the lock — keeps its entry if there is room (or the writer already took it), else
  replaces it by a void slot and reports a full queue (or raises: closed). A void keeps every
  position handed out exact; the consumer skips it and counts it as finished. Nothing accepted
  is ever taken back: a producer learns its entry's fate before ``offer`` returns.
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


class _Void:
    """A slot whose entry its producer took back before anyone accepted it."""

    __slots__ = ()


_VOID = _Void()


class HandoffQueue:
    """A bounded FIFO of entries with batch-sized wake-ups for its one consumer."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # The most entries seen waiting (by a producer, right after its append). Updated
        # without the lock: two producers racing may leave the lower of their two depths.
        self.max_depth = 0
        self._items: deque[Any] = deque()
        self._taken = 0  # slots the consumer took off, voids included (under _mutex)
        self._voids = 0  # void slots still in _items (under _mutex)
        self._voided = 0  # void slots ever made (under _mutex): not accepted entries
        self._mutex = threading.Lock()
        self._not_empty = threading.Condition(self._mutex)  # the consumer waits here
        self._not_full = threading.Condition(self._mutex)  # producers wait here for room
        # How many waiting entries wake the consumer; "never" while it is not waiting at all
        # (busy writing), so producers skip the lock and the notify — the consumer sets it
        # before it looks at the queue, so a producer either sees it or is seen.
        self._wanted = _NOT_WAITING
        self._woken = False
        self.closed = False

    @property
    def enqueued(self) -> int:
        """Position of the last entry appended so far (1-based; what ``flush()`` waits for)."""
        with self._mutex:
            return self._taken + len(self._items)

    @property
    def accepted(self) -> int:
        """Entries accepted so far: every slot but the void ones."""
        with self._mutex:
            return self._taken + len(self._items) - self._voided

    def depth(self) -> int:
        """Entries waiting now."""
        with self._mutex:
            return len(self._items) - self._voids

    def offer(self, item: Any) -> bool:
        """Append an entry if there is room; never blocks (and takes no lock, as a rule).

        True if it was accepted, False when the queue is full. Raises
        :class:`AuditServiceClosed` once :meth:`close` was called.
        """
        if self.closed:
            raise AuditServiceClosed("the audit service is closed")
        items = self._items
        if len(items) >= self.capacity:
            return self._offer_locked(item)  # full, or void slots make it look full
        items.append(item)
        depth = len(items)
        if depth > self.capacity or self.closed:
            return self._settle(item)
        if depth > self.max_depth:
            self.max_depth = depth
        if depth >= self._wanted:
            with self._mutex:
                self._not_empty.notify()
        return True

    def _offer_locked(self, item: Any) -> bool:
        # The queue looked full: look again under the lock, not counting void slots (which
        # stay until the writer's next take), and append there if there is room after all.
        with self._mutex:
            if self.closed:
                raise AuditServiceClosed("the audit service is closed")
            if not self._has_room(1):
                return False
            self._items.append(item)
            waiting = len(self._items) - self._voids
            if waiting > self.max_depth:
                self.max_depth = waiting
            if self._wanted != _NOT_WAITING:
                self._not_empty.notify()
            return True

    def _settle(self, item: Any) -> bool:
        # Raced past the capacity, or closed after the first look: decide under the lock.
        with self._mutex:
            if not self.closed and len(self._items) - self._voids <= self.capacity:
                if self._wanted != _NOT_WAITING:
                    self._not_empty.notify()
                return True  # the writer made room meanwhile: keep it
            if not self._void(item):
                return True  # already taken by the writer: it is written (or dead-lettered)
            if self.closed:
                raise AuditServiceClosed("the audit service is closed")
            return False

    def _void(self, item: Any) -> bool:
        # Under the lock. The entry was appended a moment ago: look from the right, by identity.
        items = self._items
        for index in range(len(items) - 1, -1, -1):
            if items[index] is item:
                items[index] = _VOID
                self._voids += 1
                self._voided += 1
                return True
        return False

    def offer_many(self, items: Sequence[Any]) -> int:
        """Append all of ``items``, next to each other, if there is room for all; never blocks.

        Returns the last one's position (the first's is at most ``position - len(items) + 1``;
        positions are exact unless other producers append at the same moment, when they may
        count a few of those too), or 0 when there is not room for all of them. More than
        :attr:`capacity` items go only into an empty queue, which then holds more than its
        capacity until the writer takes them (a bulk import is all or none: cutting it would
        break that). Raises :class:`AuditServiceClosed` once :meth:`close` was called.
        """
        with self._mutex:
            if self.closed:
                raise AuditServiceClosed("the audit service is closed")
            if not self._has_room(len(items)):
                return 0
            # One step under the GIL (a list is extended without running Python code), so the
            # entries stay next to each other even with producers appending without the lock.
            self._items.extend(items)
            depth = len(self._items)
            if depth - self._voids > self.max_depth:
                self.max_depth = depth - self._voids
            if depth >= self._wanted:
                self._not_empty.notify()
            return self._taken + depth

    def _has_room(self, count: int) -> bool:
        # Called under the lock. An empty queue takes any number (see offer_many).
        waiting = len(self._items) - self._voids
        return waiting + count <= self.capacity or not waiting

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

    def take(self, max_n: int, fill_s: float, urgent: Callable[[], bool]) -> tuple[list[Any], int]:
        """Wait for a batch: up to ``max_n`` slots, at most ``fill_s`` after the first one.

        Returns (the entries, how many slots they were taken from: voids count as finished
        with them). Returns at once with what is there when ``urgent()`` (checked under the
        lock, after every wake-up); returns ``([], 0)`` when woken with nothing queued.
        """
        with self._mutex:
            items = self._items
            self._wanted = 1  # before looking: a producer appending after the look notifies
            while not items:
                if self._woken or urgent():
                    self._woken = False
                    self._wanted = _NOT_WAITING
                    return [], 0
                self._not_empty.wait()
            deadline = time.monotonic() + fill_s
            # A queue smaller than a batch wakes the writer when it is full: waiting for more
            # would leave every batch to the flush interval (and producers waiting for room).
            wanted = self._wanted = min(max_n, self.capacity)
            while len(items) < wanted and not self._woken and not urgent():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._not_empty.wait(remaining)
            self._wanted = _NOT_WAITING
            self._woken = False
            slots = min(max_n, len(items))
            return self._taken_off([items.popleft() for _ in range(slots)])

    def drain(self) -> tuple[list[Any], int]:
        """Take everything that is queued, at once: (the entries, the slots they took)."""
        with self._mutex:
            batch = list(self._items)
            self._items.clear()
            return self._taken_off(batch)

    def _taken_off(self, batch: list[Any]) -> tuple[list[Any], int]:
        # Under the lock: count the slots, leave the voids out, let waiting producers look.
        slots = len(batch)
        self._taken += slots
        if self._voids:
            entries = [item for item in batch if item is not _VOID]
            self._voids -= slots - len(entries)
            batch = entries
        self._not_full.notify_all()
        return batch, slots
