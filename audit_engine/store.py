"""SQLite storage: schema and migrations (sqlite-utils), the batch insert, typed queries.

This is the only module that speaks SQL. Values always travel as parameters, never in the SQL text.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import sqlite_utils

from audit_engine.errors import AuditStoreError
from audit_engine.models import AuditEntry, Operation, Outcome

TABLE = "audit_entries"
SCHEMA_VERSION = 1

_COLUMNS = (
    "event_id",
    "timestamp",
    "actor",
    "action",
    "operation",
    "outcome",
    "resource_type",
    "resource_id",
    "correlation_id",
    "details",
    "critical",
)
_INSERT_SQL = (
    f"INSERT INTO {TABLE} ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"
)
_SELECT_SQL = f"SELECT id, {', '.join(_COLUMNS)} FROM {TABLE}"
_READ_CONTEXT = {"max_details_bytes": sys.maxsize}  # stored rows were checked when recorded


# -- schema -----------------------------------------------------------------------------------


def _create_v1(db: sqlite_utils.Database) -> None:
    table = db.table(TABLE)
    table.create(
        {
            "id": int,
            "event_id": str,
            "timestamp": str,
            "actor": str,
            "action": str,
            "operation": str,
            "outcome": str,
            "resource_type": str,
            "resource_id": str,
            "correlation_id": str,
            "details": str,
            "critical": int,
        },
        pk="id",
        not_null={"event_id", "timestamp", "action", "operation", "outcome", "details", "critical"},
    )
    # Indexes are most of SQLite's insert cost: one per common filter, no more.
    table.create_index(["event_id"], index_name="ux_audit_entries_event_id", unique=True)
    table.create_index(["timestamp"], index_name="ix_audit_entries_timestamp")
    table.create_index(["actor", "timestamp"], index_name="ix_audit_entries_actor_timestamp")
    table.create_index(["resource_type", "resource_id"], index_name="ix_audit_entries_resource")


# _MIGRATIONS[v] upgrades a database at user_version v to v + 1.
_MIGRATIONS = (_create_v1,)
assert len(_MIGRATIONS) == SCHEMA_VERSION


def _user_version(conn: sqlite3.Connection) -> int:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


def migrate(conn: sqlite3.Connection) -> None:
    """Create or upgrade the audit schema on ``conn`` to :data:`SCHEMA_VERSION`.

    Runs in its own ``BEGIN IMMEDIATE`` transaction (so two processes cannot both migrate), or in a
    savepoint of the caller's transaction when one is open (an injected connection).
    """
    version = _user_version(conn)
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise AuditStoreError(
            f"the audit database has schema version {version}; this audit_engine supports "
            f"up to {SCHEMA_VERSION}: upgrade audit_engine"
        )
    own_transaction = not conn.in_transaction
    conn.execute("BEGIN IMMEDIATE" if own_transaction else "SAVEPOINT audit_engine_migrate")
    try:
        db = sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)
        for step in _MIGRATIONS[_user_version(conn) :]:
            step(db)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        if own_transaction:
            _rollback(conn)
        elif conn.in_transaction:
            conn.execute("ROLLBACK TO audit_engine_migrate")
            conn.execute("RELEASE audit_engine_migrate")
        raise
    conn.execute("COMMIT" if own_transaction else "RELEASE audit_engine_migrate")


def _rollback(conn: sqlite3.Connection) -> None:
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
        conn = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=busy_timeout
        )
    except sqlite3.Error as exc:
        raise AuditStoreError(f"cannot open the audit database {path}: {exc}") from None
    try:
        if not create:
            # Check before any PRAGMA that writes: a foreign file is refused untouched.
            _check_audit_database(conn, path)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {'FULL' if synchronous == 'FULL' else 'NORMAL'}")
        migrate(conn)
        if create:
            # user_version said "current" but another application may own that number.
            _check_audit_database(conn, path)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise AuditStoreError(f"{path} is not a usable audit database: {exc}") from None
    except BaseException:
        conn.close()
        raise
    return conn


def _check_audit_database(conn: sqlite3.Connection, path: Path) -> None:
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)
    ).fetchone()
    if found is None:
        raise AuditStoreError(f"{path} is not an audit database (no {TABLE} table)")


# -- writes -----------------------------------------------------------------------------------


def format_timestamp(value: datetime) -> str:
    """The stored form of a timestamp: fixed-width ISO-8601 UTC, so text order is time order."""
    # isoformat() zero-pads the year (strftime's %Y does not below 1000) and always prints
    # microseconds with timespec set; every value is UTC, so "+00:00" becomes "Z".
    return value.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def entry_row(entry: AuditEntry) -> tuple[Any, ...]:
    """The values of ``entry`` in the order of the insert statement."""
    return (
        entry.event_id,
        format_timestamp(entry.timestamp),
        entry.actor,
        entry.action,
        entry.operation.value,
        entry.outcome.value,
        entry.resource_type,
        entry.resource_id,
        entry.correlation_id,
        entry.details_json,
        1 if entry.critical else 0,
    )


def insert_entries(conn: sqlite3.Connection, entries: Sequence[AuditEntry]) -> None:
    """Insert ``entries`` on ``conn`` in the current transaction (or autocommit), in order."""
    conn.executemany(_INSERT_SQL, [entry_row(e) for e in entries])


def write_batch(conn: sqlite3.Connection, entries: Sequence[AuditEntry]) -> None:
    """Commit ``entries`` in one transaction; on any error nothing of the batch is kept."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        insert_entries(conn, entries)
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def write_in_caller_transaction(conn: sqlite3.Connection, entry: AuditEntry) -> None:
    """Insert ``entry`` through a connection the application owns, without committing.

    The schema is created on first use (inside the caller's transaction, so a rollback undoes
    it too); the common path pays nothing for that check.
    """
    try:
        insert_entries(conn, (entry,))
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise
        migrate(conn)
        insert_entries(conn, (entry,))


