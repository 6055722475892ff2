"""Shared fixtures: every service a test makes is closed, whatever the test did."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pgcluster import PgCluster

from audit_engine import AuditService, AuditSettings
from audit_engine.storage import deadletter
from audit_engine.storage import sqlite as store


@pytest.fixture(autouse=True)
def _clean_audit_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """No AUDIT_TRAIL_* variable from the developer's shell leaks into a test, and a URL trail's
    default dead-letter file (in the user's data directory) lands in a temporary one."""
    for name in list(os.environ):
        if name.upper().startswith("AUDIT_TRAIL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("data-home")))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.db"


@pytest.fixture
def conn(db_path: Path) -> Iterator[sqlite3.Connection]:
    """An open connection to the test's audit database (created and migrated), closed after."""
    connection = store.open_connection(db_path)
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture
def dl_path(db_path: Path) -> Path:
    """The dead-letter file that belongs to the test's database."""
    return deadletter.path_for(db_path)


@pytest.fixture
def make_settings(db_path: Path) -> Callable[..., AuditSettings]:
    """AuditSettings for the test's own database; keyword arguments override."""

    def make(**overrides: Any) -> AuditSettings:
        values: dict[str, Any] = {"database": db_path}
        values.update(overrides)
        return AuditSettings(**values)

    return make


@pytest.fixture
def make_service(
    make_settings: Callable[..., AuditSettings],
) -> Iterator[Callable[..., AuditService]]:
    """Build services with ``make_service(**settings)``; all are closed after the test."""
    made: list[AuditService] = []

    def make(*, connection: Any = None, **overrides: Any) -> AuditService:
        service = AuditService(make_settings(**overrides), connection=connection)
        made.append(service)
        return service

    yield make
    for service in made:
        service.close(timeout=10)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A throwaway PostgreSQL server for the session, started only when a test asks for one.

    No server (or no PostgreSQL installed) fails the test: PostgreSQL tests never skip.
    """
    with PgCluster() as cluster:  # started here, stopped at the end whatever happens
        yield cluster


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    """The URL of a fresh database of its own for the test; dropped afterwards."""
    url = pg_cluster.create_database()
    yield url
    pg_cluster.drop_database(url.rsplit("/", 1)[1])


@pytest.fixture(params=["sqlite", "postgresql"])
def trail_db(request: pytest.FixtureRequest, db_path: Path) -> Path | str:
    """The test's trail on each backend in turn: the SQLite file's path, or a fresh database's
    URL (the server starts only when a PostgreSQL case runs). Nothing is created yet; the
    ``trails`` helpers (tests/unit/trails.py) run raw SQL on either."""
    if request.param == "sqlite":
        return db_path
    url: str = request.getfixturevalue("pg_url")
    return url
