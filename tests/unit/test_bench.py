"""audit-engine bench: every mode runs in every round, writes every row, and the figures agree."""

from __future__ import annotations

import re
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

from audit_engine.cli import bench
from audit_engine.cli.bench import (
    MODES,
    SYNC_DEFAULT_MAX_EVENTS,
    THREADED_MODES,
    BenchRowsLost,
    bench_jobs,
    run_bench,
    total_events,
)
from audit_engine.settings import AuditSettings
from audit_engine.storage.keys import chain_key_id, load_chain_keys


def test_every_mode_runs_in_every_round_with_a_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "SYNC_DEFAULT_MAX_EVENTS", 10)  # a full fsync per event is slow
    ticks: list[int] = []
    report = run_bench(120, (2, 1), rounds=2, on_progress=ticks.append)
    assert sum(ticks) == total_events(120, MODES, (1, 2), 2)
    assert (report.events, report.rounds, report.threads) == (120, 2, [1, 2])
    assert report.cpus >= 1
    expected = [(m, t) for m in MODES for t in ((1, 2) if m in THREADED_MODES else (1,))]
    assert [(r.mode, r.threads) for r in report.results] == expected
    # Every job once per round, the second round in another order.
    first, second = report.orders
    assert sorted(first) == sorted(second)
    assert len(first) == len(expected)
    assert first != second
    assert first[-1] == "ceiling" != second[-1]
    for result in report.results:
        assert result.rounds == 2
        assert [run.threads for run in result.per_round] == [result.threads] * 2
        events = 10 if result.mode == "sync-default" else 120
        assert result.events == result.rows_stored == events
        assert all(run.rows_stored == events for run in result.per_round)
        assert result.events_per_s_min <= result.events_per_s <= result.events_per_s_max
        spread = result.ratio_to_ceiling
        assert spread is not None
        assert spread.per_round == [run.ratio_to_ceiling for run in result.per_round]
        assert spread.min <= spread.median <= spread.max
    by_job = {(r.mode, r.threads): r for r in report.results}
    ceiling = by_job["ceiling", 1]
    assert ceiling.ratio_to_ceiling is not None
    assert ceiling.ratio_to_ceiling.per_round == [1.0, 1.0]
    assert [run.commits for run in ceiling.per_round] == [1, 1]  # 500 rows per transaction
    # The ceiling's rows are prebuilt: it has no caller to time, and no latency target.
    assert (ceiling.caller_p50_us, ceiling.caller_p99_us, ceiling.caller_p999_us) == (None,) * 3
    assert ceiling.rounds_p99_on_target is None
    for job in [("engine", 1), ("engine", 2), ("logging-queue", 2), ("sync-wal", 1)]:
        result = by_job[job]
        assert result.caller_p50_us is not None
        assert result.caller_p99_us is not None
        assert result.caller_p999_us is not None
        assert 0 < result.caller_p50_us <= result.caller_p99_us <= result.caller_p999_us
        assert result.rounds_p99_on_target in (0, 1, 2)
        assert result.rounds_p999_on_target in (0, 1, 2)
    assert by_job["engine", 1].commits_per_event < 1 == by_job["sync-wal", 1].commits_per_event
    assert by_job["logging-queue", 1].commits_per_event < 1  # batched
    ratios = {(q.numerator, q.denominator, q.threads): q for q in report.ratios}
    assert set(ratios) == {
        ("engine", other, count) for other in ("ceiling", "logging-queue") for count in (1, 2)
    }
    for count in (1, 2):
        engine = by_job["engine", count].per_round
        peer = by_job["logging-queue", count].per_round
        assert ratios["engine", "logging-queue", count].per_round == [
            e.events_per_s / p.events_per_s for e, p in zip(engine, peer, strict=True)
        ]
        assert ratios["engine", "ceiling", count].per_round == [
            run.ratio_to_ceiling for run in engine
        ]


