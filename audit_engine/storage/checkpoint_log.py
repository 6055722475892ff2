"""The checkpoint log file (``checkpoint_file``): which paths may be one, and appending a line.

The writer appends one JSON object per signed checkpoint; verification reads the file back
(:mod:`audit_engine.storage.checkpoint_verify`). A line appended to a key file, the database or
another log would break it, or be lost in it, so such paths are refused at start.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from audit_engine.errors import SettingsError
from audit_engine.models import SignedCheckpoint

if TYPE_CHECKING:
    from audit_engine.settings import AuditSettings

__all__ = ["append_line", "check_log_file"]


def append_line(path: Path, checkpoint: SignedCheckpoint) -> None:
    """Append ``checkpoint`` to the JSON-lines file at ``path`` and fsync it.

    One ``write()`` of the whole line on an ``O_APPEND`` descriptor: lines of several writers
    sharing the file never interleave. The file is created 0600.
    """
    data = (checkpoint.model_dump_json() + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        before = os.fstat(fd).st_size
        if before and os.pread(fd, 1, before - 1) != b"\n":
            data = b"\n" + data  # after a torn line (a crash): ours starts on a line of its own
        written = os.write(fd, data)
        if written != len(data):  # a full disk: cut our fragment back, and say so
            if os.fstat(fd).st_size == before + written:  # nobody appended since
                os.ftruncate(fd, before)
            raise OSError(f"only {written} of {len(data)} bytes of the checkpoint were written")
        os.fsync(fd)
    finally:
        os.close(fd)


def check_log_file(path: Path, settings: AuditSettings) -> None:
    """Refuse a ``checkpoint_file`` the writer must not append to (review3 H2): one line
    appended to a key file, the database or another log breaks it, or is lost in it. A symlink
    is followed (as export's --output does): its target is what is compared and appended to."""
    if not path.parent.is_dir():
        raise SettingsError(f"checkpoint_file {path}: its directory does not exist")
    others: dict[str, Path | None] = {
        "the chain key file (chain_key_file)": settings.chain_key_file,
        "the signing key file (signing_key_file)": settings.signing_key_file,
        "the dead-letter file": settings.deadletter_file,
    }
    if not isinstance(settings.database, str):  # a PostgreSQL trail has no local files
        others["the database"] = settings.database
        for suffix in ("-wal", "-shm", "-journal"):
            others[f"the database's {suffix} file"] = Path(f"{settings.database}{suffix}")
    for what, other in others.items():
        if other is not None and _same_file(path, other):
            raise SettingsError(f"checkpoint_file {path} is {what}: it must be a file of its own")
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return  # created 0600 by the first checkpoint
    except OSError as exc:
        raise SettingsError(f"checkpoint_file {path} cannot be read: {exc}") from None
    if stat.S_ISDIR(mode):
        raise SettingsError(f"checkpoint_file {path} is a directory: name a file in it")
    if stat.S_ISREG(mode):
        _check_first_line(path)


def _check_first_line(path: Path) -> None:
    # An existing log starts with a checkpoint line; anything else is some other file.
    try:
        with open(path, "rb") as handle:
            first = handle.readline(1 << 20)
    except OSError as exc:
        raise SettingsError(f"checkpoint_file {path} cannot be read: {exc}") from None
    if not first:
        return
    try:
        record = json.loads(first)
    except ValueError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("note"), str):
        raise SettingsError(
            f"checkpoint_file {path} is not a checkpoint log: its first line is not a JSON "
            "object with a signed 'note' (name a new file, or the log the writer appends to)"
        )


def _same_file(path: Path, other: Path) -> bool:
    if os.path.realpath(path) == os.path.realpath(other):
        return True
    try:
        return os.path.samefile(path, other)  # a hard link
    except OSError:  # either is missing
        return False
