"""record() into PostgreSQL: the engine's throughput against the server's COPY ceiling.

Needs a server: set ``AUDIT_ENGINE_BENCH_PG_URL`` to a ``postgresql://`` URL of a database the
benchmark may create (and drop) scratch schemas in, named ``audit_bench_*``. Without it every
benchmark here is skipped with that message (asv: ``NotImplementedError`` in ``setup``). The
modes and how to read them: ``audit-engine bench --db URL`` in docs/performance.md, which this
runs once per suite run (``setup_cache``), engine and ceiling side by side.
"""

from __future__ import annotations

import os
from typing import Any

from audit_engine.cli.bench_postgres import run_pg_bench

URL_VARIABLE = "AUDIT_ENGINE_BENCH_PG_URL"
EVENTS = 20_000


def _report() -> dict[str, Any]:
    url = os.environ.get(URL_VARIABLE, "").strip()
    if not url:
        # Empty, not None: asv takes a None cache for "no setup_cache" and calls setup() and
        # the benchmarks without their argument, which fails instead of skipping.
        return {}
    report = run_pg_bench(url, EVENTS, modes=("engine", "ceiling"))
    return {r.mode: r.model_dump() for r in report.results} | {"fsync": report.fsync}


class PostgresThroughput:
    """One side-by-side run; each figure is a ``track_*`` of it."""

    timeout = 300

    def setup_cache(self) -> dict[str, Any]:
        return _report()

    def setup(self, report: dict[str, Any]) -> None:
        if not report:
            raise NotImplementedError(
                f"skipped: set {URL_VARIABLE} to a postgresql:// URL to benchmark PostgreSQL"
            )

    def track_engine_events_per_s(self, report: dict[str, Any]) -> float:
        return float(report["engine"]["events_per_s"])

    track_engine_events_per_s.unit = "events/s"  # type: ignore[attr-defined]

    def track_ceiling_events_per_s(self, report: dict[str, Any]) -> float:
        return float(report["ceiling"]["events_per_s"])

    track_ceiling_events_per_s.unit = "events/s"  # type: ignore[attr-defined]

    def track_engine_over_ceiling(self, report: dict[str, Any]) -> float:
        return float(report["engine"]["ratio_to_ceiling"])

    track_engine_over_ceiling.unit = "ratio"  # type: ignore[attr-defined]

    def track_caller_p99_us(self, report: dict[str, Any]) -> float:
        return float(report["engine"]["caller_p99_us"])

    track_caller_p99_us.unit = "us"  # type: ignore[attr-defined]
