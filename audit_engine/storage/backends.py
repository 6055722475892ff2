"""Which backend a database names, and opening it: a path is SQLite, a ``postgresql://`` URL
PostgreSQL.

The pipeline and :class:`~audit_engine.storage.store.AuditStore` open their sinks and
connections here, so they never name a backend. The PostgreSQL backend is imported only when a
URL asks for it: psycopg is an optional extra (``pip install 'audit-engine[postgres]'``), and a
URL without it fails with an error that says so.
"""

from __future__ import annotations

import importlib
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from audit_engine.errors import SettingsError
from audit_engine.rows import Row
from audit_engine.settings import AuditSettings, describe_database, resolve_database
from audit_engine.storage.base import ChainSink, Tail
from audit_engine.storage.dialect import AnyConnection
from audit_engine.storage.linker import UNKEYED, Linker, newest_version, refuse_unkeyed
from audit_engine.storage.sqlite import append, schema
from audit_engine.storage.sqlite.sink import SqliteSink

__all__ = [
    "POSTGRES_EXTRA",
    "InjectedBatchWriter",
    "InjectedWriter",
    "check_reachable",
    "describe",
    "injected_batch_writer",
    "injected_writer",
    "open_sink",
    "open_trail",
    "permission_warning",
    "postgres",
    "write_rows",
]

POSTGRES_EXTRA = "pip install 'audit-engine[postgres]'"

# Writes one row through a connection the application owns, inside its transaction.
InjectedWriter = Callable[[Row], None]
# Writes rows through a connection the application owns, inside its transaction, all or none.
InjectedBatchWriter = Callable[[Sequence[Row]], None]


def postgres() -> ModuleType:
    """The PostgreSQL backend, imported on first use; a clear error when psycopg is missing."""
    try:
        return importlib.import_module("audit_engine.storage.postgres")
    except ImportError as exc:
        if exc.name is None or not exc.name.startswith("psycopg"):
            raise
        raise SettingsError(
            "a postgresql:// database needs the PostgreSQL backend, which needs psycopg: "
            f"{POSTGRES_EXTRA}"
        ) from None


def open_sink(settings: AuditSettings, busy_timeout: float, linker: Linker = UNKEYED) -> ChainSink:
    """The writer's sink for ``settings.database``; one wait for a lock (SQLite's write lock,
    PostgreSQL's advisory lock on the chain) lasts at most ``busy_timeout`` seconds. Rows are
    linked by ``linker``; an unkeyed one on a keyed SQLite trail is refused here
    (:class:`~audit_engine.errors.AuditStoreError`), on PostgreSQL by :func:`check_reachable`
    and at its connection."""
    database = settings.database
    if isinstance(database, str):
        sink: ChainSink = postgres().PostgresSink(
            database, lock_timeout_s=busy_timeout, linker=linker
        )
        return sink
    conn = schema.open_connection(
        database, synchronous=settings.synchronous, busy_timeout=busy_timeout
    )
    try:
        refuse_unkeyed(newest_version(conn), linker)
    except BaseException:
        conn.close()
        raise
    return SqliteSink(conn, largest=settings.buffer_max_size, linker=linker)


def open_trail(
    database: str | os.PathLike[str],
    *,
    busy_timeout: float = 5.0,
    create: bool = False,
    synchronous: str = "NORMAL",
) -> AnyConnection:
    """A trail connection for the shared storage code (reads, purge, replay) to ``database``.

    A SQLite file must exist unless ``create``; a PostgreSQL database must hold the engine's
    tables unless ``create`` (which creates or migrates them). One wait for a lock lasts at most
    ``busy_timeout`` seconds on either.
    """
    resolved = resolve_database(database)
    if isinstance(resolved, str):
        trail: AnyConnection = postgres().open_trail(
            resolved, create=create, lock_timeout_s=busy_timeout
        )
        return trail
    return schema.open_connection(
        resolved, busy_timeout=busy_timeout, create=create, synchronous=synchronous
    )


