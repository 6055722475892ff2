"""audit_engine.testing (#15 item 7): capture() and the pytest plugin's fixtures, so that
applications test their auditing without a file."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from support import locked

from audit_engine import AuditEntry, AuditService, SettingsError
from audit_engine.pipeline.bulk import TAP_ATTRIBUTE
from audit_engine.testing import CapturedEntries, capture, memory_service

pytest_plugins = ["pytester"]

MakeService = Callable[..., AuditService]


# -- capture(): a tap in every write mode ---------------------------------------------------------


@pytest.mark.parametrize("settings", [{}, {"async_writes": False}], ids=["async", "sync"])
def test_capture_sees_record_and_record_many_as_stored_and_they_are_still_stored(
    make_service: MakeService, db_path: Path, settings: dict[str, object]
) -> None:
    service = make_service(redact_fields=["password"], **settings)
    service.record(action="outside")
    with service.context(actor="alice"), capture(service) as captured:
        service.record(action="user.create", operation="create", details={"password": "x"})
        service.record_many([{"action": "user.import"}, AuditEntry(action="user.import")])
    service.record(action="outside")
    assert [e.action for e in captured] == ["user.create", "user.import", "user.import"]
    created = captured[0]
    assert isinstance(created, AuditEntry)
    assert (created.actor, created.details) == ("alice", {"password": "[REDACTED]"})
    assert service.flush(10)
    assert service.stats().written == 5  # a tap: everything was stored too


def test_capture_on_a_service_with_a_connection_sees_each_entry_once(
    make_service: MakeService, db_path: Path
) -> None:
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        service = make_service(connection=conn)
        with capture(service) as captured:
            service.record(action="a")
            service.record_many([{"action": "b"}, {"action": "c"}])
        assert [e.action for e in captured] == ["a", "b", "c"]
    finally:
        conn.close()


def test_capture_sees_a_connection_passed_to_record(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service()
    conn = sqlite3.connect(db_path)
    try:
        with capture(service) as captured:
            service.record(action="in.transaction", connection=conn)
            service.record_many([{"action": "many.in.transaction"}], connection=conn)
            service.record(action="queued")
        conn.commit()
    finally:
        conn.close()
    assert [e.action for e in captured] == ["in.transaction", "many.in.transaction", "queued"]


def test_capture_leaves_out_what_was_not_accepted(make_service: MakeService, db_path: Path) -> None:
    service = make_service(level="writes_only", on_full="drop", queue_maxsize=2, buffer_max_size=1)
    with capture(service) as captured, locked(db_path) as lock:
        service.record(action="read", operation="read")  # filtered
        with service.disabled():
            service.record(action="quiet", operation="update")
        kept = [service.record(action="fill", operation="update") for _ in range(6)]
        lock.release()
        assert service.flush(10)
    accepted = [event_id for event_id in kept if event_id is not None]
    assert len(accepted) < 6  # some were dropped on the full queue
    assert [e.event_id for e in captured] == accepted


def test_captures_nest_and_the_service_is_put_back(make_service: MakeService) -> None:
    service = make_service()
    with capture(service) as outer:
        service.record(action="one")
        with capture(service) as inner:
            service.record(action="two")
            service.record_many([{"action": "three"}])
        service.record(action="four")
    service.record(action="five")
    assert [e.action for e in outer] == ["one", "two", "three", "four"]
    assert [e.action for e in inner] == ["two", "three"]
    assert service._accept_row is AuditService._enqueue
    assert "_write_injected" not in vars(service)
    assert not hasattr(service, TAP_ATTRIBUTE)


def test_captures_that_overlap_without_nesting_are_independent(make_service: MakeService) -> None:
    # Two captures closed out of order (an ExitStack, two threads of a test).
    service = make_service(async_writes=False)
    first_cm, second_cm = capture(service), capture(service)
    first = first_cm.__enter__()
    service.record(action="both")
    second = second_cm.__enter__()
    service.record_many([{"action": "both.many"}])
    first_cm.__exit__(None, None, None)
    service.record(action="second.only")
    service.record_many([{"action": "second.only.many"}])
    second_cm.__exit__(None, None, None)
    service.record(action="none")
    assert [e.action for e in first] == ["both", "both.many"]
    assert [e.action for e in second] == ["both.many", "second.only", "second.only.many"]
    assert service._accept_row is AuditService._write_sync  # the last one out put it back
    assert "_write_injected" not in vars(service)
    assert not hasattr(service, TAP_ATTRIBUTE)


def test_captures_opened_and_closed_in_threads_each_see_their_own_window(
    make_service: MakeService,
) -> None:
    service = make_service(async_writes=False)
    opened, recorded = threading.Event(), threading.Event()
    seen: list[CapturedEntries] = []

    def other_capture() -> None:
        with capture(service) as captured:
            opened.set()
            recorded.wait(10)
        seen.append(captured)

    with capture(service) as mine:
        thread = threading.Thread(target=other_capture)
        thread.start()
        assert opened.wait(10)
        service.record(action="while.both")
        recorded.set()
        thread.join(10)
        assert not thread.is_alive()
        service.record(action="after.the.thread.closed")
    assert [e.action for e in mine] == ["while.both", "after.the.thread.closed"]
    assert [e.action for e in seen[0]] == ["while.both"]
    assert not hasattr(service, TAP_ATTRIBUTE)


@pytest.mark.parametrize(("given", "named"), [(None, "None"), (object(), "object")])
def test_capture_of_something_else_than_a_service_is_a_type_error(
    given: object, named: str
) -> None:
    with pytest.raises(TypeError, match=rf"^capture\(\) takes an AuditService, got {named}$"):
        capture(given)  # type: ignore[arg-type]


def test_memory_service_refuses_the_settings_it_would_ignore() -> None:
    with pytest.raises(TypeError) as raised:
        memory_service(level="all", database="x.db", async_writes=True)
    assert str(raised.value).startswith(
        "memory_service() does not take database, async_writes: its trail is in memory"
    )


# -- the helpers' messages ------------------------------------------------------------------------


def _captured() -> CapturedEntries:
    with memory_service() as service, capture(service) as captured:
        service.record(action="note.edit", actor="alice", resource_type="note", resource_id="7")
        service.record(
            action="note.delete", operation="delete", outcome="failure", details={"why": "locked"}
        )
    return captured


def test_find_matches_fields_and_a_subset_of_details() -> None:
    captured = _captured()
    assert [e.action for e in captured.find(actor="alice")] == ["note.edit"]
    assert [e.action for e in captured.find(operation="delete", outcome="failure")] == [
        "note.delete"
    ]
    assert [e.action for e in captured.find(details={"why": "locked"})] == ["note.delete"]
    assert captured.find(details={"why": "other"}) == []
    assert len(captured.find()) == 2
    with pytest.raises(TypeError) as raised:
        captured.find(user="alice")
    assert str(raised.value).startswith("no AuditEntry field named user; the fields are event_id")


def test_assert_recorded_returns_the_entry_or_lists_what_was_recorded() -> None:
    captured = _captured()
    assert captured.assert_recorded(action="note.edit").resource_id == "7"
    assert captured.assert_recorded(times=1, resource_type="note").action == "note.edit"
    with pytest.raises(AssertionError) as raised:
        captured.assert_recorded(action="note.edit", actor="bob")
    assert str(raised.value) == (
        "expected an audit entry with action='note.edit', actor='bob', found 0; recorded (2):\n"
        "  action='note.edit' actor='alice' resource_type='note' resource_id='7' "
        "operation='execute' outcome='success'\n"
        "  action='note.delete' operation='delete' outcome='failure' details={'why': 'locked'}"
    )
    assert captured.assert_recorded(times=1, actor=None).action == "note.delete"
    with pytest.raises(
        AssertionError, match=r"^expected 3 audit entries with any fields, found 2;"
    ):
        captured.assert_recorded(times=3)
    with pytest.raises(AssertionError, match=r"found 0; nothing was recorded$"):
        CapturedEntries().assert_recorded(action="x")


def test_assert_not_recorded_lists_the_matches() -> None:
    captured = _captured()
    captured.assert_not_recorded(actor="bob")
    with pytest.raises(AssertionError) as raised:
        captured.assert_not_recorded(outcome="failure")
    assert str(raised.value) == (
        "expected no audit entry with outcome='failure', found 1:\n"
        "  action='note.delete' operation='delete' outcome='failure' details={'why': 'locked'}"
    )


def test_memory_service_runs_the_real_policy_and_closes_its_connection() -> None:
    with memory_service(level="writes_only") as service:
        assert service.record(action="read", operation="read") is None
        assert service.record(action="write", operation="update") is not None
        assert service.stats().written == 1
    assert service.closed


# -- the pytest plugin, in a suite of its own -----------------------------------------------------

_APP_TESTS = """
from audit_engine import AuditService

