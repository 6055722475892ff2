"""audit_engine: a thread-based write-behind audit engine for synchronous apps on SQLite.

>>> from audit_engine import AuditService, AuditSettings
>>> with AuditService(AuditSettings(database="app-audit.db")) as audit:  # doctest: +SKIP
...     audit.record(action="document.save", actor="alice", operation="update")
"""

from audit_engine.bus import DomainEvent, EventBus
from audit_engine.errors import (
    AuditEngineError,
    AuditQueueFull,
    AuditServiceClosed,
    AuditStoreError,
    AuditWriteError,
    EventDispatchError,
    InvalidEntryError,
    SettingsError,
)
from audit_engine.lifecycle import install_signal_handlers
from audit_engine.models import AuditEntry, AuditStats, Operation, Outcome
from audit_engine.service import AuditService
from audit_engine.settings import AuditSettings
from audit_engine.store import AuditStore

__version__ = "0.1.0"

__all__ = [
    "AuditEngineError",
    "AuditEntry",
    "AuditQueueFull",
    "AuditService",
    "AuditServiceClosed",
    "AuditSettings",
    "AuditStats",
    "AuditStore",
    "AuditStoreError",
    "AuditWriteError",
    "DomainEvent",
    "EventBus",
    "EventDispatchError",
    "InvalidEntryError",
    "Operation",
    "Outcome",
    "SettingsError",
    "__version__",
    "install_signal_handlers",
]
