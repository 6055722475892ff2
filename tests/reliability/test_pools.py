"""``with multiprocessing.Pool() as pool: pool.map(work, ...)`` keeps every worker's entries.

``Pool.__exit__`` calls ``terminate()``, which ends the workers by SIGTERM once ``map()`` returned:
the entries each worker recorded are then typically still queued in its writer. A service in a
multiprocessing child drains on SIGTERM by itself (see docs/guarantees.md, "Pools"). Each test
runs the pool in a script of its own (``sys.executable``, bounded by a timeout) and counts rows.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TIMEOUT_S = 120
WORKERS = 4
TASKS = 16
PER_TASK = 400  # 6 400 entries in all

# Batches of 500 and a one-hour interval: nothing commits a worker's last partial batch except a
# drain, so whatever a SIGTERM kills before draining is lost.
POOL_SCRIPT = """
    import multiprocessing
    import os
    import sys

    from audit_engine import AuditService, AuditSettings

    METHOD, ORIGIN = sys.argv[1], sys.argv[2]


    def settings():
        # The database and the rest come from AUDIT_TRAIL_* variables, which every start method
        # passes to the workers.
        return AuditSettings(buffer_max_size=500, buffer_flush_interval=3600)


    # "inherited": the parent's service, which a forked worker inherits (fork only).
    # "import": made when the main module is imported, as spawn and forkserver workers do too.
    service = AuditService(settings()) if ORIGIN in ("inherited", "import") else None


    def work(task):
        global service
        if service is None:  # "lazy": the worker makes its own on its first task
            service = AuditService(settings())
        for i in range(int(os.environ["PER_TASK"])):
            service.record(action="pool.work", details={"task": task, "i": i})
        return int(os.environ["PER_TASK"])


    if __name__ == "__main__":
        context = multiprocessing.get_context(METHOD)
        with context.Pool(int(os.environ["WORKERS"])) as pool:
            recorded = sum(pool.map(work, range(int(os.environ["TASKS"])), chunksize=1))
        print(recorded, flush=True)
    """


def _rows(db_path: Path) -> int:
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM audit_entries").fetchone()[0])


def _run_pool(tmp_path: Path, method: str, origin: str) -> tuple[int, int]:
    """Run the pool script; (entries the workers recorded, rows in the database)."""
    script = tmp_path / "pool_script.py"
    script.write_text(textwrap.dedent(POOL_SCRIPT), encoding="utf-8")
    db_path = tmp_path / "audit.db"
    # Unmeasured, as users run it: coverage (``sigterm = true`` in pyproject.toml) installs a
    # SIGTERM handler of its own in every process it measures, which the engine rightly leaves
    # alone — and then a terminated worker saves coverage data instead of draining.
    unmeasured = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("COV_CORE_", "COVERAGE_"))
    }
    env = {
        **unmeasured,
        "AUDIT_TRAIL_DATABASE": str(db_path),
        "AUDIT_TRAIL_CLEANUP_ENABLED": "false",
        "AUDIT_TRAIL_BUSY_TIMEOUT": "30",
        "WORKERS": str(WORKERS),
        "TASKS": str(TASKS),
        "PER_TASK": str(PER_TASK),
    }
    result = subprocess.run(
        [sys.executable, str(script), method, origin],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    recorded = int(result.stdout)
    return recorded, _rows(db_path)


@pytest.mark.parametrize(
    ("method", "origin"),
    [
        ("fork", "lazy"),
        ("fork", "inherited"),
        ("spawn", "lazy"),
        ("spawn", "import"),
        ("forkserver", "lazy"),
        ("forkserver", "import"),
    ],
)
def test_a_pool_left_by_its_with_block_loses_no_worker_entry(
    tmp_path: Path, method: str, origin: str
) -> None:
    recorded, stored = _run_pool(tmp_path, method, origin)
    print(f"\n[Pool, {method}, service {origin}] recorded {recorded}, stored {stored}")
    assert recorded == TASKS * PER_TASK
    assert stored == recorded
