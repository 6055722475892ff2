"""The pytest plugin of audit_engine.testing (registered as a ``pytest11`` entry point).

Fixtures: ``audit_service`` (a real AuditService on an in-memory trail, closed after the test),
``audit_capture`` (the entries it accepted in the test, a CapturedEntries) and
``make_audit_service`` (more such services, with settings: ``make_audit_service(level=...)``).

pytest loads this module in every run of every project that has audit_engine installed, so it
imports only pytest: audit_engine itself is imported when a test first asks for a fixture.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from audit_engine import AuditService
    from audit_engine.testing import CapturedEntries


def _testing() -> Any:
    # Imported on first use, not with the plugin (see the module docstring).
    return importlib.import_module("audit_engine.testing")


@pytest.fixture
def make_audit_service() -> Iterator[Callable[..., AuditService]]:
    """Build in-memory services with ``make_audit_service(**settings)``; all closed after."""
    with ExitStack() as stack:
        testing = _testing()

        def make(**settings: Any) -> AuditService:
            service: AuditService = stack.enter_context(testing.memory_service(**settings))
            return service

        yield make


@pytest.fixture
def audit_service(make_audit_service: Callable[..., AuditService]) -> AuditService:
    """A real AuditService on an in-memory SQLite trail, with default settings."""
    return make_audit_service()


@pytest.fixture
def audit_capture(audit_service: AuditService) -> Iterator[CapturedEntries]:
    """Every entry ``audit_service`` accepted during the test (a CapturedEntries)."""
    with _testing().capture(audit_service) as captured:
        yield captured
