"""audit-engine bench: every mode runs, writes the same row, and reports consistent figures."""

from __future__ import annotations

import json
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from audit_engine.cli import bench, main
from audit_engine.cli.bench import MODES, SYNC_DEFAULT_MAX_EVENTS, run_bench, total_events
from audit_engine.settings import AuditSettings
from audit_engine.storage.keys import chain_key_id, load_chain_keys


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


def _chains_written(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, list[tuple[Any, ...]]]]:
    """Each engine mode's chain_key_file and the chain versions its database ended with."""
    seen: list[tuple[Any, list[tuple[Any, ...]]]] = []
    real = bench.run_engine

    def spy(settings: AuditSettings, *args: Any) -> Any:
        result = real(settings, *args)
        with sqlite3.connect(settings.database) as conn:  # still there: the run's temp dir
            versions = conn.execute("SELECT first_id, version, key_id FROM audit_chain_versions")
            key = settings.chain_key_file
            mode = None if key is None else stat.S_IMODE(Path(key).stat().st_mode)
            seen.append(((key, mode), versions.fetchall()))
        return result

    monkeypatch.setattr(bench, "run_engine", spy)
    return seen


def test_engine_keyed_writes_a_keyed_chain_beside_an_unkeyed_engine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Even with a key in the environment, the engine mode is the unkeyed baseline.
    env_key = tmp_path / "env-chain.key"
    env_key.write_text("22" * 32 + "\n", encoding="utf-8")
    env_key.chmod(0o600)
    monkeypatch.setenv("AUDIT_TRAIL_CHAIN_KEY_FILE", str(env_key))
    seen = _chains_written(monkeypatch)
    report = run_bench(30, modes=("engine", "engine-keyed"))
    assert [r.mode for r in report.results] == ["engine", "engine-keyed"]
    assert [r.events for r in report.results] == [30, 30]
    (unkeyed, unkeyed_versions), ((key, mode), keyed_versions) = seen
    assert unkeyed == (None, None)
    assert unkeyed_versions == [(1, "1", None)]
    # A throwaway key, private like any chain key, gone with the run's directory.
    assert mode == 0o600
    assert not Path(key).exists()
    [(first, version, key_id)] = keyed_versions
    assert (first, version, len(key_id)) == (1, "2", 16)
    assert key_id != chain_key_id(bytes.fromhex("22" * 32))  # not the environment's key


def test_engine_keyed_uses_the_given_chain_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key_file = tmp_path / "chain.key"
    key_file.write_text("11" * 32 + "\n", encoding="utf-8")
    key_file.chmod(0o600)
    seen = _chains_written(monkeypatch)
    run_bench(10, modes=("engine-keyed",), chain_key_file=key_file)
    [((key, _), versions)] = seen
    assert key == key_file
    assert versions == [(1, "2", chain_key_id(bytes.fromhex("11" * 32)))]
    assert load_chain_keys(key_file).writer.id == versions[0][2]


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
