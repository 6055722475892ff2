"""Helpers for applications that test their auditing (docs/integrations.md).

``capture(service)`` collects what a service accepts inside a block, with assertion helpers;
``memory_service()`` is a real service on an in-memory trail. The pytest plugin
(:mod:`audit_engine.testing.pytest_plugin`, opt-in: ``pytest_plugins = [...]`` in the app's
top-level conftest.py) offers both as fixtures.
"""

from audit_engine.testing.captured import CapturedEntries, capture
from audit_engine.testing.memory import memory_service

__all__ = ["CapturedEntries", "capture", "memory_service"]
