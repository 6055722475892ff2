"""audit-engine bench against PostgreSQL: every mode runs in a scratch schema, writes its rows,
and leaves nothing behind. No timing assertions: the figures are the machine's."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from audit_engine.cli import bench_postgres
from audit_engine.cli.bench_postgres import (
    PG_MODES,
    SCHEMA_PREFIX,
    run_pg_bench,
    scoped_url,
    total_pg_events,
)
from audit_engine.settings import mask_url


def _bench_schemas(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (SCHEMA_PREFIX + "%",)
        ).fetchall()
    return [name for (name,) in rows]


def test_every_mode_writes_its_rows_and_is_cleaned_up(pg_url: str) -> None:
    ticks: list[int] = []
    report = run_pg_bench(pg_url, 60, threads=2, on_progress=ticks.append)
    assert [r.mode for r in report.results] == list(PG_MODES)
    assert sum(ticks) == total_pg_events(60) == 240
    by_mode = {r.mode: r for r in report.results}
    for result in report.results:
        assert result.events == 60
        assert result.rows_stored == 60  # counted in the mode's schema before it was dropped
        assert result.events_per_s > 0
    assert by_mode["insert-commit"].commits == 60
    assert by_mode["ceiling"].commits == 1  # 500 rows per transaction
    assert by_mode["ceiling"].ratio_to_ceiling == pytest.approx(1.0)
    assert by_mode["ceiling"].caller_p50_us is None  # prebuilt rows: no caller
    engine = by_mode["engine"]
    assert engine.caller_p50_us is not None
    assert engine.caller_p99_us is not None
    assert engine.caller_p99_us >= engine.caller_p50_us > 0
    assert report.threads == 2
    assert report.database == mask_url(pg_url)
    assert report.fsync in {"on", "off"}
    assert _bench_schemas(pg_url) == []
    with psycopg.connect(pg_url) as conn:  # nothing written outside the scratch schemas
        assert conn.execute("SELECT to_regclass('public.audit_entries')").fetchone() == (None,)


def test_insert_commit_is_capped(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_postgres, "INSERT_COMMIT_MAX_EVENTS", 7)
    report = run_pg_bench(pg_url, 12, modes=("insert-commit",))
    assert [(r.mode, r.events, r.rows_stored) for r in report.results] == [("insert-commit", 7, 7)]
    assert report.results[0].ratio_to_ceiling == 0.0  # no ceiling measured in this run


def test_scratch_schema_is_dropped_when_a_mode_fails(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("mode failed")

    monkeypatch.setattr(bench_postgres, "_ceiling", broken)
    with pytest.raises(RuntimeError, match="mode failed"):
        run_pg_bench(pg_url, 5, modes=("ceiling",))
    assert _bench_schemas(pg_url) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"events": 0}, r"events must be at least 1 \(got 0\)"),
        ({"events": 5, "threads": 0}, r"threads must be at least 1 \(got 0\)"),
        ({"events": 5, "modes": ("sync-wal",)}, r"unknown bench mode\(s\): sync-wal"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    # Checked before any connection: the URL need not answer.
    with pytest.raises(ValueError, match=message):
        run_pg_bench("postgresql://nobody@127.0.0.1:1/none", **kwargs)


def test_scoped_url_puts_the_schema_first_and_keeps_other_options() -> None:
    assert scoped_url("postgresql://u:pw@h:5/db", "s1") == (
        "postgresql://u:pw@h:5/db?options=-csearch_path%3Ds1"
    )
    assert scoped_url("postgresql://h/db?sslmode=disable&options=-cwork_mem%3D8MB", "s2") == (
        "postgresql://h/db?sslmode=disable&options=-cwork_mem%3D8MB+-csearch_path%3Ds2"
    )


def test_engine_keyed_writes_a_keyed_chain_on_the_server(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    versions: dict[Any, list[tuple[Any, ...]]] = {}
    real = bench_postgres.run_engine

    def spy(settings: Any, *args: Any) -> Any:
        result = real(settings, *args)
        with psycopg.connect(str(settings.database)) as conn:  # before the schema is dropped
            found = conn.execute("SELECT first_id, version, key_id FROM audit_chain_versions")
            versions[settings.chain_key_file is None] = found.fetchall()
        return result

    monkeypatch.setattr(bench_postgres, "run_engine", spy)
    report = run_pg_bench(pg_url, 20, modes=("engine", "engine-keyed"))
    assert [(r.mode, r.rows_stored) for r in report.results] == [
        ("engine", 20),
        ("engine-keyed", 20),
    ]
    assert versions[True] == [(1, "1", None)]
    [(first, version, key_id)] = versions[False]
    assert (first, version, len(key_id)) == (1, "2", 16)
