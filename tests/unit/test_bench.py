"""audit-engine bench: every mode runs, writes the same row, and reports consistent figures."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from audit_engine.cli import bench, main
from audit_engine.cli.bench import MODES, SYNC_DEFAULT_MAX_EVENTS, run_bench, total_events


def test_every_mode_runs_side_by_side() -> None:
    ticks: list[int] = []
    report = run_bench(120, threads=2, on_progress=ticks.append)
    assert [r.mode for r in report.results] == list(MODES)
    assert sum(ticks) == total_events(120)
    for result in report.results:
        assert result.events == 120
        assert result.events_per_s > 0
        assert result.commits_per_event == result.commits / result.events
    by_mode = {r.mode: r for r in report.results}
    assert by_mode["ceiling"].ratio_to_ceiling == pytest.approx(1.0)
    assert by_mode["ceiling"].commits == 1  # 500 rows per transaction
    assert by_mode["engine"].commits < by_mode["sync-wal"].commits == 120
    engine = by_mode["engine"]
    assert engine.caller_p50_us is not None
    assert engine.caller_p99_us is not None
    assert engine.caller_p99_us >= engine.caller_p50_us > 0
    # The ceiling's rows are prebuilt: it has no caller to time.
    assert by_mode["ceiling"].caller_p50_us is None
    assert by_mode["ceiling"].caller_p99_us is None
    assert report.threads == 2
    assert report.cpus >= 1


def test_sync_default_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    assert SYNC_DEFAULT_MAX_EVENTS == 2000
    monkeypatch.setattr(bench, "SYNC_DEFAULT_MAX_EVENTS", 10)  # a full fsync per event is slow
    report = run_bench(15, modes=("sync-default",))
    assert [r.events for r in report.results] == [10]
    assert report.results[0].ratio_to_ceiling == 0.0  # no ceiling measured in this run


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"events": 0}, "events must be at least 1 (got 0)"),
        ({"events": 5, "threads": 0}, "threads must be at least 1 (got 0)"),
        ({"events": 5, "modes": ("turbo",)}, "unknown bench mode(s): turbo"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_bench(**kwargs)  # type: ignore[arg-type]


def test_bench_command_prints_a_table_and_json() -> None:
    runner = CliRunner()
    table = runner.invoke(main, ["bench", "--events", "60"])
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[1].split()[:3] == ["mode", "events", "events/s"]
    assert [line.split()[0] for line in lines[2:]] == list(MODES)
    ceiling = lines[-1].split()
    assert ceiling[0] == "ceiling"
    assert ceiling[3:5] == ["-", "-"]  # no caller timings
    assert all(cell.endswith("us") for line in lines[2:-1] for cell in line.split()[3:5])
    as_json = runner.invoke(main, ["bench", "--events", "60", "--threads", "2", "--json"])
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.output)
    assert data["events"] == 60
    assert data["threads"] == 2
    assert [r["mode"] for r in data["results"]] == list(MODES)
