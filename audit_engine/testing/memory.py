"""``memory_service()``: a real AuditService whose trail is an in-memory SQLite database."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from audit_engine.pipeline.service import AuditService
from audit_engine.settings import AuditSettings

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
    so record from one thread at a time. The environment (``AUDIT_TRAIL_*``) is not read: the
    settings are the arguments and the defaults, whatever the shell or CI runner exports.
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


class _CodeOnly(AuditSettings):
    """Settings from the arguments and the defaults only: a test must not pass or fail by what
    the shell or the CI runner exports (``AUDIT_TRAIL_ENABLED=false``, ``..._LEVEL=all``)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


@contextmanager
def _in_memory(settings: dict[str, Any]) -> Iterator[AuditService]:
    unknown = sorted(set(settings) - set(AuditSettings.model_fields))
    if unknown:
        raise TypeError(f"memory_service() got an unexpected keyword argument {unknown[0]!r}")
    resolved = _CodeOnly(**settings)  # a bad value: SettingsError naming it, as AuditService()
    # check_same_thread=False: the block may end in another thread than it began in (a fixture).
    connection = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
    try:
        service = AuditService(resolved, connection=connection)
        try:
            yield service
        finally:
            service.close()
    finally:
        connection.close()