def test_jobs_sweep_only_the_modes_with_producers() -> None:
    assert bench_jobs(("ceiling", "engine", "sync-wal"), (1, 4)) == [
        ("sync-wal", 1),
        ("engine", 1),
        ("engine", 4),
        ("ceiling", 1),
    ]
    assert total_events(3000, ("sync-default", "engine"), (1, 4), rounds=3) == 3 * (
        SYNC_DEFAULT_MAX_EVENTS + 2 * 3000
    )


def test_a_mode_that_loses_rows_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "count_rows", lambda path: 4)
    with pytest.raises(BenchRowsLost) as raised:
        run_bench(5, rounds=1, modes=("logging-queue",))
    assert str(raised.value) == (
        "bench mode logging-queue (1 thread(s)) stored 4 of 5 rows in round 1: "
        "its figures would not compare"
    )


def test_without_a_ceiling_or_a_peer_there_are_no_ratios() -> None:
    report = run_bench(10, rounds=1, modes=("engine",))
    [engine] = report.results
    assert engine.ratio_to_ceiling is None
    assert engine.per_round[0].ratio_to_ceiling == 0.0
    assert report.ratios == []


def _chains_written(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, list[tuple[Any, ...]]]]:
    """Each engine run's chain_key_file and the chain versions its database ended with."""
    seen: list[tuple[Any, list[tuple[Any, ...]]]] = []
    real = bench.run_engine

    def spy(settings: AuditSettings, *args: Any) -> Any:
        result = real(settings, *args)
        with sqlite3.connect(settings.database) as conn:  # still there: removed once counted
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
    report = run_bench(30, rounds=2, modes=("engine", "engine-keyed"))
    assert [r.mode for r in report.results] == ["engine", "engine-keyed"]
    assert report.orders == [["engine:1", "engine-keyed:1"], ["engine-keyed:1", "engine:1"]]
    unkeyed = [versions for (key, _), versions in seen if key is None]
    keyed = [(key_and_mode, versions) for key_and_mode, versions in seen if key_and_mode[0]]
    assert unkeyed == [[(1, "1", None)]] * 2
    # One throwaway key for both rounds, private like any chain key, gone with the run.
    assert len({key for (key, _), _ in keyed}) == 1
    for (key, mode), versions in keyed:
        assert mode == 0o600
        assert not Path(key).exists()
        [(first, version, key_id)] = versions
        assert (first, version, len(key_id)) == (1, "2", 16)
        assert key_id != chain_key_id(bytes.fromhex("22" * 32))  # not the environment's key


def test_engine_keyed_uses_the_given_chain_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key_file = tmp_path / "chain.key"
    key_file.write_text("11" * 32 + "\n", encoding="utf-8")
    key_file.chmod(0o600)
    seen = _chains_written(monkeypatch)
    run_bench(10, rounds=1, modes=("engine-keyed",), chain_key_file=key_file)
    [((key, _), versions)] = seen
    assert key == key_file
    assert versions == [(1, "2", chain_key_id(bytes.fromhex("11" * 32)))]
    assert load_chain_keys(key_file).writer.id == versions[0][2]


def test_sync_default_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    assert SYNC_DEFAULT_MAX_EVENTS == 2000
    monkeypatch.setattr(bench, "SYNC_DEFAULT_MAX_EVENTS", 10)  # a full fsync per event is slow
    report = run_bench(15, rounds=1, modes=("sync-default",))
    assert [(r.events, r.rows_stored) for r in report.results] == [(10, 10)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"events": 0}, "events must be at least 1 (got 0)"),
        ({"events": 5, "rounds": 0}, "rounds must be at least 1 (got 0)"),
        ({"events": 5, "threads": 0}, "threads must be from 1 to 64 (got 0)"),
        ({"events": 5, "threads": (1, 65)}, "threads must be from 1 to 64 (got 65)"),
        ({"events": 5, "threads": ()}, "threads must name at least one thread count"),
        ({"events": 5, "threads": (2, 2)}, "threads lists a count twice: 2, 2"),
        (
            {"events": 5, "modes": ("turbo",)},
            f"unknown bench mode(s): turbo (modes: {', '.join(MODES)})",
        ),
        ({"events": 5, "modes": ()}, f"no bench mode selected (modes: {', '.join(MODES)})"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        run_bench(**kwargs)  # type: ignore[arg-type]
