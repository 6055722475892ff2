"""The audit database file: creation, schema and migrations (with sqlite-utils), connections.

The schema version is kept in the engine's own table (``audit_engine_meta``), never in ``PRAGMA
user_version``, which the application owning the file may use; :func:`migrate` upgrades an older
file in place with the frozen steps of :mod:`.migrations`, inside one ``BEGIN IMMEDIATE``
transaction.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path

import sqlite_utils

from audit_engine import columns, forks
from audit_engine.errors import AuditStoreError
from audit_engine.storage.anchors import ANCHORS as ANCHORS  # re-exported: the tables live here
from audit_engine.storage.anchors import CLEANUP_RUNS as CLEANUP_RUNS
from audit_engine.storage.sqlite import guard, migrations

logger = logging.getLogger("audit_engine.schema")  # the documented logger name

TABLE = "audit_entries"
SCHEMA_VERSION = 6


# The stored fields of an entry (defined once, in audit_engine.columns).
STORED_COLUMNS = columns.STORED_COLUMNS


# _MIGRATIONS[v] upgrades schema version v to v + 1 (frozen steps: see migrations.py).
_MIGRATIONS = migrations.STEPS
assert len(_MIGRATIONS) == SCHEMA_VERSION


def schema_version(conn: sqlite3.Connection) -> int:
    """The schema version of the audit tables on ``conn``, as recorded (0: no audit tables)."""
    return migrations.stored_version(conn)


def chain_versions(conn: sqlite3.Connection) -> list[tuple[int, str]]:
    """``(first_id, version)``: the canonical form (``chain.CHAIN_VERSION``) that hashes the
    entries from ``first_id`` on, up to the next pair's; every file so far records ``[(1, "1")]``.
    """
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
        (migrations.CHAIN_VERSIONS,),
    ).fetchone()
    if found is None:  # before the meta tables exist
        return []
    rows = conn.execute(
        f"SELECT first_id, version FROM {migrations.CHAIN_VERSIONS} ORDER BY first_id"
    )
    return [(int(first_id), str(version)) for first_id, version in rows]


def _refuse_newer(conn: sqlite3.Connection, version: int) -> None:
    # A file without the meta table is release 0.1.0's: its user_version can name no version
    # after the last that release wrote (a bigger number is someone else's, or damage).
    newest = SCHEMA_VERSION if migrations.has_engine_tables(conn) else migrations.LAST_USER_VERSION
    if version > newest:
        raise AuditStoreError(
            f"the audit database has schema version {version}; this audit_engine supports "
            f"up to {SCHEMA_VERSION}: upgrade audit_engine"
        )


def migrate(conn: sqlite3.Connection) -> None:
    """Create or upgrade the audit schema on ``conn`` to :data:`SCHEMA_VERSION`.

    The version is kept in the engine's own meta table; ``PRAGMA user_version`` is never
    written (it belongs to the application owning the file) and only read to recognise a file
    made by release 0.1.0, which is brought under the meta table here.

    Runs in its own ``BEGIN IMMEDIATE`` transaction (so two processes cannot both migrate), or in a
    savepoint of the caller's transaction when one is open (an injected connection).
    """
    version = migrations.stored_version(conn)
    if version == SCHEMA_VERSION and migrations.has_engine_tables(conn):
        return
    _refuse_newer(conn, version)
    own_transaction = not conn.in_transaction
    conn.execute("BEGIN IMMEDIATE" if own_transaction else "SAVEPOINT audit_engine_migrate")
    try:
        # Read again under the lock: another process may have migrated meanwhile.
        version = migrations.stored_version(conn)
        _refuse_newer(conn, version)
        if not migrations.has_engine_tables(conn):
            migrations.create_engine_tables(conn)
        db = sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)
        for step in _MIGRATIONS[version:]:
            step(db)
        migrations.set_stored_version(conn, SCHEMA_VERSION)
    except BaseException:
        if own_transaction:
            rollback_quietly(conn)
        elif conn.in_transaction:
            conn.execute("ROLLBACK TO audit_engine_migrate")
            conn.execute("RELEASE audit_engine_migrate")
        raise
    conn.execute("COMMIT" if own_transaction else "RELEASE audit_engine_migrate")


def rollback_quietly(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if any, ignoring a transaction the error already ended."""
    if conn.in_transaction:
        # The failed statement may already have ended the transaction.
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _create_private_file(path: Path) -> None:
    # Audit trails hold personal data: the file is readable by its owner only (SQLite gives the
    # -wal and -shm files the same mode).
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise AuditStoreError(f"cannot create the audit database {path}: {exc.strerror}") from None
    os.close(fd)


# Group or other may read or write: audit data is personal data (execute bits do not matter).
_LOOSE_BITS = stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH


def loose_permissions(path: str | os.PathLike[str]) -> str | None:
    """A warning when the database at ``path``, its -wal, -shm or dead-letter file can be read or
    written by group or others; None when they are private (or missing).
    """
    path = Path(path)
    loose = []
    for candidate in (path, *(Path(f"{path}{s}") for s in ("-wal", "-shm", ".deadletter.jsonl"))):
        try:
            mode = stat.S_IMODE(candidate.stat().st_mode)
        except OSError:  # absent (no -wal yet), or not ours to look at
            continue
        if mode & _LOOSE_BITS:
            loose.append(f"{candidate.name} has mode {mode:04o}")
    if not loose:
        return None
    return (
        f"the audit trail {path} can be read or written by other users ({', '.join(loose)}); "
        f"it holds sensitive data: chmod 600 {path}*"
    )


