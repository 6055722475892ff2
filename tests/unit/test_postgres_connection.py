"""PostgreSQL connections as the engine opens them: defaults the URL can override, errors on one
line, the lock key of any table oid, a password in the query string masked, and the cleanup
thread's connection renewed after a failed run (a server restart takes it along)."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from audit_engine import AuditStore
from audit_engine.settings import mask_url
from audit_engine.storage.dialect import BackendError
from audit_engine.storage.postgres import connect, schema
from audit_engine.storage.postgres.connection import CHAIN_LOCK_CLASS, classify
from audit_engine.storage.retention import CleanupThread
from audit_engine.storage.sqlite import open_connection

WAIT_S = 30.0


def test_the_connection_defaults_apply_unless_the_url_sets_them(pg_url: str) -> None:
    with connect(pg_url) as conn:
        params = conn.info.get_parameters()
        assert (params["connect_timeout"], params["keepalives_idle"]) == ("2", "10")
    with connect(f"{pg_url}?connect_timeout=7&keepalives_idle=30") as conn:
        params = conn.info.get_parameters()
        assert (params["connect_timeout"], params["keepalives_idle"]) == ("7", "30")


def test_a_server_error_reads_as_one_line_with_its_detail(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (k text UNIQUE)")
        conn.execute("INSERT INTO t VALUES ('a')")
        with pytest.raises(psycopg.errors.UniqueViolation) as raised:
            conn.execute("INSERT INTO t VALUES ('a')")
    assert str(classify(raised.value)) == (
        'UniqueViolation: duplicate key value violates unique constraint "t_k_key" '
        "(Key (k)=(a) already exists.)"
    )


def test_a_failed_connection_reads_as_one_line() -> None:
    with pytest.raises(psycopg.OperationalError) as raised:
        psycopg.connect("postgresql://nobody@127.0.0.1:1/x", connect_timeout=2)
    text = str(classify(raised.value))
    assert "\n" not in text
    assert text.startswith("OperationalError: connection failed:")
    assert classify(raised.value).busy  # a server that is not there may come back


@pytest.mark.parametrize("oid", [16_384, 2**31 - 1, 2**31, 2**32 - 1])
def test_any_table_oid_makes_a_lock_key_the_server_takes(
    pg_url: str, oid: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    AuditStore(pg_url, create=True).close()
    monkeypatch.setattr(schema, "_lookup", lambda conn, name: oid)
    with connect(pg_url) as conn:
        key = schema.table_oid(conn)
        assert -(2**31) <= key < 2**31
        assert key % 2**32 == oid  # the same 32 bits
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (CHAIN_LOCK_CLASS, key))


def test_a_password_in_the_query_string_is_masked() -> None:
    assert mask_url("postgresql://u@h/db?sslmode=require&password=s3cret") == (
        "postgresql://u@h/db?sslmode=require&password=***"
    )
    assert mask_url("postgresql://u:s3cret@h:5433/db?PASSWORD=s3cret") == (
        "postgresql://u:***@h:5433/db?PASSWORD=***"
    )


class _DeadConnection:
    """What a trail connection is after its server restarted: every statement fails."""

    in_transaction = False

    def __init__(self) -> None:
        self.closed = False

    def execute(self, sql: str, params: Any = ()) -> Any:
        raise BackendError("OperationalError: the connection is closed", busy=True)

    def close(self) -> None:
        self.closed = True


def test_the_cleanup_thread_opens_a_new_connection_after_a_failed_run(db_path: Path) -> None:
    dead = _DeadConnection()
    reopened = threading.Event()
    opened: list[Any] = []

    def open_trail() -> Any:
        if not opened:
            opened.append(dead)
            return dead
        reopened.set()  # only reached if the dead connection was given up
        connection = open_connection(db_path)
        opened.append(connection)
        return connection

    cleanup = CleanupThread(open_trail, retention=timedelta(days=1), batch_size=5, interval_s=0.01)
    try:
        assert reopened.wait(WAIT_S), cleanup.last_error
    finally:
        cleanup.stop(WAIT_S)
    assert dead.closed
    assert "the connection is closed" in (cleanup.last_error or "")


def test_a_refused_row_is_named_without_repeating_the_row(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (secret text CHECK (secret <> 'x'))")
        with pytest.raises(psycopg.errors.CheckViolation) as raised:
            conn.execute("INSERT INTO t VALUES ('x')")
    text = str(classify(raised.value))
    assert (
        text
        == 'CheckViolation: new row for relation "t" violates check constraint "t_secret_check"'
    )
