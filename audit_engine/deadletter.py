"""The dead-letter file: where accepted entries go when they cannot be committed.

One JSON object per line: ``{"entry": {...}, "error": "...", "failed_at": "..."}``. Every append is
flushed and fsynced before the writer counts the entries as dead-lettered, so "in the dead-letter
file" is as durable as "committed".
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from audit_engine import store
from audit_engine.errors import AuditStoreError
from audit_engine.intake import Row
from audit_engine.models import AuditEntry, utcnow

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

SUFFIX = ".deadletter.jsonl"
_READ_CONTEXT = {"max_details_bytes": sys.maxsize}  # checked when first recorded


def path_for(database: str | os.PathLike[str]) -> Path:
    """The dead-letter file that belongs to ``database``: ``<database>.deadletter.jsonl``."""
    return Path(f"{os.fspath(database)}{SUFFIX}")


class DeadLetterFile:
    """Appends entries that could not be written; safe to use from several threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()

    def reset_after_fork(self) -> None:
        """In a forked child: a fresh lock (another thread may have held it at the fork)."""
        self._lock = threading.RLock()

    def append(self, entries: Sequence[AuditEntry | Row], error: str) -> None:
        """Append ``entries`` with the reason they failed; returns once the lines are on disk."""
        failed_at = utcnow().isoformat()
        lines = "".join(
            json.dumps(
                {"entry": _entry_object(entry), "error": error, "failed_at": failed_at},
                ensure_ascii=False,
            )
            + "\n"
            for entry in entries
        )
        data = lines.encode("utf-8")
        with self._lock, _file_lock(self.path):
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)


def _entry_object(entry: AuditEntry | Row) -> dict[str, Any]:
    """An entry as the JSON object of its fields (``details`` nested), from a model or a row."""
    if isinstance(entry, AuditEntry):
        return entry.model_dump(mode="json")
    return {
        **entry._asdict(),
        "details": json.loads(entry.details),
        "critical": bool(entry.critical),
    }


def deadletter_json(entry: AuditEntry | Row) -> str:
    """One entry as JSON text (the last resort when even the dead-letter file fails)."""
    return json.dumps(_entry_object(entry), ensure_ascii=False, separators=(",", ":"))


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An inter-process lock beside the dead-letter file (appends vs. a replay's rewrite)."""
    if fcntl is None:  # pragma: no cover - not POSIX: threads are still serialised
        yield
        return
    fd = os.open(f"{path}.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class ReplayReport(BaseModel):
    """What :func:`replay` did with a dead-letter file."""

    model_config = ConfigDict(frozen=True)

    replayed: int
    already_present: int
    kept: int
    errors: list[str]


def replay(path: Path, conn: sqlite3.Connection) -> ReplayReport:
    """Write the entries of the dead-letter file ``path`` through ``conn``, then drop their lines.

    Entries already in the database (same ``event_id``) are dropped too. Lines that cannot be
    read, or whose entry still cannot be written, stay in the file, which is rewritten atomically
    (or removed when empty); appends by a running writer wait for the rewrite.
    """
    if not path.exists():
        raise AuditStoreError(f"no dead-letter file at {path}")
    with path.open("rb") as head:
        if head.read(16) == b"SQLite format 3\x00":
            raise AuditStoreError(f"{path} is an SQLite database, not a dead-letter file")
    replayed = already = 0
    kept: list[bytes] = []
    errors: list[str] = []
    with _file_lock(path):
        raw_lines = path.read_bytes().splitlines(keepends=True)
        parsed = _parse(raw_lines)
        for raw, entry, problem in parsed:
            if entry is None:
                kept.append(raw)
                errors.append(problem)
                continue
            if store.has_event(conn, entry.event_id):
                already += 1
                continue
            try:
                store.write_batch(conn, (entry,))
            except sqlite3.Error as exc:
                kept.append(raw)
                errors.append(f"{entry.event_id}: {exc}")
                continue
            replayed += 1
        _rewrite(path, kept)
    return ReplayReport(replayed=replayed, already_present=already, kept=len(kept), errors=errors)


def _parse(raw_lines: list[bytes]) -> list[tuple[bytes, AuditEntry | None, str]]:
    # Kept lines are written back byte for byte, even a line that is not valid UTF-8.
    out: list[tuple[bytes, AuditEntry | None, str]] = []
    for number, raw in enumerate(raw_lines, start=1):
        if not raw.strip():
            continue
        entry, problem = _parse_line(number, raw)
        out.append((raw if raw.endswith(b"\n") else raw + b"\n", entry, problem))
    return out


def _parse_line(number: int, raw: bytes) -> tuple[AuditEntry | None, str]:
    """(entry, the error it was dead-lettered with), or (None, why the line is unreadable)."""
    try:
        record = json.loads(raw.decode("utf-8"))
        entry = AuditEntry.model_validate(record["entry"], context=_READ_CONTEXT)
    except (ValueError, KeyError, TypeError) as exc:
        return None, f"line {number}: {exc}"
    return entry, str(record.get("error", ""))


def _rewrite(path: Path, lines: list[bytes]) -> None:
    if not lines:
        path.unlink()
        return
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, b"".join(lines))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read(path: Path) -> Iterator[tuple[int, AuditEntry | None, str]]:
    """Yield ``(line_number, entry, error)`` for each line; ``entry`` is None for a bad line."""
    # Bytes, decoded line by line: a line torn by a crash mid-write is reported, not fatal.
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if raw.strip():
                yield (number, *_parse_line(number, raw))