def is_busy(exc: BaseException) -> bool:
    """Whether ``exc`` means another connection holds a lock (worth retrying)."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    message = str(exc)  # pragma: no cover - errors raised without a code (hand-made in tests)
    return "locked" in message or "busy" in message  # pragma: no cover


# -- reads ------------------------------------------------------------------------------------


def parse_row(row: dict[str, Any]) -> AuditEntry:
    """Turn a stored row back into an :class:`AuditEntry`."""
    data = {name: row[name] for name in _COLUMNS}
    data["details"] = json.loads(data["details"])
    data["critical"] = bool(data["critical"])
    return AuditEntry.model_validate(data, context=_READ_CONTEXT)


def _as_utc(value: datetime, name: str) -> str:
    if value.tzinfo is None:
        raise AuditStoreError(f"{name} must be timezone-aware (got a naive datetime)")
    return format_timestamp(value)


class AuditStore:
    """Typed reads of an existing audit database.

    ``AuditStore(path)`` opens the file (it must exist; a missing or foreign file raises
    :class:`~audit_engine.errors.AuditStoreError`). Use it as a context manager or call
    :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self._conn = open_connection(self.path, busy_timeout=busy_timeout, create=False)
        self._db = sqlite_utils.Database(
            self._conn, recursive_triggers=False, execute_plugins=False
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection. Idempotent."""
        self._conn.close()

    def query(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        operation: Operation | str | None = None,
        outcome: Outcome | str | None = None,
        resource_type: str | None = None,
        resource_id: str | None = None,
        correlation_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[AuditEntry]:
        """Entries matching every given filter, in commit order (or newest first).

        ``since`` is inclusive and ``until`` exclusive; both must be timezone-aware.
        """
        where, params = self._where(
            actor,
            action,
            operation,
            outcome,
            resource_type,
            resource_id,
            correlation_id,
            since,
            until,
        )
        sql = f"{_SELECT_SQL}{where} ORDER BY id {'DESC' if newest_first else 'ASC'}"
        if limit is not None:
            if limit < 0:
                raise AuditStoreError(f"limit must be zero or more (got {limit})")
            sql += " LIMIT ?"
            params.append(limit)
        return [parse_row(row) for row in self._db.query(sql, params)]

    def count(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        operation: Operation | str | None = None,
        outcome: Outcome | str | None = None,
        resource_type: str | None = None,
        resource_id: str | None = None,
        correlation_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> int:
        """How many entries match every given filter (the filters of :meth:`query`)."""
        where, params = self._where(
            actor,
            action,
            operation,
            outcome,
            resource_type,
            resource_id,
            correlation_id,
            since,
            until,
        )
        row = self._conn.execute(f"SELECT count(*) FROM {TABLE}{where}", params).fetchone()
        total: int = row[0]
        return total

    @staticmethod
    def _where(
        actor: str | None,
        action: str | None,
        operation: Operation | str | None,
        outcome: Outcome | str | None,
        resource_type: str | None,
        resource_id: str | None,
        correlation_id: str | None,
        since: datetime | None,
        until: datetime | None,
    ) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        equal: Iterable[tuple[str, Any]] = (
            ("actor", actor),
            ("action", action),
            ("operation", Operation(operation).value if operation is not None else None),
            ("outcome", Outcome(outcome).value if outcome is not None else None),
            ("resource_type", resource_type),
            ("resource_id", resource_id),
            ("correlation_id", correlation_id),
        )
        for column, value in equal:
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            clauses.append("timestamp >= ?")
            params.append(_as_utc(since, "since"))
        if until is not None:
            clauses.append("timestamp < ?")
            params.append(_as_utc(until, "until"))
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params
