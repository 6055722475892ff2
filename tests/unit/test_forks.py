"""forks: the one fork registry — the order of the hooks, weak registration, failing hooks.

Most tests drive the registry's three callbacks directly, on a registry of their own (the
process's real one, holding the test session's live objects, is put aside), so nothing forks.
The last ones fork for real and check, from the child, what the hooks did there.
"""

from __future__ import annotations

import gc
import logging
import os
import select
import signal
import threading
import weakref
from pathlib import Path

import pytest

from audit_engine import AuditService, AuditSettings, forks
from audit_engine.models import _EventIdGenerator
from audit_engine.pipeline import lifecycle
from audit_engine.storage.deadletter import DeadLetterFile

CHILD_TIMEOUT_S = 30.0


class _Gate:
    """A lock that writes down when it is taken and let go."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self._lock = threading.Lock()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        self.log.append(f"take {self.name}")
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self.log.append(f"free {self.name}")
        self._lock.release()

    @property
    def held(self) -> bool:
        return self._lock.locked()


class _Hooks:
    """A registered object: its gates, and a child hook that writes down that it ran."""

    def __init__(self, name: str, log: list[str], *gates: _Gate) -> None:
        self.name = name
        self.log = log
        self.gates = gates

    def fork_gates(self) -> tuple[_Gate, ...]:
        return self.gates

    def after_fork_in_child(self) -> None:
        held = [gate.name for gate in self.gates if gate.held]
        self.log.append(f"child {self.name}" + (f" (held: {held})" if held else ""))


class _Failing(_Hooks):
    def fork_gates(self) -> tuple[_Gate, ...]:
        raise RuntimeError("no gates today")

    def after_fork_in_child(self) -> None:
        raise RuntimeError("no reset today")


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty registry for the test (the process's own is put back afterwards)."""
    monkeypatch.setattr(forks, "_registry", {})
    monkeypatch.setattr(forks, "_held", [])


def _fork_in_parent() -> None:
    forks._before_fork()
    forks._release_gates()


def _fork_in_child() -> None:
    forks._before_fork()
    forks._after_fork_in_child()


# -- order ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("registry")
def test_gates_are_taken_in_registration_order_and_let_go_in_reverse_in_the_parent() -> None:
    log: list[str] = []
    a, b, c = (_Gate(name, log) for name in "abc")
    first, second = _Hooks("first", log, a, b), _Hooks("second", log, c)
    forks.register(first)
    forks.register(second)

    forks._before_fork()
    assert log == ["take a", "take b", "take c"]
    assert [a.held, b.held, c.held] == [True, True, True]
    forks._release_gates()  # after the fork, in the parent

    assert log[3:] == ["free c", "free b", "free a"]
    assert [a.held, b.held, c.held] == [False, False, False]


@pytest.mark.usefixtures("registry")
def test_in_the_child_the_gates_are_let_go_before_the_hooks_run_in_registration_order() -> None:
    log: list[str] = []
    gate = _Gate("g", log)
    hooks = [_Hooks(name, log, gate) for name in ("one", "two", "three")]
    for h in hooks:
        forks.register(h)

    _fork_in_child()

    # A gate listed by three objects is taken once; every hook finds it free.
    assert log == ["take g", "free g", "child one", "child two", "child three"]


@pytest.mark.usefixtures("registry")
def test_registering_twice_keeps_the_first_place_and_unregister_forgets() -> None:
    log: list[str] = []
    one, two = _Hooks("one", log), _Hooks("two", log)
    forks.register(one)
    forks.register(two)
    forks.register(one)
    assert forks.registered() == [one, two]

    forks.unregister(one)
    forks.unregister(one)  # not registered any more: nothing to do
    assert forks.registered() == [two]
    forks.register(one)  # registered again: it now comes last
    assert forks.registered() == [two, one]

    _fork_in_child()
    assert log == ["child two", "child one"]


# -- weak registration ------------------------------------------------------------------------


@pytest.mark.usefixtures("registry")
def test_registration_does_not_keep_an_object_alive() -> None:
    log: list[str] = []
    kept, dropped = _Hooks("kept", log), _Hooks("dropped", log)
    forks.register(kept)
    forks.register(dropped)
    gone = weakref.ref(dropped)

    del dropped
    gc.collect()

    assert gone() is None
    assert forks.registered() == [kept]
    assert len(forks._registry) == 1  # the dead entry is removed, not only skipped
    _fork_in_child()
    assert log == ["child kept"]


@pytest.mark.usefixtures("registry")
def test_an_unclosed_service_is_still_collected(tmp_path: Path) -> None:
    service = AuditService(AuditSettings(database=tmp_path / "audit.db", async_writes=False))
    assert forks.registered()[-1] is service
    gone = weakref.ref(service)

    del service
    gc.collect()

    assert gone() is None
    assert all(not isinstance(obj, AuditService) for obj in forks.registered())


def test_a_kept_inherited_resource_stays_referenced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forks, "_inherited", [])

    class Resource:
        pass

    resource = Resource()
    alive = weakref.ref(resource)
    forks.keep_inherited(resource)
    del resource
    gc.collect()

    assert alive() is not None


