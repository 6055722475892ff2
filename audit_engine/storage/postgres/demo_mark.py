"""The demo's mark on a PostgreSQL trail: simulated entries never go into a real trail.

A SQLite demo file carries its mark in the file header; a PostgreSQL trail carries it as the row
``('demo', ...)`` of ``audit_engine_meta``, written in the transaction that creates the tables.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg

from audit_engine.errors import AuditStoreError
from audit_engine.storage.dialect import BackendError
from audit_engine.storage.postgres.connection import (
    CHAIN_LOCK_CLASS,
    classify,
    connect,
    mask_url,
)
from audit_engine.storage.postgres.schema import META, migrate, schema_version

__all__ = ["DEMO_KEY", "claim_for_demo"]

DEMO_KEY = "demo"
_MIGRATION_LOCK = 0  # the lock migrate() takes: no other process creates the tables meanwhile


def claim_for_demo(url: str) -> None:
    """Create the engine's tables at ``url`` marked as a demo trail, or check that the trail
    there is one an earlier demo made.

    A trail without the mark (a real one, even an empty one) raises
    :class:`~audit_engine.errors.AuditStoreError` and is left exactly as it was.
    """
    try:
        conn = connect(url)
    except BackendError as exc:
        raise AuditStoreError(f"cannot connect to {mask_url(url)}: {exc}") from None
    try:
        _claim(conn, url)
    except psycopg.Error as exc:
        raise AuditStoreError(f"cannot open {mask_url(url)}: {classify(exc)}") from None
    finally:
        conn.close()


def _claim(conn: psycopg.Connection[Any], url: str) -> None:
    # One transaction under the migration lock: the tables and the mark appear together, so no
    # other process can see (and record into) an unmarked demo trail, nor create one meanwhile.
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (CHAIN_LOCK_CLASS, _MIGRATION_LOCK))
        if schema_version(conn) == 0:
            migrate(conn)
            conn.execute(
                f"INSERT INTO {META} (key, value) VALUES (%s, %s)",
                (DEMO_KEY, datetime.now(UTC).isoformat()),
            )
            return
        marked = conn.execute(f"SELECT 1 FROM {META} WHERE key = %s", (DEMO_KEY,)).fetchone()
    if marked is None:
        raise AuditStoreError(
            f"{mask_url(url)} holds an audit trail the demo did not make: it writes simulated "
            "entries only to a database without one, or to a trail an earlier demo made; "
            "choose another --db"
        )
