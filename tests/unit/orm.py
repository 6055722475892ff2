"""The SQLAlchemy tests' shared set-up, on either backend: the application's engine on the test's
database, an audit service on it, track() calls stopped after the test, and the trail read back.
``database`` is a SQLite path or a ``postgresql://`` URL, as the ``trail_db`` fixture gives it.
Each test file keeps its own models and passes its ``Base`` (or its metadata) in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, create_engine

from audit_engine import AuditEntry, AuditService, AuditSettings, AuditStore
from audit_engine.integrations.sqlalchemy import Tracking, track

CLOSE_S = 10.0


def url(database: Path | str) -> str:
    """The SQLAlchemy URL of ``database``: the engine's ``postgresql://`` URLs name no driver,
    SQLAlchemy's default for them is psycopg2, and the engine speaks psycopg (3)."""
    if isinstance(database, Path):
        return f"sqlite:///{database}"
    return database.replace("postgresql://", "postgresql+psycopg://", 1)


@contextmanager
def engine(database: Path | str, metadata: MetaData | None = None) -> Iterator[Engine]:
    """The application's engine on ``database``, with ``metadata``'s tables created; disposed
    on the way out so no pooled connection outlives the test's database."""
    made = create_engine(url(database))
    try:
        if metadata is not None:
            metadata.create_all(made)
        yield made
    finally:
        made.dispose()


def open_service(database: Path | str, **settings: Any) -> AuditService:
    """An audit service on ``database`` without the retention sweep (it would race the tests'
    reads); the caller closes it."""
    return AuditService(AuditSettings(database=database, cleanup_enabled=False, **settings))


@contextmanager
def service(database: Path | str, **settings: Any) -> Iterator[AuditService]:
    """``open_service()``, closed on the way out."""
    made = open_service(database, **settings)
    try:
        yield made
    finally:
        made.close(timeout=CLOSE_S)


@contextmanager
def tracked(service: AuditService, default: type) -> Iterator[Callable[..., Tracking]]:
    """``start(*targets, **options)``: track() on ``service`` (``default``, a Base, when no
    target is named). Listeners are global: every tracking started is stopped on the way out,
    so none captures the next test's sessions."""
    made: list[Tracking] = []

    def start(*targets: type, **options: Any) -> Tracking:
        tracking = track(service, *(targets or (default,)), **options)
        made.append(tracking)
        return tracking

    try:
        yield start
    finally:
        for tracking in made:
            tracking.stop()


def entries(
    database: Path | str, service: AuditService | None = None, **where: Any
) -> list[AuditEntry]:
    """The trail's entries matching ``where`` (AuditStore.query's filters), once ``service``
    (when given) has written everything handed to it."""
    if service is not None:
        assert service.flush(timeout=CLOSE_S)
    with AuditStore(database) as reader:
        return list(reader.query(**where))


def verify_ok(database: Path | str) -> bool:
    """Whether the whole trail verifies (no retention window: every entry is checked)."""
    with AuditStore(database) as reader:
        return reader.verify(min_retention=timedelta(0)).ok
