"""Where the writer puts what it cannot commit: the dead-letter file, else the log.

Counted in the order of trust: ``dead_lettered`` entries are on disk (fsynced) and a replay puts
them back; ``logged_only`` entries exist only as CRITICAL log lines in the dead-letter line
format, which ``audit-engine replay-deadletter --from LOG`` reads. A caller waiting for one
entry (``critical_sync``) can ask which of the two happened to it, and why.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from audit_engine.models import utcnow
from audit_engine.rows import Row
from audit_engine.storage.deadletter import LOG_MESSAGE, DeadLetterFile, line_text

# The writer's logger: operators route "audit_engine.writer" CRITICAL records off the full disk.
logger = logging.getLogger("audit_engine.writer")


class SetAside:
    """Counts and records entries set aside; safe to use from several threads."""

    def __init__(self, file: DeadLetterFile) -> None:
        self.file = file
        self.dead_lettered = 0
        self.logged_only = 0
        self.last_error: str | None = None  # why the last entries could only be logged
        self._lock = threading.Lock()  # the writer and a timed-out close() may both get here
        # id(row) -> None while its caller waits, or why it was not committed. By identity: the
        # waiting caller keeps the row alive, so its id cannot be reused meanwhile.
        self._watched: dict[int, str | None] = {}
        # The files written while someone keeps track (close() timing out names them).
        self._tracked: list[Path] | None = None

    def watch(self, entry: Row) -> None:
        """Remember what happens to ``entry`` (this object); call before it is queued."""
        with self._lock:
            self._watched[id(entry)] = None

    def outcome(self, entry: Row) -> str | None:
        """Stop watching ``entry``: why it was not committed, or None."""
        with self._lock:
            return self._watched.pop(id(entry), None)

    def track(self) -> None:
        """From now on, remember which files entries are set aside in (see :meth:`tracked`)."""
        with self._lock:
            self._tracked = []

    def tracked(self) -> list[Path]:
        """Stop remembering: the files written since :meth:`track`, in the order first used."""
        with self._lock:
            files, self._tracked = self._tracked or [], None
        return files

    @property
    def watching(self) -> int:
        """How many entries are watched now."""
        return len(self._watched)

    def put(
        self,
        rows: Sequence[Row],
        error: str,
        *,
        gate: contextlib.AbstractContextManager[Any],
        abort: threading.Event,
    ) -> None:
        """Append ``rows`` to the dead-letter file; if even that fails, log them. Never raises."""
        if not rows:
            return
        try:
            where = self.file.append(rows, error, gate=gate, abort=abort)
        except Exception as exc:
            self._log(rows, error, exc)
            return
        with self._lock:
            self.dead_lettered += len(rows)
            if self._tracked is not None and where not in self._tracked:
                self._tracked.append(where)
            self._note(rows, f"{error}; it is in the dead-letter file {where}")
        logger.error("%d audit entries moved to %s: %s", len(rows), where, error)

    def _log(self, rows: Sequence[Row], error: str, exc: Exception) -> None:
        # Last resort: each entry goes to the log as a dead-letter line, which
        # `audit-engine replay-deadletter --from LOG` can bring back.
        self.last_error = f"dead-letter file not writable: {exc}"
        failed_at = utcnow().isoformat()
        with self._lock:
            self.logged_only += len(rows)
            self._note(
                rows,
                f"{error}; the dead-letter file could not be written either ({exc}): "
                "it is only in the log, at CRITICAL",
            )
        for entry in rows:
            logger.critical(
                LOG_MESSAGE + "%s",
                line_text(entry, error, failed_at, compact=True),
            )

    def _note(self, rows: Sequence[Row], why: str) -> None:
        # Under _lock. Usually nobody watches: one dict lookup per row set aside.
        if self._watched:
            for row in rows:
                if id(row) in self._watched:
                    self._watched[id(row)] = why
