"""Exceptions raised by audit_engine.

Every exception the engine raises on purpose derives from :class:`AuditEngineError`, so an
application (or the CLI) can catch the whole family in one place. Errors about bad input also
derive from :class:`ValueError`, so code that already handles pydantic's ``ValidationError``
(itself a ``ValueError``) handles them too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


class AuditEngineError(Exception):
    """Base class of every error raised by audit_engine."""


class SettingsError(AuditEngineError, ValueError):
    """A setting (or its ``AUDIT_TRAIL_*`` environment variable) has a bad value."""


class InvalidEntryError(AuditEngineError, ValueError):
    """An audit entry failed a check the model alone cannot make (for example a size limit)."""


class AuditServiceClosed(AuditEngineError):
    """``record()`` was called on a service after ``close()``."""


class AuditQueueFull(AuditEngineError):
    """The queue stayed full for longer than ``block_timeout``; the entry was not recorded."""


class AuditWriteError(AuditEngineError):
    """A synchronous write (sync mode, injected connection, or ``on_full='sync'``) failed."""


class AuditStoreError(AuditEngineError):
    """The database is missing, is not an audit database, or cannot be read."""


class EventDispatchError(AuditEngineError):
    """One or more event handlers raised; every handler still ran.

    ``failures`` holds ``(handler, exception)`` pairs in the order the handlers ran.
    """

    def __init__(
        self,
        event_type: str,
        failures: Sequence[tuple[Callable[..., object], BaseException]],
    ) -> None:
        self.event_type = event_type
        self.failures = list(failures)
        names = ", ".join(
            f"{getattr(handler, '__qualname__', repr(handler))}: {exc!r}"
            for handler, exc in self.failures
        )
        super().__init__(f"{len(self.failures)} handler(s) failed for {event_type!r}: {names}")
