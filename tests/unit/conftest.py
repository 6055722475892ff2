"""Fixtures shared by the integration tests that record synchronously and read the trail back
(the logging bridge, ``@audited``). A test module's own ``service`` or ``entries`` fixture wins."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from audit_engine import AuditEntry, AuditService, AuditStore


@pytest.fixture
def service(make_service: Callable[..., AuditService]) -> AuditService:
    """A service writing synchronously: an entry is committed when record() returns."""
    return make_service(async_writes=False)


@pytest.fixture
def entries(db_path: Path) -> Callable[[], list[AuditEntry]]:
    """``entries()``: what the trail at ``db_path`` holds now, in commit order."""

    def read() -> list[AuditEntry]:
        with AuditStore(db_path) as store:
            return list(store.query())

    return read


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """The test's own logger namespace (its node name)."""
    return str(request.node.name)
