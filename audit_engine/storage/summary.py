"""What an audit database holds, at a glance: the ``stats`` command's numbers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from audit_engine.storage.chain import VerifyReport
from audit_engine.storage.dialect import AnyConnection, dialect_of
from audit_engine.storage.sqlite.schema import CLEANUP_RUNS, TABLE


class CleanupRun(BaseModel):
    """One row of the cleanup-runs table."""

    model_config = ConfigDict(frozen=True)

    started_at: str
    finished_at: str
    cutoff: str
    rows_deleted: int
    batches: int
    duration_s: float


class StoreSummary(BaseModel):
    """Totals of an audit database (see ``AuditStore.summary()``)."""

    model_config = ConfigDict(frozen=True)

    #: The SQLite file, or the PostgreSQL URL (without its password).
    path: Path | str
    #: The file's bytes (with its -wal and -shm files); on PostgreSQL, the engine's tables'.
    file_bytes: int
    schema_version: int
    entries: int
    first_timestamp: str | None
    last_timestamp: str | None
    by_action: dict[str, int]
    by_operation: dict[str, int]
    by_outcome: dict[str, int]
    by_day: dict[str, int]
    chain: VerifyReport
    last_cleanup: CleanupRun | None


def _counts(conn: AnyConnection, expression: str) -> dict[str, int]:
    rows = conn.execute(
        f"SELECT {expression} AS k, count(*) FROM {TABLE} GROUP BY k ORDER BY k"
    ).fetchall()
    return {str(key): int(count) for key, count in rows}


def summarise(
    conn: AnyConnection,
    path: Path | str,
    *,
    size: int,
    schema_version: int,
    verify: Callable[[], VerifyReport],
) -> StoreSummary:
    """Aggregate the audit table on ``conn`` (in the caller's read snapshot)."""
    entries, first, last = conn.execute(
        f"SELECT count(*), min(timestamp), max(timestamp) FROM {TABLE}"
    ).fetchone()
    run: Any = conn.execute(
        f"SELECT started_at, finished_at, cutoff, rows_deleted, batches, duration_s "
        f"FROM {CLEANUP_RUNS} ORDER BY id DESC LIMIT 1"
    ).fetchone()
    return StoreSummary(
        path=path,
        file_bytes=size,
        schema_version=schema_version,
        entries=int(entries),
        first_timestamp=first,
        last_timestamp=last,
        by_action=_counts(conn, "action"),
        by_operation=_counts(conn, "operation"),
        by_outcome=_counts(conn, "outcome"),
        by_day=_counts(conn, dialect_of(conn).day),
        chain=verify(),
        last_cleanup=CleanupRun(
            started_at=run[0],
            finished_at=run[1],
            cutoff=run[2],
            rows_deleted=run[3],
            batches=run[4],
            duration_s=run[5],
        )
        if run
        else None,
    )
