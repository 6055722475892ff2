"""The bench's rounds: the rotating order, thread-count lists, percentiles, medians and ranges."""

from __future__ import annotations

import re

import pytest

from audit_engine.cli.bench_modes import ModeResult, percentile, percentiles
from audit_engine.cli.bench_rounds import parse_thread_counts, ratio, round_order, summarise


def test_the_order_rotates_evenly_through_the_rounds() -> None:
    jobs = ["sync-default", "sync-wal", "engine", "ceiling"]
    orders = [round_order(jobs, n, 4) for n in range(4)]
    assert orders == [
        ["sync-default", "sync-wal", "engine", "ceiling"],
        ["sync-wal", "engine", "ceiling", "sync-default"],
        ["engine", "ceiling", "sync-default", "sync-wal"],
        ["ceiling", "sync-default", "sync-wal", "engine"],
    ]
    # Each job takes every position once: the ceiling is not always last.
    assert sorted(order.index("ceiling") for order in orders) == [0, 1, 2, 3]


def test_fewer_rounds_than_jobs_spread_the_start() -> None:
    jobs = list(range(10))
    assert [round_order(jobs, n, 3)[0] for n in range(3)] == [0, 3, 6]
    assert [round_order(jobs, n, 2)[-1] for n in range(2)] == [9, 4]
    assert round_order(jobs, 0, 1) == jobs
    assert round_order([], 0, 2) == []


@pytest.mark.parametrize("index", [-1, 3])
def test_a_round_outside_the_run_is_refused(index: int) -> None:
    with pytest.raises(ValueError, match=f"^round {index} is not one of 3 rounds$"):
        round_order([1, 2], index, 3)


@pytest.mark.parametrize(
    ("text", "counts"),
    [("1", (1,)), ("1,2,4,8", (1, 2, 4, 8)), (" 8 , 1", (8, 1)), ("64", (64,))],
)
def test_thread_counts_parse(text: str, counts: tuple[int, ...]) -> None:
    assert parse_thread_counts(text) == counts


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "0 is not in the range 1<=x<=64."),
        ("1,65", "65 is not in the range 1<=x<=64."),
        ("1,,2", "'' is not a whole number (give thread counts as 1,2,4,8)."),
        ("two", "'two' is not a whole number (give thread counts as 1,2,4,8)."),
        ("1.5", "'1.5' is not a whole number (give thread counts as 1,2,4,8)."),
        ("2,4,2", "2 is listed twice."),
    ],
)
def test_bad_thread_counts_are_named(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_thread_counts(text)


def test_percentiles_take_the_value_at_the_rounded_index() -> None:
    values = [float(v) for v in range(1000, 0, -1)]  # unsorted on purpose: 1000 .. 1
    assert percentiles(values, (0.0, 0.5, 0.99, 0.999, 1.0)) == [1.0, 501.0, 990.0, 999.0, 1000.0]
    assert percentile([7.0], 0.999) == 7.0
    # Index round(0.5 * (2 - 1)): Python rounds half to even, so the lower of the two.
    assert percentile([2.0, 1.0], 0.5) == 1.0
    assert percentiles([], (0.5, 0.99)) == [None, None]


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_a_percentile_outside_zero_to_one_is_refused(fraction: float) -> None:
    with pytest.raises(ValueError, match="a percentile is a fraction from 0 to 1"):
        percentiles([1.0], (0.5, fraction))


def _run(rate: float, p99: float | None, p999: float | None, **more: object) -> ModeResult:
    fields: dict[str, object] = {
        "mode": "engine",
        "events": 100,
        "seconds": 100 / rate,
        "events_per_s": rate,
        "caller_p50_us": None if p99 is None else 1.0,
        "caller_p99_us": p99,
        "caller_p999_us": p999,
        "commits": 1,
        "commits_per_event": 0.01,
        "threads": 4,
        "rows_stored": 100,
    }
    return ModeResult.model_validate(fields | more)


def test_a_summary_takes_medians_ranges_and_counts_rounds_on_target() -> None:
    runs = [
        _run(1000.0, 40.0, 900.0),
        _run(3000.0, 50.0, 1000.0),
        _run(2000.0, 60.0, 2000.0, rows_stored=99),
    ]
    summary = summarise(runs, [4000.0, 4000.0, 0.0])
    assert (summary.mode, summary.threads, summary.rounds, summary.events) == ("engine", 4, 3, 100)
    assert summary.events_per_s == 2000.0
    assert (summary.events_per_s_min, summary.events_per_s_max) == (1000.0, 3000.0)
    assert (summary.caller_p99_us, summary.caller_p999_us) == (50.0, 1000.0)
    assert summary.rows_stored == 99  # the fewest any round stored
    # The limits are inclusive: p99 <= 50 us, p99.9 <= 1 ms.
    assert (summary.rounds_p99_on_target, summary.rounds_p999_on_target) == (2, 2)
    spread = summary.ratio_to_ceiling
    assert spread is not None
    assert spread.per_round == [0.25, 0.75, 0.0]  # a round without a ceiling rate: 0
    assert (spread.median, spread.min, spread.max) == (0.25, 0.0, 0.75)
    assert [run.ratio_to_ceiling for run in summary.per_round] == spread.per_round


def test_a_summary_without_callers_or_a_ceiling() -> None:
    summary = summarise([_run(10.0, None, None, rows_stored=None)], [])
    assert summary.caller_p50_us is None
    assert summary.rounds_p99_on_target is None
    assert summary.rows_stored is None
    assert summary.ratio_to_ceiling is None


def test_a_ratio_of_no_rounds_is_none() -> None:
    assert ratio("engine", "ceiling", 1, []) is None
    spread = ratio("engine", "logging-queue", 2, [2.0, 1.0, 4.0, 3.0])
    assert spread is not None
    assert (spread.median, spread.min, spread.max, spread.threads) == (2.5, 1.0, 4.0, 2)