# -- failing hooks ----------------------------------------------------------------------------


@pytest.mark.usefixtures("registry")
def test_a_failing_hook_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[str] = []
    before, after = _Gate("before", log), _Gate("after", log)
    hooks = [_Hooks("first", log, before), _Failing("failing", log), _Hooks("last", log, after)]
    for h in hooks:  # kept referenced: the registry would let them go
        forks.register(h)

    with caplog.at_level(logging.ERROR, logger="audit_engine.forks"):
        _fork_in_child()

    assert log == [
        "take before",
        "take after",
        "free after",
        "free before",
        "child first",
        "child last",
    ]
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("fork_gates() of ")
    assert messages[0].endswith("failed; forking without its gates")
    assert messages[1].startswith("after_fork_in_child() of ")
    assert messages[1].endswith(" failed")


# -- the engine's objects ---------------------------------------------------------------------


def test_the_engine_s_fork_aware_objects_provide_the_protocol(tmp_path: Path) -> None:
    settings = AuditSettings(database=tmp_path / "audit.db", cleanup_enabled=True)
    with AuditService(settings) as service:
        writer, cleanup = service.writer, service._cleanup
        assert writer is not None
        assert cleanup is not None
        objects = [service, writer, cleanup, writer._dead_letters, lifecycle._process]
        for obj in objects:
            assert isinstance(obj, forks.ForkAware)
        registered = forks.registered()
        assert all(any(obj is r for r in registered) for obj in objects)
        # The service waits for its writer's, its cleanup thread's and its synchronous gates;
        # the writer and the cleanup thread also register their own, for when they outlive it.
        assert list(writer.fork_gates()) == [writer.fork_gate]
        assert list(cleanup.fork_gates()) == [cleanup.fork_gate]
        assert service.fork_gates() == [writer.fork_gate, cleanup.fork_gate, service._sync.lock]
    assert not any(r is service for r in forks.registered())  # closed: nothing to reset
    assert isinstance(_EventIdGenerator(), forks.ForkAware)
    assert isinstance(DeadLetterFile(tmp_path / "dead.jsonl"), forks.ForkAware)


# -- real forks -------------------------------------------------------------------------------


def _fork_and_report(in_child: object) -> str:
    """Fork; the child runs ``in_child()`` and sends back the text it returns; bounded."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        code = 0
        try:
            os.close(read_fd)
            text = in_child()  # type: ignore[operator]
            os.write(write_fd, str(text).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    try:
        ready, _, _ = select.select([read_fd], [], [], CHILD_TIMEOUT_S)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"forked child {pid} said nothing within {CHILD_TIMEOUT_S}s")
        chunks = []
        while chunk := os.read(read_fd, 4096):
            chunks.append(chunk)
    finally:
        os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return b"".join(chunks).decode()


@pytest.mark.usefixtures("registry")
def test_a_fork_waits_for_a_gate_another_thread_holds_and_the_child_finds_it_free() -> None:
    log: list[str] = []
    gate = threading.RLock()
    holding, fork_started = threading.Event(), threading.Event()
    released: list[bool] = []

    class Announce:
        """Registered first: its fork_gates() runs as the fork starts."""

        def fork_gates(self) -> tuple[()]:
            fork_started.set()
            return ()

        def after_fork_in_child(self) -> None:
            pass

    class Holder:
        def fork_gates(self) -> tuple[threading.RLock]:
            return (gate,)

        def after_fork_in_child(self) -> None:
            log.append("child holder")

    def hold_until_the_fork_starts() -> None:
        with gate:
            holding.set()
            fork_started.wait(CHILD_TIMEOUT_S)
            released.append(True)  # written before the fork can go on

    announce, holder = Announce(), Holder()
    forks.register(announce)
    forks.register(holder)
    thread = threading.Thread(target=hold_until_the_fork_starts)
    thread.start()
    assert holding.wait(CHILD_TIMEOUT_S)

    def in_child() -> str:
        # The child's memory is the parent's at the fork: had the fork not waited for the gate,
        # ``released`` would be empty here and the gate held by a thread that is not copied.
        free = gate.acquire(blocking=False)
        return f"{released} {free} {log}"

    reply = _fork_and_report(in_child)
    thread.join(CHILD_TIMEOUT_S)

    assert reply == "[True] True ['child holder']"
    assert gate.acquire(blocking=False)  # and the parent's copy is free again
    gate.release()


def test_a_real_fork_reseeds_the_ids_and_resets_an_open_service(tmp_path: Path) -> None:
    from audit_engine.models import new_event_id

    settings = AuditSettings(database=tmp_path / "audit.db", async_writes=False)
    with AuditService(settings) as service:
        service.record(action="parent.before")
        parent_tag = new_event_id()[-8:]

        def in_child() -> str:
            # The engine's own hooks ran: a fresh id tag, a fresh synchronous counter.
            service.record(action="child.write")
            return f"{new_event_id()[-8:]} {service.stats().written}"

        child_tag, written = _fork_and_report(in_child).split()

        assert child_tag != parent_tag
        assert written == "1"
        assert service.stats().written == 1