class _WarnedOnce:
    """The files already warned about: once per process, as a service opens several connections.

    The lock is held only to check and add a path, by whichever thread opens a connection — the
    writer's or the cleanup thread's, under their fork gates — so the fork does not wait for it
    (that would take two gates in two orders); the child replaces it instead.
    """

    def __init__(self) -> None:
        self.paths: set[Path] = set()
        self.lock = threading.Lock()
        forks.register(self)

    def first(self, path: Path) -> bool:
        """Whether ``path`` is warned about for the first time (and remember it)."""
        with self.lock:
            if path in self.paths:
                return False
            self.paths.add(path)
            return True

    def fork_gates(self) -> tuple[()]:
        return ()

    def after_fork_in_child(self) -> None:
        self.lock = threading.Lock()  # the parent's may have been held by a thread not copied


_warned = _WarnedOnce()


def _warn_if_loose(path: Path) -> None:
    warning = loose_permissions(path)
    if warning is not None and _warned.first(path.resolve()):
        logger.warning("%s", warning)


# How long opening a database waits for another connection's lock while it sets up the file
# (WAL mode, the schema), when busy_timeout is shorter.
SETUP_BUSY_TIMEOUT_S = 10.0


def _use_wal(conn: sqlite3.Connection, deadline: float) -> None:
    # Switching a file to WAL fails at once while another connection holds a lock on it:
    # SQLite calls no busy handler there. So retry, with backoff, until the setup deadline.
    delay = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)  # nothing to wait on: the lock is another process's
        delay = min(delay * 2, 0.1)


def open_connection(
    path: str | os.PathLike[str],
    *,
    synchronous: str = "NORMAL",
    busy_timeout: float = 5.0,
    create: bool = True,
) -> sqlite3.Connection:
    """Open ``path`` in WAL mode with the schema in place, in autocommit mode (explicit BEGINs).

    With ``create=False`` a missing file is an error instead of a new empty database.
    """
    path = Path(path)
    if not path.exists():
        if not create:
            raise AuditStoreError(f"no audit database at {path}")
        if not path.parent.is_dir():
            raise AuditStoreError(f"cannot create the audit database {path}: no such directory")
        _create_private_file(path)
    elif path.is_dir():
        raise AuditStoreError(f"{path} is a directory, not an audit database")
    try:
        # Setting up waits longer than a short busy_timeout (the writer's is 0.25 s): another
        # process creating or migrating the same file holds the lock for that long, and a
        # service must not fail to start because a sibling (a pool worker) started first.
        conn = sqlite3.connect(
            str(path),
            isolation_level=None,
            check_same_thread=False,
            timeout=max(busy_timeout, SETUP_BUSY_TIMEOUT_S),
        )
    except sqlite3.Error as exc:
        raise AuditStoreError(f"cannot open the audit database {path}: {exc}") from None
    try:
        if not create:
            # Check before any PRAGMA that writes: a foreign file is refused untouched.
            _check_audit_database(conn, path)
        _use_wal(conn, time.monotonic() + max(busy_timeout, SETUP_BUSY_TIMEOUT_S))
        conn.execute(f"PRAGMA synchronous = {'FULL' if synchronous == 'FULL' else 'NORMAL'}")
        migrate(conn)
        if create:
            # The meta table said "current": check the entries table is really there.
            _check_audit_database(conn, path)
        keep_guard(conn, path)
        _warn_if_loose(path)  # after the PRAGMAs: the -wal and -shm files exist by now
        conn.execute(f"PRAGMA busy_timeout = {round(busy_timeout * 1000)}")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise AuditStoreError(f"{path} is not a usable audit database: {exc}") from None
    except BaseException:
        conn.close()
        raise
    return conn


def keep_guard(conn: sqlite3.Connection, path: str | os.PathLike[str]) -> None:
    """Create the append-only guard again when a trigger of it is gone, logging a WARNING.

    A tool that rebuilds a table (``sqlite-utils transform``) drops its triggers silently, and
    nothing else would ever put them back. One ``sqlite_master`` query when all is in place; else
    its own ``BEGIN IMMEDIATE`` transaction. A read-only connection cannot: it only warns.
    """
    gone = guard.missing(conn)
    if not gone:
        return
    what = (
        f"the append-only guard of {path} was missing {len(gone)} "
        f"trigger{'s' if len(gone) > 1 else ''} ({', '.join(gone)})"
    )
    why = "a tool rebuilt or altered the audit tables — verify the trail"
    try:
        conn.execute("BEGIN IMMEDIATE")
        if guard.missing(conn):  # again under the lock: another process may have done it
            guard.recreate(conn)
        conn.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        rollback_quietly(conn)
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF != sqlite3.SQLITE_READONLY:
            raise
        logger.warning("%s: NOT recreated (the connection is read-only); %s", what, why)
        return
    except BaseException:
        rollback_quietly(conn)
        raise
    logger.warning("%s: recreated; %s", what, why)


def _check_audit_database(conn: sqlite3.Connection, path: Path) -> None:
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)
    ).fetchone()
    if found is None:
        raise AuditStoreError(f"{path} is not an audit database (no {TABLE} table)")


def is_busy(exc: BaseException) -> bool:
    """Whether ``exc`` means another connection holds a lock (worth retrying)."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    message = str(exc)  # pragma: no cover - errors raised without a code (hand-made in tests)
    return "locked" in message or "busy" in message  # pragma: no cover
