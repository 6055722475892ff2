"""The dead-letter file: where accepted entries go when they cannot be committed.

One JSON object per line: ``{"entry": {...}, "error": "...", "failed_at": "..."}``. Every append
starts on a fresh line and is fsynced before the writer counts the entries as dead-lettered, so
"in the dead-letter file" is as durable as "committed".

Appends and a replay's rewrite are serialised by an ``flock`` on ``<file>.lock``. Nobody waits for
that lock without bound: an append that cannot get it in time (a long replay holds it, or
``close()`` ran out of time) writes a *side file* ``<file>.<pid>-<n>.jsonl`` instead, which a
replay reads too. Replay lives in :mod:`audit_engine.storage.replay`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from audit_engine import forks
from audit_engine.models import AuditEntry, utcnow
from audit_engine.rows import Row
from audit_engine.settings import DEADLETTER_SUFFIX, default_deadletter_path, is_database_url

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

SUFFIX = DEADLETTER_SUFFIX
# How long an append waits for the file lock before it writes a side file instead.
LOCK_WAIT_S = 5.0
_BACKOFF_START_S = 0.005
_BACKOFF_MAX_S = 0.2
# The message of the writer's CRITICAL log line for an entry it could not even dead-letter, right
# before the entry's dead-letter line; ``replay-deadletter --from LOG`` looks for it.
LOG_MESSAGE = "audit entry LOST to disk, logged instead: "
_SIDE_FILE = re.compile(r"\.(\d+)-(\d+)\.jsonl\Z")


def path_for(database: str | os.PathLike[str]) -> Path:
    """The default dead-letter file of ``database``: ``<database>.deadletter.jsonl`` beside a
    SQLite file; for a PostgreSQL URL, a file in the user's data directory (see
    :func:`audit_engine.settings.default_deadletter_path`)."""
    if is_database_url(database):
        return default_deadletter_path(str(database))
    return default_deadletter_path(Path(os.fspath(database)))


def side_files(path: Path) -> list[Path]:
    """The side files of ``path`` (``<path>.<pid>-<n>.jsonl``), oldest first."""
    found = []
    with contextlib.suppress(OSError):
        for candidate in path.parent.iterdir():
            name = candidate.name
            if name.startswith(path.name) and _SIDE_FILE.fullmatch(name[len(path.name) :]):
                found.append(candidate)
    return sorted(found, key=_mtime_then_name)


def _mtime_then_name(path: Path) -> tuple[float, str]:
    try:
        return path.stat().st_mtime, path.name
    except OSError:  # pragma: no cover - removed meanwhile
        return 0.0, path.name


class DeadLetterFile:
    """Appends entries that could not be written; safe to use from several threads and processes."""

    def __init__(self, path: Path, *, lock_wait_s: float = LOCK_WAIT_S) -> None:
        self.path = path
        self.lock_wait_s = lock_wait_s
        self._lock = threading.Lock()  # guards the side-file counter
        self._side_count = 0
        # Set when an append timed out on the lock: until one gets it again, appends try once
        # and go to a side file at once, rather than each waiting out a long replay.
        self._contended = False
        forks.register(self)

    def fork_gates(self) -> tuple[()]:
        """None: the fork need not wait for the counter's lock, the child replaces it.

        An append's descriptors are covered by the ``gate`` it is given (the writer's).
        """
        return ()

    def after_fork_in_child(self) -> None:
        """In a forked child: a fresh lock and side-file counter (the pid in their names differs).

        No descriptor outlives an append, so there is no handle to replace.
        """
        self._lock = threading.Lock()
        self._side_count = 0
        self._contended = False

    def append(
        self,
        rows: Sequence[Row],
        error: str,
        *,
        gate: contextlib.AbstractContextManager[Any] | None = None,
        abort: threading.Event | None = None,
    ) -> Path:
        """Append ``rows`` with the reason they failed; returns once the lines are on disk.

        Returns the file written: :attr:`path`, or a side file when the lock was not free within
        :attr:`lock_wait_s` (at once when ``abort`` is set, or while the last append found the lock
        taken). ``gate`` (the writer's fork gate) is
        held whenever a descriptor is open, never while waiting, so ``os.fork()`` never copies
        the lock into a child. Raises ``OSError`` if nothing could be written.
        """
        data = encode_lines(rows, error)
        if not self.path.parent.is_dir():
            # A URL trail's default is in the user's data directory, made on first use (0700).
            with contextlib.suppress(OSError):
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        hold = gate if gate is not None else contextlib.nullcontext()
        # A fresh event when none is given: one shared across a fork could be copied mid-wait.
        waiter = abort if abort is not None else threading.Event()
        wait_s = 0.0 if waiter.is_set() or self._contended else self.lock_wait_s
        deadline = time.monotonic() + wait_s
        delay = _BACKOFF_START_S
        while True:
            with hold:
                lock_fd = _try_lock(self.path)
                if lock_fd is not None:
                    self._contended = False
                    try:
                        _append_fresh_line(self.path, data)
                    finally:
                        _unlock(lock_fd)
                    return self.path
            remaining = deadline - time.monotonic()
            if remaining <= 0 or waiter.wait(min(delay, remaining)):
                break
            delay = min(delay * 2, _BACKOFF_MAX_S)
        self._contended = True
        with hold:
            return self._write_side_file(data)

    def _write_side_file(self, data: bytes) -> Path:
        # Written under a temporary name and linked into place once fsynced: a replay never
        # reads half a side file, and an old file of a dead process with our pid is not reused.
        while True:
            with self._lock:
                self._side_count += 1
                number = self._side_count
            final = Path(f"{self.path}.{os.getpid()}-{number}.jsonl")
            part = Path(f"{final}.part")
            try:
                fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            try:
                try:
                    _write_all(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.link(part, final)
            except FileExistsError:
                continue
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(part)
            _fsync_directory(final.parent)
            return final


def encode_lines(rows: Sequence[Row], error: str) -> bytes:
    """The dead-letter lines of ``rows`` as UTF-8, one failure time for the whole append."""
    failed_at = utcnow().isoformat()
    return b"".join(_encode(line_text(row, error, failed_at)) + b"\n" for row in rows)


def line_text(row: Row, error: str, failed_at: str, *, compact: bool = False) -> str:
    """One dead-letter line (without its newline): the entry, why it failed and when.

    Never raises for a row's content: a value JSON cannot hold is written as its ``str()``.
    ``compact`` (for log lines): no spaces and only ASCII, whatever the log's encoding.
    """
    record = {"entry": _entry_object(row), "error": error, "failed_at": failed_at}
    if compact:
        return json.dumps(record, ensure_ascii=True, separators=(",", ":"), default=str)
    return json.dumps(record, ensure_ascii=False, default=str)


def _encode(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (an entry that skipped validation) has no UTF-8 form; JSON's \u
        # escapes carry it, and the rest of the line stays as it was.
        return json.dumps(json.loads(text), ensure_ascii=True).encode("ascii")


def _entry_object(row: Row) -> dict[str, Any]:
    """A row as the JSON object of its entry's fields (``details`` nested, ``critical`` a bool)."""
    details: Any
    try:
        details = json.loads(row.details)
    except (TypeError, ValueError):  # not our JSON: keep the text as it was
        details = row.details
    return {**row._asdict(), "details": details, "critical": bool(row.critical)}


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _append_fresh_line(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` (the lock held), on a line of its own, fsynced."""
    fd = open_private(path, os.O_RDWR | os.O_APPEND)
    try:
        size = os.fstat(fd).st_size
        # A line torn by an earlier failure (or a crash) must not swallow this one.
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except BaseException:
            # Not counted as dead-lettered, so the caller logs these entries: cut the part
            # that did get written, or a replay would bring them back a second time.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def open_private(path: Path, flags: int) -> int:
    """Open (or create, ``0600``) the regular file ``path``, never through a symbolic link.

    A link planted at a dead-letter path would have entries appended to whatever it points to;
    it is refused, as is a FIFO or other special file, with an ``OSError`` naming ``path``.
    """
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "refusing to follow a symbolic link", str(path)) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return fd


def _fsync_directory(directory: Path) -> None:
    # A new name is durable only once its directory is; best effort (not every FS allows it).
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _try_lock(path: Path) -> int | None:
    """The descriptor holding the file lock, or None if another holds it now."""
    fd = open_private(Path(f"{path}.lock"), os.O_WRONLY)
    if fcntl is None:  # pragma: no cover - not POSIX: the writer's gate serialises threads
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:  # pragma: no cover - flock itself failing (no lock support)
        os.close(fd)
        raise
    return fd


def _unlock(fd: int) -> None:
    # Unlock explicitly before closing: a lock belongs to the open file description, which a
    # child forked meanwhile (outside our fork hook) would share and keep locked otherwise.
    try:
        if fcntl is not None:  # pragma: no branch - always, on POSIX
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold the dead-letter file's lock (a replay's rewrite), waiting as long as it takes."""
    fd = open_private(Path(f"{path}.lock"), os.O_WRONLY)
    try:
        if fcntl is not None:  # pragma: no branch - always, on POSIX
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        _unlock(fd)


# -- reading ----------------------------------------------------------------------------------

_READ_CONTEXT = {"max_details_bytes": sys.maxsize}  # checked when first recorded


def parse_line(number: int, raw: bytes) -> tuple[AuditEntry | None, str]:
    """(entry, the error it was dead-lettered with), or (None, why line ``number`` is bad).

    Never raises for a line's content: a torn fragment, a line that is not a dead-letter
    object, an invalid entry and one nested too deeply all become a one-line reason.
    """
    problem = _why_not_readable(raw.rstrip(b"\r\n"))
    if isinstance(problem, str):
        return None, f"line {number}: {problem}"
    record = problem
    try:
        entry = AuditEntry.model_validate(record["entry"], context=_READ_CONTEXT)
    except ValidationError as exc:
        return None, f"line {number}: {describe_invalid(exc)}"
    except RecursionError:  # pragma: no cover - the depth limit is checked before pydantic's
        return None, f"line {number}: nested too deeply to read"
    return entry, str(record.get("error", ""))


_NOT_DEAD_LETTER = 'not a dead-letter line (expected a JSON object with "entry")'
_TORN = "incomplete line (torn write?), kept"


def _why_not_readable(raw: bytes) -> dict[str, Any] | str:
    """The dead-letter object of a line (without its line end), or why there is none."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A write cut inside a multi-byte character ends the line mid-character.
        torn = exc.reason == "unexpected end of data" and raw.lstrip().startswith(b"{")
        return _TORN if torn else _NOT_DEAD_LETTER
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        # Cut short: the text ends inside a string, or where more was expected.
        stripped = text.rstrip()
        torn = stripped.startswith("{") and (
            exc.msg.startswith("Unterminated string") or exc.pos >= len(stripped)
        )
        return _TORN if torn else _NOT_DEAD_LETTER
    except RecursionError:
        return "nested too deeply to read"
    except ValueError as exc:  # an integer of more than 4300 digits
        return str(exc)
    if not isinstance(record, dict) or not isinstance(record.get("entry"), dict):
        return _NOT_DEAD_LETTER
    return record


def describe_invalid(exc: ValidationError) -> str:
    """A validation error on one line, field by field (the CLI's ``record`` form)."""
    problems = "; ".join(
        (f"{'.'.join(str(p) for p in error['loc'])}: " if error["loc"] else "")
        + error["msg"].removeprefix("Value error, ")
        for error in exc.errors()
    )
    return f"invalid entry: {problems}"


def read(path: Path) -> Iterator[tuple[int, AuditEntry | None, str]]:
    """Yield ``(line_number, entry, error)`` for each line; ``entry`` is None for a bad line."""
    # Bytes, decoded line by line: a line torn by a crash mid-write is reported, not fatal.
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if raw.strip():
                yield (number, *parse_line(number, raw))