SEEN = []


def edit_note(audit, note_id, actor):
    audit.record(action="note.edit", actor=actor, resource_type="note", resource_id=note_id)


def test_edit_is_audited(audit_service, audit_capture):
    SEEN.append(audit_service)
    edit_note(audit_service, "7", "alice")
    audit_capture.assert_recorded(action="note.edit", actor="alice", resource_id="7")


def test_the_service_of_the_last_test_was_closed():
    assert SEEN and SEEN[0].closed


def test_settings_through_the_factory(make_audit_service):
    audit = make_audit_service(level="writes_only")
    assert audit.record(action="note.read", operation="read") is None
    assert isinstance(audit, AuditService)


def test_a_wrong_expectation_reads_well(audit_service, audit_capture):
    edit_note(audit_service, "7", "alice")
    audit_capture.assert_recorded(action="note.edit", actor="bob")
"""


_ENABLE = 'pytest_plugins = ["audit_engine.testing.pytest_plugin"]\n'


def test_the_plugin_gives_an_app_suite_services_without_a_file(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(_ENABLE)
    pytester.makepyfile(test_app=_APP_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: expected an audit entry with action='note.edit', actor='bob', "
            "found 0; recorded (1):",
            "*action='note.edit' actor='alice' resource_type='note' resource_id='7' "
            "operation='execute' outcome='success'",
        ]
    )
    assert "captured.py" not in result.stdout.str()  # the report points at the test's line
    assert list(pytester.path.rglob("*.db*")) == []  # no trail file anywhere


_UNRELATED_TESTS = """
import sys


