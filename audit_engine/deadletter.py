"""The dead-letter file: where accepted entries go when they cannot be committed.

One JSON object per line: ``{"entry": {...}, "error": "...", "failed_at": "..."}``. Every append is
flushed and fsynced before the writer counts the entries as dead-lettered, so "in the dead-letter
file" is as durable as "committed".
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from audit_engine.models import AuditEntry, utcnow

SUFFIX = ".deadletter.jsonl"
_READ_CONTEXT = {"max_details_bytes": sys.maxsize}  # checked when first recorded


def path_for(database: str | os.PathLike[str]) -> Path:
    """The dead-letter file that belongs to ``database``: ``<database>.deadletter.jsonl``."""
    return Path(f"{os.fspath(database)}{SUFFIX}")


class DeadLetterFile:
    """Appends entries that could not be written; safe to use from several threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def reset_after_fork(self) -> None:
        """In a forked child: a fresh lock (another thread may have held it at the fork)."""
        self._lock = threading.Lock()

    def append(self, entries: Sequence[AuditEntry], error: str) -> None:
        """Append ``entries`` with the reason they failed; returns once the lines are on disk."""
        failed_at = utcnow().isoformat()
        lines = "".join(
            json.dumps(
                {"entry": entry.model_dump(mode="json"), "error": error, "failed_at": failed_at},
                ensure_ascii=False,
            )
            + "\n"
            for entry in entries
        )
        data = lines.encode("utf-8")
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)


def read(path: Path) -> Iterator[tuple[int, AuditEntry | None, str]]:
    """Yield ``(line_number, entry, error)`` for each line; ``entry`` is None for a bad line."""
    # Bytes, decoded line by line: a line torn by a crash mid-write is reported, not fatal.
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
                entry = AuditEntry.model_validate(record["entry"], context=_READ_CONTEXT)
            except (ValueError, KeyError, TypeError) as exc:
                yield number, None, f"line {number}: {exc}"
                continue
            yield number, entry, str(record.get("error", ""))
