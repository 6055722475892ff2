"""``memory_service()``: a real AuditService whose trail is an in-memory SQLite database."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from audit_engine.pipeline.service import AuditService

# Settings of where and how entries are written, which a service on its own in-memory connection
# does not use (every entry is committed in record(), no writer thread, no file, no cleanup):
# accepted silently they would let a test believe it exercised them.
IGNORED_SETTINGS = (
    "database",
    "connection",
    "deadletter_path",
    "async_writes",
    "queue_maxsize",
    "buffer_max_size",
    "buffer_flush_interval",
    "on_full",
    "block_timeout",
    "critical_sync",
    "synchronous",
    "busy_timeout",
    "retention_days",
    "cleanup_enabled",
    "cleanup_batch_size",
    "cleanup_interval",
)


def memory_service(**settings: Any) -> AbstractContextManager[AuditService]:
    """An :class:`AuditService` on an in-memory SQLite trail, closed (with its connection) after.

    Validation, the context, the policy, redaction and the hash chain run as in production;
    nothing touches a file. Keyword arguments are settings (``level="writes_only"``,
    ``redact_fields=[...]``); those of where and how entries are written
    (:data:`IGNORED_SETTINGS`) are a TypeError naming them, since nothing here would use them.
    Every entry is committed in ``record()`` through the service's one connection (autocommit),
    so record from one thread at a time.
    """
    ignored = [name for name in IGNORED_SETTINGS if name in settings]
    if ignored:
        raise TypeError(
            f"memory_service() does not take {', '.join(ignored)}: its trail is in memory and "
            "every entry is committed in record() through its one connection; to test "
            "writing to a file, the writer thread or the queue, use "
            "AuditService(database=tmp_path / 'audit.db', ...)"
        )
    return _in_memory(settings)


@contextmanager
def _in_memory(settings: dict[str, Any]) -> Iterator[AuditService]:
    # check_same_thread=False: the block may end in another thread than it began in (a fixture).
    connection = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
    try:
        service = AuditService(connection=connection, **settings)
        try:
            yield service
        finally:
            service.close()
    finally:
        connection.close()
