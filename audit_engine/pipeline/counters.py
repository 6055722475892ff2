"""The caller-side counters of a service: what ``record()`` did not pass on, and why.

The writer counts what it wrote; these count what never reached it (filtered, de-duplicated,
skipped inside ``disabled()``, dropped on a full queue) and what was written through an injected
connection. ``record()`` updates them only off its common path, under one lock.
"""

from __future__ import annotations

import logging
import math
import threading
import time

from audit_engine.pipeline.policy import Decision

logger = logging.getLogger("audit_engine.service")  # the documented logger name

_DROP_WARNING_INTERVAL_S = 10.0


class CallerCounters:
    """Counters ``record()`` keeps in the caller's thread; ``stats()`` reads them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.injected_written = 0
        self.dropped = 0
        self.not_kept = dict.fromkeys(Decision, 0)
        self.deduplicated = 0
        self.skipped_disabled = 0
        self._drops_unreported = 0
        self._last_drop_warning = -math.inf  # the first drop is always reported

    def count_not_kept(self, decision: Decision) -> None:
        with self.lock:
            self.not_kept[decision] += 1

    def count_deduplicated(self) -> None:
        with self.lock:
            self.deduplicated += 1

    def count_skipped_disabled(self) -> None:
        with self.lock:
            self.skipped_disabled += 1

    def count_injected(self, n: int = 1) -> None:
        with self.lock:
            self.injected_written += n

    def count_drop(self, n: int = 1) -> None:
        """Count dropped entries; a WARNING at most every 10 s says how many since the last."""
        with self.lock:
            self.dropped += n
            self._drops_unreported += n
            now = time.monotonic()
            if now - self._last_drop_warning < _DROP_WARNING_INTERVAL_S:
                return
            unreported, self._drops_unreported = self._drops_unreported, 0
            self._last_drop_warning = now
            total = self.dropped
        logger.warning(
            "audit queue full: dropped %d entries (on_full='drop'); %d dropped in total",
            unreported,
            total,
        )
