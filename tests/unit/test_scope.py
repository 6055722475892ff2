"""Scopes follow the contextvars context, nest, and share markers unless fresh."""

from __future__ import annotations

import contextvars
import threading

import pytest

from audit_engine.models import AuditEntry
from audit_engine.pipeline.scope import ScopeStack, default_key
from audit_engine.rows import entry_row


def test_no_scope_outside_a_with_block() -> None:
    stack = ScopeStack("t")
    assert stack.current() is None
    with stack.open() as scope:
        assert stack.current() is scope
    assert stack.current() is None


def test_inner_scope_shares_markers_and_key_unless_fresh() -> None:
    stack = ScopeStack("t")

    def by_action(e: AuditEntry) -> str:
        return e.action

    with stack.open(by_action) as outer:
        outer.seen.add("x")
        with stack.open() as inner:
            assert inner.seen is outer.seen
            assert inner.key is by_action
        with stack.open(fresh=True) as fresh:
            assert fresh.seen == set()
            assert fresh.key is default_key
        assert stack.current() is outer


def test_scope_is_per_thread() -> None:
    stack = ScopeStack("t")
    seen_in_thread: list[object] = []
    with stack.open():
        worker = threading.Thread(target=lambda: seen_in_thread.append(stack.current()))
        worker.start()
        worker.join(10)
    assert seen_in_thread == [None]


def test_scope_travels_with_a_copied_context() -> None:
    stack = ScopeStack("t")
    with stack.open() as scope:
        ctx = contextvars.copy_context()
    assert ctx.run(stack.current) is scope


def test_default_key_is_actor_action_resource() -> None:
    e = AuditEntry(action="a", actor="u", resource_type="note", resource_id="1")
    assert default_key(e) == ("u", "a", "note", "1")


def test_key_must_be_callable() -> None:
    stack = ScopeStack("t")
    with pytest.raises(TypeError, match="key must be a callable"), stack.open(key="actor"):  # type: ignore[arg-type]
        pass  # pragma: no cover


def test_the_row_key_of_the_default_key_reads_the_row_itself() -> None:
    row = entry_row(AuditEntry(actor="u", action="a", resource_type="note", resource_id="1"))
    with ScopeStack("t-row-default").open() as scope:
        assert scope.row_key is default_key
        assert scope.row_key(row) == ("u", "a", "note", "1")


def test_a_custom_key_gets_the_entry_as_a_model() -> None:
    seen: list[object] = []

    def by_action(entry: AuditEntry) -> str:
        seen.append(entry)
        return entry.action

    row = entry_row(AuditEntry(actor="u", action="a", details={"k": 1}))
    with ScopeStack("t-row-custom").open(by_action) as scope:
        assert scope.row_key(row) == "a"
    assert len(seen) == 1
    assert isinstance(seen[0], AuditEntry)
    assert seen[0].details == {"k": 1}