def test_audit_engine_is_not_loaded():
    assert not [name for name in sys.modules if name.startswith("audit_engine")]


def test_wants_the_fixture(audit_service):
    pass
"""


def test_the_plugin_is_opt_in_so_other_suites_do_not_load_the_engine(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_other=_UNRELATED_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*fixture 'audit_service' not found*"])
    # Enabled on the command line instead of in a conftest.py: the fixture is there.
    enabled = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "audit_engine.testing.pytest_plugin", "-q"
    )
    enabled.assert_outcomes(passed=1, failed=1)
    enabled.stdout.fnmatch_lines(["*test_audit_engine_is_not_loaded*"])


def test_memory_service_does_not_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the shell or the CI runner exports must not change what an app's audit test sees.
    monkeypatch.setenv("AUDIT_TRAIL_ENABLED", "false")
    monkeypatch.setenv("AUDIT_TRAIL_LEVEL", "all")
    monkeypatch.setenv("AUDIT_TRAIL_CHAIN_KEY_FILE", "/nonexistent/chain.key")
    monkeypatch.setenv("AUDIT_TRAIL_ON_FULL", "bogus")
    with memory_service() as service, capture(service) as captured:
        assert service.record(action="note.open", operation="read") is None  # writes_only
        assert service.record(action="note.pin", operation="update") is not None
    assert [entry.action for entry in captured] == ["note.pin"]
    with memory_service(level="all") as service, capture(service) as captured:
        service.record(action="note.open", operation="read")
    assert len(captured) == 1


def test_memory_service_names_a_bad_or_unknown_setting() -> None:
    with pytest.raises(SettingsError, match="level"), memory_service(level="loud"):
        pass  # pragma: no cover
    with (
        pytest.raises(TypeError, match="unexpected keyword argument 'levle'"),
        memory_service(levle="all"),
    ):
        pass  # pragma: no cover


@pytest.mark.parametrize(
    ("times", "error"), [(0, ValueError), (-1, ValueError), ("1", TypeError), (True, TypeError)]
)
def test_assert_recorded_refuses_a_times_it_cannot_mean(times: object, error: type) -> None:
    captured = CapturedEntries([AuditEntry(action="a")])
    with pytest.raises(error, match=r"times must be an int of 1 or more .*assert_not_recorded"):
        captured.assert_recorded(times=times, action="a")  # type: ignore[arg-type]
    assert captured.assert_recorded(times=1, action="a").action == "a"
