"""The pytest plugin of audit_engine.testing: fixtures for apps that test their auditing.

Opt-in, so that installing audit-engine costs nothing in other projects' test runs: enable it in
the top-level ``conftest.py`` with ``pytest_plugins = ["audit_engine.testing.pytest_plugin"]``
(or run ``pytest -p audit_engine.testing.pytest_plugin``).

Fixtures: ``audit_service`` (a real AuditService on an in-memory trail, closed after the test),
``audit_capture`` (the entries it accepted in the test, a CapturedEntries) and
``make_audit_service`` (more such services, with settings: ``make_audit_service(level=...)``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from audit_engine.pipeline.service import AuditService
from audit_engine.testing.captured import CapturedEntries, capture
from audit_engine.testing.memory import memory_service


@pytest.fixture
def make_audit_service() -> Iterator[Callable[..., AuditService]]:
    """Build in-memory services with ``make_audit_service(**settings)``; all closed after."""
    with ExitStack() as stack:

        def make(**settings: Any) -> AuditService:
            return stack.enter_context(memory_service(**settings))

        yield make


@pytest.fixture
def audit_service(make_audit_service: Callable[..., AuditService]) -> AuditService:
    """A real AuditService on an in-memory SQLite trail, with default settings."""
    return make_audit_service()


@pytest.fixture
def audit_capture(audit_service: AuditService) -> Iterator[CapturedEntries]:
    """Every entry ``audit_service`` accepted during the test (a CapturedEntries)."""
    with capture(audit_service) as captured:
        yield captured
