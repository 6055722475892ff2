"""Putting dead letters back: the dead-letter file and its side files, or a saved log.

Entries are written with their original ``event_id`` and ``timestamp`` at the end of the chain;
one already stored (its ``event_id`` holds the same entry) is skipped, one whose ``event_id`` holds
a different entry is kept. Nothing unreadable is ever thrown away.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import stat
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from audit_engine.errors import AuditStoreError
from audit_engine.models import AuditEntry, dump_details
from audit_engine.rows import Row, entry_row
from audit_engine.storage import backends
from audit_engine.storage.deadletter import LOG_MESSAGE, file_lock, parse_line, side_files
from audit_engine.storage.dialect import DATABASE_ERRORS, AnyConnection, dialect_of
from audit_engine.storage.linker import UNKEYED, Linker
from audit_engine.storage.sqlite.schema import TABLE

# Where a dead-letter object starts in a line of the file (after a torn fragment, say).
_MARKER = b'{"entry"'
# What precedes the dead-letter object in the writer's CRITICAL log line.
_LOG_MARKER = LOG_MESSAGE.encode("ascii")


class ReplayReport(BaseModel):
    """What a replay did."""

    model_config = ConfigDict(frozen=True)

    replayed: int
    already_present: int
    kept: int
    errors: list[str]
    # The files read; empty when there was nothing to replay (no dead-letter or side file).
    files: list[str] = Field(default_factory=list)


class _Tally:
    def __init__(self, conn: AnyConnection, linker: Linker) -> None:
        self.conn = conn
        self.linker = linker
        self.replayed = self.already = 0
        self.kept: list[bytes] = []
        self.errors: list[str] = []

    def put_back(self, raw: bytes, entry: AuditEntry, where: str) -> None:
        row = entry_row(entry)  # the dead-letter line's model, in the form storage takes
        stored = _stored(self.conn, entry.event_id)
        if stored is not None:
            if stored == row:
                self.already += 1
            else:  # another entry took its event_id: keep this one, loudly
                self.keep(
                    raw, f"{where}: event_id {entry.event_id} is already used by a different entry"
                )
            return
        try:
            backends.write_rows(self.conn, (row,), self.linker)
        except DATABASE_ERRORS as exc:
            self.keep(raw, f"{entry.event_id}: {exc}")
            return
        self.replayed += 1

    def keep(self, raw: bytes, problem: str) -> None:
        self.kept.append(raw if raw.endswith(b"\n") else raw + b"\n")
        self.errors.append(problem)

    def report(self, files: list[Path]) -> ReplayReport:
        return ReplayReport(
            replayed=self.replayed,
            already_present=self.already,
            kept=len(self.kept),
            errors=self.errors,
            files=[str(f) for f in files],
        )


def _stored(conn: AnyConnection, event_id: str) -> Row | None:
    """The stored form of the entry with ``event_id``, in its canonical text (None: not stored)."""
    found = conn.execute(
        f"SELECT {dialect_of(conn).fields} FROM {TABLE} WHERE event_id = ?", (event_id,)
    ).fetchone()
    if found is None:
        return None
    row = Row(*found)
    try:  # details as the engine writes them (a row stored by another tool may differ in form)
        details = json.loads(row.details)
        canonical = dump_details(details) if details else "{}"
    except (TypeError, ValueError, RecursionError):
        canonical = row.details
    return row._replace(details=canonical, critical=1 if row.critical else 0)


def replay(path: Path, conn: AnyConnection, linker: Linker = UNKEYED) -> ReplayReport:
    """Write the entries of the dead-letter file ``path`` and its side files through ``conn``.

    Lines put back, or already stored, are dropped. Lines that cannot be read (a torn fragment),
    or whose entry still cannot be written, are kept in ``path``, which is rewritten atomically
    (or removed when empty); side files are merged into it and removed. A file from which
    nothing was taken is left as it was. Appends by a running writer wait for the rewrite (or go
    to a new side file). Nothing to replay is not an error: the report then lists no files.

    Raises :class:`AuditStoreError`, changing nothing, for a path that is not a dead-letter file:
    the database or one of its own files, a symbolic link, a file that is not a regular file, one
    whose first line is not a dead-letter object (a binary file, a text file). Entries are
    linked with ``linker`` (keyed with the chain key, or not); an unkeyed one on a keyed trail
    raises :class:`AuditStoreError` before writing anything.
    """
    _refuse_database_files(path, conn)
    first = _read(path)
    if first is not None:
        _refuse_foreign(path, first)
    tally = _Tally(conn, linker)
    if first is None and not side_files(path):
        return tally.report([])  # without creating a lock file either
    with file_lock(path):
        main = _read(path)  # again: appended to meanwhile, perhaps
        if main is not None:
            _refuse_foreign(path, main)
        sides = [(side, _read(side) or b"") for side in side_files(path)]
        for number, raw in enumerate((main or b"").splitlines(keepends=True), 1):
            if raw.strip():
                _replay_line(tally, number, raw, "")
        taken = tally.replayed + tally.already > 0
        for side, content in sides:
            for number, raw in enumerate(content.splitlines(keepends=True), 1):
                if raw.strip():
                    _replay_line(tally, number, raw, f"{side.name} ")
        if taken or sides:
            _rewrite(path, tally.kept)
        for side, _ in sides:
            side.unlink()
    return tally.report(([path] if main is not None else []) + [side for side, _ in sides])


def _read(path: Path) -> bytes | None:
    """The content of the regular file ``path`` (None: there is none), never through a link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise AuditStoreError(f"{path} is a symbolic link; nothing was changed") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise AuditStoreError(f"{path} is not a regular file; nothing was changed")
    with open(fd, "rb") as file:
        return file.read()


