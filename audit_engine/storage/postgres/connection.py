"""PostgreSQL connections as the engine uses them: opened, classified, locked.

- :func:`connect`: psycopg 3 in autocommit mode (transactions are explicit, as on SQLite), the
  session in UTC, and values loaded in the form the chain hashes: ``timestamptz`` as the
  engine's fixed-width UTC text (``2026-01-31T12:00:00.000000Z``), ``boolean`` as 0/1 — so
  verify, query and export run the same code on both backends;
- :func:`lock_chain`: the chain's advisory lock, transaction-scoped (a crashed or disconnected
  writer never keeps it), which every writer on every host takes before it reads the tail;
- :func:`classify`: every psycopg error becomes a
  :class:`~audit_engine.storage.dialect.BackendError` that says whether trying again may help;
"""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import psycopg
from psycopg.adapt import Loader
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from audit_engine.settings import mask_url
from audit_engine.storage.dialect import BackendError, Dialect

__all__ = [
    "CHAIN_LOCK_CLASS",
    "PG",
    "classify",
    "connect",
    "lock_chain",
    "mask_url",  # re-exported: messages of this backend use it
    "pg_sql",
]

#: The stored fields as the chain hashes them: the exact text of ``details`` is kept apart from
#: its ``jsonb`` column, whose normal form (key order, numbers) is not the text that was hashed.
PG = Dialect(
    name="postgresql",
    fields=(
        "event_id, timestamp, actor, action, operation, outcome, resource_type, resource_id, "
        "correlation_id, details_text AS details, critical"
    ),
    day="to_char(timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
)

# The advisory lock that guards the chain's tail: (this class, the entries table's oid), so two
# trails in two schemas of one database do not wait for each other.
CHAIN_LOCK_CLASS = 0x41554454  # "AUDT"
# Unless the URL says otherwise: how long a connection attempt may take (libpq's smallest useful
# value; the writer's close(timeout) waits for one attempt), and TCP keepalives, so a server that
# vanished without a word (a cut network) is noticed in about half a minute, not hours.
CONNECTION_DEFAULTS = {
    "connect_timeout": "2",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}

# SQLSTATE classes worth retrying: connection exceptions, transaction rollbacks (serialization,
# deadlock), insufficient resources (a full disk), operator intervention (shutdown, cancel),
# system errors; and a lock that could not be had.
_BUSY_CLASSES = ("08", "40", "53", "57", "58")
# A read-only transaction is what a failover looks like from a client still pointed at the old
# primary, now a standby: retried like a dropped connection until the new primary answers.
_BUSY_STATES = frozenset({"55P03", "55006", "25006"})
# The store cannot take any row, now or later: the role may not write the audit tables.
UNAVAILABLE_STATES = frozenset({"42501"})


def classify(exc: Exception) -> BackendError:
    """The :class:`BackendError` for a psycopg error (anything else: not busy)."""
    sqlstate = getattr(exc, "sqlstate", None)
    busy = isinstance(exc, psycopg.OperationalError) and sqlstate is None  # no server answer
    if sqlstate is not None:
        busy = sqlstate[:2] in _BUSY_CLASSES or sqlstate in _BUSY_STATES
    return BackendError(f"{type(exc).__name__}: {_one_line(exc)}", busy=busy, sqlstate=sqlstate)


def _without_secrets(text: str, url: str) -> str:
    """``text`` with every form of ``url``'s password replaced by ``***``."""
    secrets: set[str] = set()
    try:
        parts = urlsplit(url)
        if parts.password:
            secrets |= {parts.password, unquote(parts.password)}
        secrets |= {
            value for key, value in parse_qsl(parts.query) if key.lower() == "password" and value
        }
    except ValueError:  # a URL too broken to parse: hide all of it
        return text.replace(url, "postgresql://***")
    text = text.replace(url, mask_url(url))
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _one_line(exc: Exception) -> str:
    """The server's message and its detail on one line (messages and dead letters are lines);
    libpq's own multi-line messages (a connection that failed) with their lines joined."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None)
    if primary:
        detail = getattr(diag, "message_detail", None)
        # "Failing row contains (...)" repeats the whole row, details included: the entry is
        # in the dead-letter line already, and a log line is no place for it.
        if detail and not str(detail).startswith("Failing row contains"):
            return f"{primary} ({detail})"
        return str(primary)
    return " ".join(str(exc).split()) or type(exc).__name__


class _TimestampText(Loader):
    """``timestamptz`` as the engine's stored text; the session's TimeZone is UTC (``+00``)."""

    def load(self, data: Any) -> str:
        text = bytes(data).decode("ascii")
        # "2026-01-31 12:00:00.12+00" -> "2026-01-31T12:00:00.120000Z"
        clock = text[11:-3]
        whole, _, fraction = clock.partition(".")
        return f"{text[:10]}T{whole}.{fraction.ljust(6, '0')}Z"


class _BoolInt(Loader):
    def load(self, data: Any) -> int:
        return 1 if bytes(data) == b"t" else 0


@functools.lru_cache(maxsize=256)
def pg_sql(sql: str) -> str:
    """The shared SQL (``?`` parameters) in psycopg's form (``%s``; a literal ``%`` escaped).

    Only the engine's own statement text goes through here, never a value: values are always
    parameters, so a ``?`` is always a placeholder.
    """
    return sql.replace("%", "%%").replace("?", "%s")


def connect(url: str, *, lock_timeout_s: float | None = None) -> psycopg.Connection[Any]:
    """A psycopg connection to ``url`` set up as the engine reads and writes: autocommit, UTC,
    timestamps and flags loaded in their stored form. Raises :class:`BackendError`.

    ``lock_timeout_s``: how long one statement may wait for a lock — the chain's advisory lock
    above all — before it fails as busy (55P03) and the caller retries: the writer's
    ``close(timeout)`` can then stop between two waits, as on SQLite. None: no limit.
    """
    try:
        given = conninfo_to_dict(url)
        defaults = {k: v for k, v in CONNECTION_DEFAULTS.items() if k not in given}
        conninfo = make_conninfo(url, **defaults)
        conn = psycopg.connect(conninfo, autocommit=True, application_name="audit_engine")
    except psycopg.Error as exc:
        error = classify(exc)
        # libpq quotes the connection string in some messages (a URL it cannot parse).
        raise BackendError(
            _without_secrets(str(error), url), busy=error.busy, sqlstate=error.sqlstate
        ) from None
    conn.adapters.register_loader("timestamptz", _TimestampText)
    conn.adapters.register_loader("bool", _BoolInt)
    try:
        conn.execute("SET TIME ZONE 'UTC'")
        if lock_timeout_s is not None:
            # At least 1 ms: lock_timeout = 0 would mean no limit at all.
            milliseconds = max(1, round(lock_timeout_s * 1000))
            conn.execute(f"SET lock_timeout = {milliseconds}")
    except psycopg.Error as exc:  # pragma: no cover - a server that drops us right away
        conn.close()
        raise classify(exc) from None
    return conn


def lock_chain(conn: psycopg.Connection[Any], table_oid: int) -> None:
    """Take the chain's advisory lock until the end of the current transaction."""
    conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (CHAIN_LOCK_CLASS, table_oid))
