"""audit_engine: a thread-based write-behind audit engine for synchronous apps on SQLite.

>>> from audit_engine import AuditService, AuditSettings
>>> with AuditService(AuditSettings(database="app-audit.db")) as audit:  # doctest: +SKIP
...     audit.record(action="document.save", actor="alice", operation="update")
"""

from audit_engine.details import MAX_DETAILS_DEPTH
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
from audit_engine.integrations.logging import AuditHandler
from audit_engine.models import AuditEntry, AuditStats, Operation, Outcome, SignedCheckpoint
from audit_engine.pipeline.bus import DomainEvent, EventBus
from audit_engine.pipeline.lifecycle import install_signal_handlers
from audit_engine.pipeline.service import AuditService
from audit_engine.settings import AuditSettings
from audit_engine.storage.chain import ChainHead, VerifyReport
from audit_engine.storage.copying import CopyReport, copy_trail
from audit_engine.storage.exported import verify_exported_lines
from audit_engine.storage.proofs import ProofReport, verify_proof
from audit_engine.storage.replay import ReplayReport
from audit_engine.storage.retention import CleanupReport
from audit_engine.storage.store import AuditStore
from audit_engine.storage.summary import StoreSummary

__version__ = "0.1.0"

__all__ = [
    "MAX_DETAILS_DEPTH",
    "AuditEngineError",
    "AuditEntry",
    "AuditHandler",
    "AuditQueueFull",
    "AuditService",
    "AuditServiceClosed",
    "AuditSettings",
    "AuditStats",
    "AuditStore",
    "AuditStoreError",
    "AuditWriteError",
    "ChainHead",
    "CleanupReport",
    "CopyReport",
    "DomainEvent",
    "EventBus",
    "EventDispatchError",
    "InvalidEntryError",
    "Operation",
    "Outcome",
    "ProofReport",
    "ReplayReport",
    "SettingsError",
    "SignedCheckpoint",
    "StoreSummary",
    "VerifyReport",
    "__version__",
    "copy_trail",
    "install_signal_handlers",
    "verify_exported_lines",
    "verify_proof",
]