def _refuse_database_files(path: Path, conn: AnyConnection) -> None:
    if not isinstance(conn, sqlite3.Connection):
        return  # a server's files are not local
    main = next((row[2] for row in conn.execute("PRAGMA database_list") if row[1] == "main"), "")
    if not main:  # pragma: no cover - an in-memory database has no files
        return
    here = os.path.realpath(path)
    if here == os.path.realpath(main):
        raise AuditStoreError(f"{path} is an SQLite database, not a dead-letter file")
    for suffix in ("-wal", "-shm", "-journal"):
        if here == os.path.realpath(f"{main}{suffix}"):
            raise AuditStoreError(
                f"{path} belongs to the audit database {main}, it is not a dead-letter file; "
                "nothing was changed"
            )


def _refuse_foreign(path: Path, content: bytes) -> None:
    """Refuse a file whose first line is not the start of a dead-letter object."""
    if content.startswith(b"SQLite format 3\x00"):
        raise AuditStoreError(f"{path} is an SQLite database, not a dead-letter file")
    first = next((line.strip() for line in content.splitlines() if line.strip()), b"")
    # A dead-letter line starts with its object; a torn first line, with a part of that start.
    if first and not (first.startswith(_MARKER) or _MARKER.startswith(first)):
        raise AuditStoreError(
            f'{path} is not a dead-letter file (its first line is not a {{"entry": ...}} '
            "object); nothing was changed"
        )


def _replay_line(tally: _Tally, number: int, raw: bytes, label: str) -> None:
    entry, problem = parse_line(number, raw)
    where = f"{label}line {number}"
    if entry is not None:
        tally.put_back(raw, entry, where)
        return
    # A line torn by a failed write, with a later entry appended to it by an older version: keep
    # the fragment, put the entry back.
    glued = raw.find(_MARKER, 1)
    if glued > 0:
        later, _ = parse_line(number, raw[glued:])
        if later is not None:
            tally.keep(raw[:glued], label + parse_line(number, raw[:glued])[1])
            tally.put_back(raw[glued:], later, where)
            return
    tally.keep(raw, label + problem)


def _rewrite(path: Path, lines: list[bytes]) -> None:
    if not lines:
        if path.exists():
            path.unlink()
        return
    tmp = path.with_name(path.name + ".tmp")
    # A stale tmp file (of any mode, any owner) is removed, never reused: the file we create
    # is 0600 whatever was there.
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(b"".join(lines))
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def replay_log(log: Path, conn: AnyConnection, linker: Linker = UNKEYED) -> ReplayReport:
    """Put back the entries a writer could only log (``audit entry LOST to disk, logged instead``).

    Only a line carrying that message, followed at once by a dead-letter object that ends the
    line, is replayed (whatever the log's prefix before the message); a line that carries the
    message but not a readable object is reported with its number; every other line is ignored.
    The log is trusted: whoever can write to it can add entries. It is not changed: replaying it
    twice finds the entries already stored.
    """
    try:
        content = log.read_bytes()
    except FileNotFoundError:
        raise AuditStoreError(f"no log file at {log}") from None
    tally = _Tally(conn, linker)
    for number, raw in enumerate(content.splitlines(), 1):
        start = raw.find(_LOG_MARKER)
        if start < 0:
            continue
        logged = raw[start + len(_LOG_MARKER) :]
        # The object starts right after the message, as the writer logs it.
        entry, problem = parse_line(number, logged if logged.startswith(b"{") else b"")
        if entry is None:
            tally.keep(raw, problem)
            continue
        tally.put_back(raw, entry, f"line {number}")
    return tally.report([log])
