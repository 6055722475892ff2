"""``audit-engine bench``: its options, its table and its JSON report.

A typo in an option is a usage error (exit 2, click's ``Error: Invalid value for ...``), never a
traceback; an option that does not apply to the backend is ``Error: ...`` with exit 1.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from audit_engine.cli import bench, main
from audit_engine.cli.bench import MODES, THREADED_MODES, BenchReport

_MODE_LIST = ", ".join(f"'{mode}'" for mode in MODES)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--events", "100000000000000000000"],
            "Error: Invalid value for '--events': 100000000000000000000 is not in the range "
            "1<=x<=1000000.\n",
        ),
        (
            ["--threads", "100000"],
            "Error: Invalid value for '--threads': 100000 is not in the range 1<=x<=64.\n",
        ),
        (
            ["--threads", "1,2,0"],
            "Error: Invalid value for '--threads': 0 is not in the range 1<=x<=64.\n",
        ),
        (
            ["--threads", "1;2"],
            "Error: Invalid value for '--threads': '1;2' is not a whole number "
            "(give thread counts as 1,2,4,8).\n",
        ),
        (
            ["--threads", "4,4"],
            "Error: Invalid value for '--threads': 4 is listed twice.\n",
        ),
        (
            ["--rounds", "0"],
            "Error: Invalid value for '--rounds': 0 is not in the range 1<=x<=100.\n",
        ),
        (
            ["--mode", "engine", "--mode", "turbo"],
            f"Error: Invalid value for '--mode': 'turbo' is not one of {_MODE_LIST}.\n",
        ),
    ],
)
def test_bench_option_typos_are_usage_errors(options: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["bench", *options], prog_name="audit-engine")

    assert result.exit_code == 2
    assert result.output.startswith("Usage: audit-engine bench [OPTIONS]\n")
    assert result.output.endswith(message)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--rounds", "3"], "--rounds"),
        (["--mode", "engine"], "--mode"),
        (["--threads", "1,2"], "a --threads list"),
        (["--rounds", "2", "--mode", "engine"], "--rounds and --mode"),
    ],
)
def test_the_sqlite_bench_options_are_refused_with_a_url(options: list[str], named: str) -> None:
    # Refused before any connection: the URL names no server at all.
    url = "postgresql://bench@127.0.0.1:9/none"
    result = CliRunner().invoke(main, ["bench", "--db", url, *options])

    assert result.exit_code == 1
    assert result.output == (
        f"Error: {named}: for the SQLite bench only (the PostgreSQL bench runs its four modes "
        "once, with one thread count)\n"
    )


def test_bench_json_has_every_mode_each_thread_count_and_the_per_round_ratios(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bench, "SYNC_DEFAULT_MAX_EVENTS", 20)  # a full fsync per event is slow
    args = ["bench", "--events", "200", "--rounds", "2", "--threads", "1,2", "--json"]
    result = CliRunner().invoke(main, args)

    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    report = BenchReport.model_validate(data)
    assert (report.events, report.rounds, report.threads) == (200, 2, [1, 2])
    assert {r.mode for r in report.results} == set(MODES)
    for r in report.results:
        assert r.threads in ((1, 2) if r.mode in THREADED_MODES else (1,))
        assert r.rows_stored == r.events
        assert len(r.per_round) == 2
        assert r.ratio_to_ceiling is not None
        assert len(r.ratio_to_ceiling.per_round) == 2
        if r.mode != "ceiling":
            assert r.caller_p999_us is not None
    stored = {(r.mode, r.threads): r.rows_stored for r in report.results}
    assert stored["logging-queue", 2] == stored["engine", 2] == 200
    assert sorted((q.denominator, q.threads) for q in report.ratios) == [
        ("ceiling", 1),
        ("ceiling", 2),
        ("logging-queue", 1),
        ("logging-queue", 2),
    ]
    assert all(len(q.per_round) == 2 for q in report.ratios)
    assert "caller_p999_us" in data["results"][0]
    assert "per_round" in data["ratios"][0]


def test_bench_table_shows_medians_ratios_and_the_latency_targets() -> None:
    args = ["bench", "--events", "40", "--rounds", "1"]
    result = CliRunner().invoke(
        main, [*args, "--mode", "ceiling", "--mode", "engine", "--mode", "logging-queue"]
    )

    assert result.exit_code == 0, result.output
    intro, header, *rest = result.output.splitlines()
    assert intro.startswith("Python ")
    assert intro.endswith(
        "40 events, 1 round(s) in rotating order, recording threads 1; medians of the rounds"
    )
    assert header.split() == [
        "mode", "threads", "events", "events/s", "caller", "p50", "caller", "p99", "caller",
        "p99.9", "commits/ev", "x", "ceiling", "range",
    ]  # fmt: skip
    rows = rest[:3]
    assert [row.split()[:3] for row in rows] == [
        ["logging-queue", "1", "40"],
        ["engine", "1", "40"],
        ["ceiling", "1", "40"],
    ]
    assert rows[2].split()[4:7] == ["-", "-", "-"]  # the ceiling has no caller
    assert rows[2].split()[-2:] == ["1.00", "1.00-1.00"]
    assert all(cell.endswith("us") for row in rows[:2] for cell in row.split()[4:7])
    assert rest[3:5] == ["", "Ratios of events/s within each round (median [min-max]):"]
    assert [line.split(":")[0] for line in rest[5:7]] == [
        "  engine / ceiling, 1 thread",
        "  engine / logging-queue, 1 thread",
    ]
    assert rest[7:9] == ["", "Caller latency against the targets, rounds on target:"]
    for line, mode in zip(rest[9:], ("logging-queue", "engine"), strict=True):
        assert line.startswith(f"  {mode}, 1 thread: p99 ≤ 50 µs in ")
        assert line.endswith(" rounds")
        assert "/1 rounds, p99.9 ≤ 1 ms in " in line


def test_bench_table_without_a_ceiling_or_a_producer_mode_has_no_ratios_or_targets() -> None:
    args = ["bench", "--events", "20", "--rounds", "1", "--mode", "sync-wal"]
    result = CliRunner().invoke(main, args)

    assert result.exit_code == 0, result.output
    _, _, row = result.output.splitlines()
    assert row.split()[:3] == ["sync-wal", "1", "20"]
    assert row.split()[-2:] == ["-", "-"]  # no ceiling: no ratio, no range


def test_a_mode_that_lost_rows_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "count_rows", lambda path: 0)
    args = ["bench", "--events", "5", "--rounds", "1", "--mode", "ceiling"]
    result = CliRunner().invoke(main, args)

    assert result.exit_code == 1
    assert result.output == (
        "Error: bench mode ceiling (1 thread(s)) stored 0 of 5 rows in round 1: "
        "its figures would not compare\n"
    )
