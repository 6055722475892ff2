"""Scopes follow the contextvars context, nest, and share markers unless fresh."""

from __future__ import annotations

import contextvars
import threading

import pytest

from audit_engine.models import AuditEntry
from audit_engine.pipeline.context import ContextStack
from audit_engine.pipeline.scope import AuditScope, default_key
from audit_engine.rows import entry_row


def _scope(stack: ContextStack) -> AuditScope | None:
    frame = stack.current()
    return None if frame is None else frame.scope


def test_no_scope_outside_a_with_block() -> None:
    stack = ContextStack("t")
    assert _scope(stack) is None
    with stack.open_scope() as scope:
        assert _scope(stack) is scope
    assert _scope(stack) is None


def test_inner_scope_shares_markers_and_key_unless_fresh() -> None:
    stack = ContextStack("t")

    def by_action(e: AuditEntry) -> str:
        return e.action

    with stack.open_scope(by_action) as outer:
        outer.seen.add("x")
        with stack.open_scope() as inner:
            assert inner.seen is outer.seen
            assert inner.key is by_action
        with stack.open_scope(fresh=True) as fresh:
            assert fresh.seen == set()
            assert fresh.key is default_key
        assert _scope(stack) is outer


def test_scope_is_per_thread() -> None:
    stack = ContextStack("t")
    seen_in_thread: list[object] = []
    with stack.open_scope():
        worker = threading.Thread(target=lambda: seen_in_thread.append(_scope(stack)))
        worker.start()
        worker.join(10)
    assert seen_in_thread == [None]


def test_scope_travels_with_a_copied_context() -> None:
    stack = ContextStack("t")
    with stack.open_scope() as scope:
        ctx = contextvars.copy_context()
    assert ctx.run(_scope, stack) is scope


def test_default_key_is_actor_action_resource() -> None:
    e = AuditEntry(action="a", actor="u", resource_type="note", resource_id="1")
    assert default_key(e) == ("u", "a", "note", "1")


def test_key_must_be_callable() -> None:
    stack = ContextStack("t")
    with pytest.raises(TypeError, match="key must be a callable"), stack.open_scope(key="actor"):  # type: ignore[arg-type]
        pass  # pragma: no cover


def test_the_row_key_of_the_default_key_reads_the_row_itself() -> None:
    row = entry_row(AuditEntry(actor="u", action="a", resource_type="note", resource_id="1"))
    with ContextStack("t-row-default").open_scope() as scope:
        assert scope.row_key is default_key
        assert scope.row_key(row) == ("u", "a", "note", "1")


def test_a_custom_key_gets_the_entry_as_a_model() -> None:
    seen: list[object] = []

    def by_action(entry: AuditEntry) -> str:
        seen.append(entry)
        return entry.action

    row = entry_row(AuditEntry(actor="u", action="a", details={"k": 1}))
    with ContextStack("t-row-custom").open_scope(by_action) as scope:
        assert scope.row_key(row) == "a"
    assert len(seen) == 1
    assert isinstance(seen[0], AuditEntry)
    assert seen[0].details == {"k": 1}
