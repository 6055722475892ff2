"""`audit-engine bench --db postgresql://...`: the PostgreSQL modes side by side on a server."""

from __future__ import annotations

import json

import psycopg
from click.testing import CliRunner

from audit_engine.cli import main


def test_bench_on_a_url_runs_the_four_modes_and_leaves_nothing_behind(pg_url: str) -> None:
    result = CliRunner().invoke(main, ["bench", "--events", "60", "--db", pg_url, "--json"])

    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    modes = ["insert-commit", "engine", "engine-keyed", "ceiling"]
    assert [r["mode"] for r in report["results"]] == modes
    assert [r["rows_stored"] for r in report["results"]] == [60, 60, 60, 60]
    assert report["server"].startswith("15.")
    with psycopg.connect(pg_url) as conn:
        left = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'audit_bench_%'"
        ).fetchall()
    assert left == []  # every scratch schema dropped


def test_bench_db_takes_only_a_url() -> None:
    result = CliRunner().invoke(main, ["bench", "--events", "10", "--db", "trail.db"])

    assert result.exit_code == 1
    assert result.output == (
        "Error: --db takes a postgresql:// URL (the SQLite bench makes its own files)\n"
    )


def test_the_global_db_given_on_the_command_line_is_benched_too(pg_url: str) -> None:
    result = CliRunner().invoke(main, ["--db", pg_url, "bench", "--events", "20", "--json"])

    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["database"] == pg_url
    assert [r["rows_stored"] for r in report["results"]] == [20, 20, 20, 20]


def test_one_round_asked_for_on_a_url_is_what_the_postgresql_bench_runs(pg_url: str) -> None:
    result = CliRunner().invoke(
        main, ["bench", "--events", "20", "--rounds", "1", "--db", pg_url, "--json"]
    )

    assert result.exit_code == 0, result.output
    assert [r["rows_stored"] for r in json.loads(result.output)["results"]] == [20, 20, 20, 20]


def test_a_url_from_the_environment_alone_is_not_benched(pg_url: str) -> None:
    # A bench makes scratch schemas on the server: only a URL typed for it is used.
    result = CliRunner().invoke(
        main,
        ["bench", "--events", "20", "--rounds", "1", "--mode", "ceiling", "--json"],
        env={"AUDIT_TRAIL_DATABASE": pg_url},
    )

    assert result.exit_code == 0, result.output
    assert "sqlite" in json.loads(result.output)


def test_bench_on_a_url_prints_a_table_of_the_four_modes(pg_url: str) -> None:
    result = CliRunner().invoke(main, ["bench", "--events", "20", "--threads", "2", "--db", pg_url])

    assert result.exit_code == 0, result.output
    intro, header, *rows = result.output.splitlines()
    assert intro.startswith("Python ")
    assert "PostgreSQL 15." in intro
    assert intro.endswith("; 20 events, 2 recording thread(s)")
    assert header.split()[:3] == ["mode", "events", "events/s"]
    assert [row.split()[0] for row in rows] == [
        "insert-commit",
        "engine",
        "engine-keyed",
        "ceiling",
    ]
    assert rows[-1].split()[3:5] == ["-", "-"]  # the ceiling has no caller
    assert rows[-1].split()[-1] == "1.00"
