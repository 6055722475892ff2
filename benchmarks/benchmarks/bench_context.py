"""What ``audit.context()`` costs the caller of ``record()`` (issue 15).

* ``ContextCallerCost.time_record_500``: 500 ``record()`` calls storing the same entry, its
  ``actor`` and ``correlation_id`` passed as keywords (``plain``) or supplied by an open
  ``audit.context()`` (``context``).
* ``ContextSideBySide.track_*``: the same two, interleaved in one process (plain, context, plain,
  …; 21 rounds of 2 000 calls) with the writer idle — every entry is excluded by the policy after
  validation, the context merge and the policy decision, so only the caller's own work is timed —
  and reported as medians in µs per call and as the difference. On a shared machine compare these
  side-by-side numbers, not two separate runs.

Numbers and how to read them: docs/performance.md, "Context: what it costs".
"""

from __future__ import annotations

import gc
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from audit_engine import AuditService, AuditSettings

# The suite measures the defaults: AUDIT_TRAIL_* variables in a developer's shell must not change
# them (asv imports this module in processes of its own, so this touches nothing else).
for _name in [name for name in os.environ if name.upper().startswith("AUDIT_TRAIL_")]:
    del os.environ[_name]

BURST = 500
ROUNDS = 21
CALLS = 2_000
BOUND = {"actor": "alice", "correlation_id": "req-7f3a"}


def _call(bound: dict[str, str]) -> Callable[[Callable[..., Any], int], None]:
    """A note save passing ``bound`` as keywords (plain: BOUND; in a context: nothing)."""

    def call(record: Callable[..., Any], i: int) -> None:
        record(
            action="note.save",
            operation="update",
            resource_type="note",
            resource_id=str(i),
            details={"bytes": 812},
            **bound,
        )

    return call


_plain = _call(BOUND)
_in_context = _call({})  # the context supplies actor and correlation_id


class ContextCallerCost:
    """500 record() calls handing entries to the writer, with and without a context."""

    params: ClassVar[list[str]] = ["plain", "context"]
    param_names: ClassVar[list[str]] = ["mode"]

    def setup(self, mode: str) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="audit-bench-")
        self.audit = AuditService(
            AuditSettings(
                database=Path(self._tmp.name) / "audit.db",
                queue_maxsize=100_000,
                cleanup_enabled=False,
            )
        )
        self._block = self.audit.context(**BOUND) if mode == "context" else None
        if self._block is not None:
            self._block.__enter__()

    def teardown(self, mode: str) -> None:
        try:
            if self._block is not None:
                self._block.__exit__(None, None, None)
            self.audit.close()
        finally:
            self._tmp.cleanup()

    def time_record_500(self, mode: str) -> None:
        call = _in_context if mode == "context" else _plain
        record = self.audit.record
        for i in range(BURST):
            call(record, i)


def side_by_side(database: Path) -> dict[str, float]:
    """Medians in µs per call of plain and in-context record(), interleaved, writer idle."""
    timings: dict[str, list[float]] = {"plain": [], "context": []}
    settings = AuditSettings(
        database=database, exclude_actions=["note.save"], cleanup_enabled=False
    )
    with AuditService(settings) as audit:
        record = audit.record
        for _ in range(ROUNDS):
            for mode, call in (("plain", _plain), ("context", _in_context)):
                block = audit.context(**BOUND) if mode == "context" else None
                if block is not None:
                    block.__enter__()
                gc.disable()
                start = time.perf_counter()
                for i in range(CALLS):
                    call(record, i)
                elapsed = time.perf_counter() - start
                gc.enable()
                if block is not None:
                    block.__exit__(None, None, None)
                timings[mode].append(elapsed / CALLS * 1e6)
        assert audit.stats().excluded == 2 * ROUNDS * CALLS  # every call went all the way
    plain = statistics.median(timings["plain"])
    context = statistics.median(timings["context"])
    return {"plain": plain, "context": context, "extra": context - plain}


class ContextSideBySide:
    """The caller's cost with and without a context, measured side by side (µs per call)."""

    unit = "µs"

    def setup_cache(self) -> dict[str, float]:
        with tempfile.TemporaryDirectory(prefix="audit-bench-") as tmp:
            return side_by_side(Path(tmp) / "audit.db")

    def track_plain_us(self, cache: dict[str, float]) -> float:
        return cache["plain"]

    def track_context_us(self, cache: dict[str, float]) -> float:
        return cache["context"]

    def track_context_extra_us(self, cache: dict[str, float]) -> float:
        return cache["extra"]
