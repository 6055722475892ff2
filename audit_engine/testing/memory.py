"""``memory_service()``: a real AuditService whose trail is an in-memory SQLite database."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from audit_engine.pipeline.service import AuditService


@contextmanager
def memory_service(**settings: Any) -> Iterator[AuditService]:
    """An :class:`AuditService` on an in-memory SQLite trail, closed (with its connection) after.

    Validation, the context, the policy, redaction and the hash chain run as in production;
    nothing touches a file. Keyword arguments are settings (``level="writes_only"``,
    ``redact_keys=[...]``). Every entry is committed in ``record()`` through the service's one
    connection (autocommit), so record from one thread at a time.
    """
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