def check_reachable(database: Path | str, linker: Linker = UNKEYED) -> None:
    """For a PostgreSQL URL: connect once, creating or migrating the tables, or raise
    :class:`~audit_engine.errors.AuditStoreError` naming why (a server that cannot be reached, a
    database or role that does not exist, a wrong password). A SQLite file is opened by its sink.

    Called when a service starts, so a wrong URL fails there; an outage later is waited out.
    An unkeyed ``linker`` on a keyed trail is refused there too.
    """
    if isinstance(database, str):
        trail = postgres().open_trail(database, create=True)
        try:
            refuse_unkeyed(newest_version(trail), linker)
        finally:
            trail.close()


def permission_warning(database: Path | str) -> str | None:
    """A warning when a SQLite trail's file is readable by others (a server has its own rights)."""
    if isinstance(database, str):
        return None
    return schema.loose_permissions(database)


def injected_writer(
    conn: object, what: str, linker: Linker = UNKEYED, busy_timeout: float | None = None
) -> tuple[InjectedWriter, Callable[[], None]]:
    """:func:`injected_batch_writer` for one row at a time (``record()``)."""
    write_many, migrate = injected_batch_writer(conn, what, linker, busy_timeout)
    return lambda row: write_many((row,)), migrate


def injected_batch_writer(
    conn: object, what: str, linker: Linker = UNKEYED, busy_timeout: float | None = None
) -> tuple[InjectedBatchWriter, Callable[[], None]]:
    """How to write through a connection the application passed (``connection=``).

    Returns (write rows inside the caller's transaction, all or none, in one step: one wait for
    the lock, one read of the tail, one insert of them all; create or migrate the schema and
    refuse an unkeyed ``linker`` on a keyed trail). Rows are linked by ``linker``.
    A ``sqlite3.Connection``, a ``psycopg.Connection``, or a SQLAlchemy ``Session``,
    ``scoped_session`` or ``Connection`` whose driver connection is one of those (unwrapped at
    every write, so a service holding a session follows it from one transaction to the next);
    anything else raises ``TypeError`` naming ``what`` (the argument) and what is supported —
    for SQLAlchemy, from its dialect, before anything begins on it.
    On PostgreSQL one wait for the chain's advisory lock lasts at most ``busy_timeout`` seconds
    (None: the connection's own ``lock_timeout``); on SQLite the connection's own busy timeout
    (``sqlite3.connect(timeout=...)``) bounds the wait for the write lock.
    """
    if isinstance(conn, sqlite3.Connection):
        sqlite_conn = conn
        return (
            lambda rows: append.write_many_in_caller_transaction(sqlite_conn, rows, linker),
            lambda: _migrate_sqlite(sqlite_conn, linker),
        )
    # A psycopg connection can only come from an application that imported psycopg.
    psycopg: Any = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(conn, psycopg.Connection):
        backend = postgres()
        pg_conn = conn
        return (
            lambda rows: backend.write_many_in_caller_transaction(
                pg_conn, rows, linker, busy_timeout
            ),
            lambda: backend.migrate_caller_connection(pg_conn, linker),
        )
    if _is_sqlalchemy(conn):
        return _sqlalchemy_writer(conn, what, linker, busy_timeout)
    raise TypeError(f"{what} must be {_SUPPORTED}; got {type(conn).__name__}")


_SUPPORTED = (
    "None or the caller's transaction to write the entry in: a sqlite3.Connection, a "
    "psycopg.Connection, or a SQLAlchemy Session or Connection on either driver "
    "(sqlite+pysqlite, postgresql+psycopg)"
)
# The SQLAlchemy dialects whose DBAPI connections are the ones above: (name, driver) and the
# DBAPI module it loaded (create_engine(module=...) can swap that for another driver's).
_SQLALCHEMY_DRIVERS = {
    ("sqlite", "pysqlite"): frozenset({"sqlite3", "sqlite3.dbapi2"}),
    ("postgresql", "psycopg"): frozenset({"psycopg"}),
}


def _is_sqlalchemy(conn: object) -> bool:
    """Whether ``conn`` is a SQLAlchemy Session, scoped_session or Connection (never importing
    SQLAlchemy: an application that holds one has imported it)."""
    orm: Any = sys.modules.get("sqlalchemy.orm")
    if orm is not None and isinstance(conn, (orm.Session, orm.scoped_session)):
        return True
    engine: Any = sys.modules.get("sqlalchemy.engine")
    return engine is not None and isinstance(conn, engine.Connection)


