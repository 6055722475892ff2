"""Rounds of the bench: the order each round runs its modes in, and the figures across rounds.

A machine shared with others changes speed from one second to the next, so a rate measured
alone says little; the bench runs every mode once per round, in an order that rotates from one
round to the next (the ceiling is not always last, after the slow sync modes), takes each
mode's ratios to the others within the round, and reports medians with their ranges.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TypeVar

from pydantic import BaseModel, ConfigDict

from audit_engine.cli.bench_modes import P99_TARGET_US, P999_TARGET_US, ModeResult

MAX_THREADS = 64  # a sweep starts this many threads at most: a typo stays a usage error

T = TypeVar("T")


class Ratio(BaseModel):
    """``numerator`` ÷ ``denominator`` events/s, one value per round, and their spread."""

    model_config = ConfigDict(frozen=True)

    numerator: str
    denominator: str
    threads: int  # the numerator's producer threads (and the denominator's, when it has them)
    per_round: list[float]
    median: float
    min: float
    max: float


class ModeSummary(BaseModel):
    """One mode at one thread count across the rounds: medians of the per-round figures."""

    model_config = ConfigDict(frozen=True)

    mode: str
    threads: int
    rounds: int
    events: int
    events_per_s: float  # median
    events_per_s_min: float
    events_per_s_max: float
    # Medians of each round's caller percentiles; None for the ceiling (no caller).
    caller_p50_us: float | None
    caller_p99_us: float | None
    caller_p999_us: float | None
    commits_per_event: float  # median
    rows_stored: int | None  # the fewest any round stored (equal to events, or the run fails)
    # Rounds whose caller p99 was within P99_TARGET_US, and p99.9 within P999_TARGET_US.
    rounds_p99_on_target: int | None
    rounds_p999_on_target: int | None
    ratio_to_ceiling: Ratio | None  # None: no ceiling in this run
    per_round: list[ModeResult]


def round_order(jobs: Sequence[T], round_index: int, rounds: int) -> list[T]:
    """``jobs`` rotated for round ``round_index`` of ``rounds``: the starting point moves
    evenly through the list, so each job runs early in some rounds and late in others."""
    if not 0 <= round_index < rounds:
        raise ValueError(f"round {round_index} is not one of {rounds} rounds")
    start = (round_index * len(jobs)) // rounds if jobs else 0
    return [*jobs[start:], *jobs[:start]]


def parse_thread_counts(text: str) -> tuple[int, ...]:
    """``"1,2,4,8"`` as ``(1, 2, 4, 8)``: each a whole number from 1 to ``MAX_THREADS``, once."""
    counts: list[int] = []
    for part in text.split(","):
        item = part.strip()
        try:
            count = int(item)
        except ValueError:
            raise ValueError(
                f"{item!r} is not a whole number (give thread counts as 1,2,4,8)."
            ) from None
        if not 1 <= count <= MAX_THREADS:
            raise ValueError(f"{count} is not in the range 1<=x<={MAX_THREADS}.")
        if count in counts:
            raise ValueError(f"{count} is listed twice.")
        counts.append(count)
    return tuple(counts)


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _within(values: list[float | None], limit: float) -> int | None:
    known = [v for v in values if v is not None]
    return sum(1 for v in known if v <= limit) if known else None


def ratio(numerator: str, denominator: str, threads: int, per_round: list[float]) -> Ratio | None:
    """The spread of per-round ratios (None when no round had both figures)."""
    if not per_round:
        return None
    return Ratio(
        numerator=numerator,
        denominator=denominator,
        threads=threads,
        per_round=per_round,
        median=statistics.median(per_round),
        min=min(per_round),
        max=max(per_round),
    )


def summarise(runs: list[ModeResult], ceilings: list[float]) -> ModeSummary:
    """One mode's runs (one per round, the same thread count) against the rounds' ceilings
    (events/s, in the same order; empty when no ceiling ran)."""
    first = runs[0]
    if ceilings:
        runs = [
            run.model_copy(update={"ratio_to_ceiling": run.events_per_s / top if top else 0.0})
            for run, top in zip(runs, ceilings, strict=True)
        ]
    rates = [run.events_per_s for run in runs]
    stored = [run.rows_stored for run in runs if run.rows_stored is not None]
    p99s = [run.caller_p99_us for run in runs]
    p999s = [run.caller_p999_us for run in runs]
    return ModeSummary(
        mode=first.mode,
        threads=first.threads,
        rounds=len(runs),
        events=first.events,
        events_per_s=statistics.median(rates),
        events_per_s_min=min(rates),
        events_per_s_max=max(rates),
        caller_p50_us=_median([run.caller_p50_us for run in runs]),
        caller_p99_us=_median(p99s),
        caller_p999_us=_median(p999s),
        commits_per_event=statistics.median(run.commits_per_event for run in runs),
        rows_stored=min(stored) if stored else None,
        rounds_p99_on_target=_within(p99s, P99_TARGET_US),
        rounds_p999_on_target=_within(p999s, P999_TARGET_US),
        ratio_to_ceiling=ratio(
            first.mode,
            "ceiling",
            first.threads,
            [run.ratio_to_ceiling for run in runs] if ceilings else [],
        ),
        per_round=runs,
    )
