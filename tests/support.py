"""Helpers shared by several test modules (importable because pytest puts tests/ on the path)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from audit_engine.models import AuditEntry
from audit_engine.rows import Row, entry_row


def dead_letter_line(entry: AuditEntry, error: str = "x") -> bytes:
    """One line of a dead-letter file holding ``entry`` (as the writer would write it)."""
    return json.dumps({"entry": entry.model_dump(mode="json"), "error": error}).encode() + b"\n"


def rows_of(entries: Iterable[AuditEntry]) -> list[Row]:
    """The stored rows of ``entries``: what storage and the dead-letter file take."""
    return [entry_row(entry) for entry in entries]


class DatabaseLock:
    """Another connection holding ``BEGIN EXCLUSIVE`` on the database; release() is idempotent."""

    def __init__(self, db_path: Path) -> None:
        self._guard = threading.Lock()
        self._conn = sqlite3.connect(
            db_path, isolation_level=None, check_same_thread=False, timeout=10
        )
        self._conn.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        with self._guard:
            if self._conn.in_transaction:
                self._conn.execute("COMMIT")

    def close(self) -> None:
        self.release()
        with self._guard:
            self._conn.close()


@contextlib.contextmanager
def locked(db_path: Path, release_after: float | None = None) -> Iterator[DatabaseLock]:
    """Hold the database locked; released after ``release_after`` seconds, or on exit."""
    lock = DatabaseLock(db_path)
    timer = threading.Timer(release_after, lock.release) if release_after is not None else None
    if timer is not None:
        timer.start()
    try:
        yield lock
    finally:
        if timer is not None:
            timer.cancel()
        lock.close()