def _sqlalchemy_writer(
    conn: Any, what: str, linker: Linker, busy_timeout: float | None
) -> tuple[InjectedBatchWriter, Callable[[], None]]:
    """The writer for a SQLAlchemy Session, scoped_session or Connection: the driver is checked
    now, from the dialect, so a refused one leaves the application's session as it was (nothing
    begun, no connection checked out); each write unwraps again, because a session's connection
    changes from one transaction to the next (and a scoped_session's session too)."""
    if _sqlalchemy_dialect(conn, what).name == "sqlite":

        def write_sqlite(rows: Sequence[Row]) -> None:
            append.write_many_in_caller_transaction(_unwrap_sqlalchemy(conn, what), rows, linker)

        return write_sqlite, lambda: _migrate_sqlite(_unwrap_sqlalchemy(conn, what), linker)
    backend = postgres()

    def write_pg(rows: Sequence[Row]) -> None:
        raw = _unwrap_sqlalchemy(conn, what)
        backend.write_many_in_caller_transaction(raw, rows, linker, busy_timeout)

    return write_pg, lambda: backend.migrate_caller_connection(
        _unwrap_sqlalchemy(conn, what), linker
    )


def _sqlalchemy_dialect(conn: Any, what: str) -> Any:
    """The dialect under a SQLAlchemy Session, scoped_session or Connection, read without
    beginning anything; a driver other than sqlite3 or psycopg raises ``TypeError``."""
    kind, target = _sqlalchemy_target(conn)
    bind = target.get_bind() if kind == "Session" else target
    dialect = bind.dialect
    dbapi = getattr(getattr(dialect, "dbapi", None), "__name__", "?")
    if dbapi not in _SQLALCHEMY_DRIVERS.get((dialect.name, dialect.driver), ()):
        raise TypeError(
            f"{what} must be {_SUPPORTED}; got a SQLAlchemy {kind} on {dbapi} "
            f"({dialect.name}+{dialect.driver})"
        )
    return dialect


def _sqlalchemy_target(conn: Any) -> tuple[str, Any]:
    """("Session", the session) — a scoped_session's current one — or ("Connection", conn)."""
    orm: Any = sys.modules.get("sqlalchemy.orm")
    if orm is not None and isinstance(conn, orm.scoped_session):
        return "Session", conn()  # the registry's session for this thread (or scope)
    if orm is not None and isinstance(conn, orm.Session):
        return "Session", conn
    return "Connection", conn


def _unwrap_sqlalchemy(conn: Any, what: str) -> Any:
    """The DBAPI connection under a SQLAlchemy Session or Connection, in a transaction that
    SQLAlchemy knows it began.

    Begun as SQLAlchemy's own execute would (a session's autobegin, a connection's begin()):
    otherwise its commit() would not commit our row, and the pool's reset on return would roll
    it back without a word. A driver other than sqlite3 or psycopg (an engine whose
    ``creator=`` returns another kind of connection) raises ``TypeError``.
    """
    kind, target = _sqlalchemy_target(conn)
    if kind == "Session":
        sa_conn = target.connection()  # autobegins the session's transaction
    else:
        sa_conn = target
        if not sa_conn.in_transaction():
            sa_conn.begin()  # what its execute() does first (autobegin)
    raw = sa_conn.connection.driver_connection
    if isinstance(raw, sqlite3.Connection):
        return raw
    psycopg: Any = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(raw, psycopg.Connection):
        return raw
    driver = type(raw)
    raise TypeError(
        f"{what} must be {_SUPPORTED}; got a SQLAlchemy {kind} on "
        f"{driver.__module__}.{driver.__qualname__} ({sa_conn.dialect.name}+"
        f"{sa_conn.dialect.driver})"
    )


def _migrate_sqlite(conn: sqlite3.Connection, linker: Linker) -> None:
    schema.migrate(conn)
    refuse_unkeyed(newest_version(conn), linker)


def write_rows(conn: AnyConnection, rows: Sequence[Row], linker: Linker = UNKEYED) -> Tail:
    """Append ``rows`` to the chain in one transaction of their own, linked by ``linker``
    (replay, copy); returns the new tail."""
    if isinstance(conn, sqlite3.Connection):
        return append.write_batch(conn, rows, linker=linker)
    return conn.write_rows(rows, linker)


def describe(database: Path | str) -> str:
    """The database as messages show it (a URL without its password)."""
    return describe_database(database)
