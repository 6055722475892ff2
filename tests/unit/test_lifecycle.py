"""lifecycle: which signal handlers the engine installs, and where; which writers a fork keeps.

``install_signal_handlers()`` is the application's opt-in; a multiprocessing child gets the SIGTERM
drain by itself (``Pool.terminate()`` and ``Process.terminate()`` end children by SIGTERM). Signal
dispositions of the test process are restored after each test. Children run with the 'fork'
start method, report through their exit code and are joined with a timeout.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import signal
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from audit_engine import AuditService, AuditSettings, forks, install_signal_handlers
from audit_engine.pipeline import lifecycle
from audit_engine.pipeline.writer import Writer

JOIN_TIMEOUT_S = 60
fork = multiprocessing.get_context("fork")


def _signal_once_blocked(caller: FrameType, lines_below: int, signum: int) -> None:
    """Send ``signum`` to a thread of its own once the main thread is blocked ``lines_below``
    the calling line of ``caller`` (in a C call there, so it runs no Python handler by itself).
    """
    main = threading.main_thread().ident
    assert main is not None
    here, blocked_at = caller.f_code, caller.f_lineno + lines_below

    def signal_once_main_blocks() -> None:
        frame = sys._current_frames()[main]
        while frame.f_code is not here or frame.f_lineno != blocked_at:
            threading.Event().wait(0.01)
            frame = sys._current_frames()[main]
        signal.pthread_kill(threading.get_ident(), signum)

    threading.Thread(target=signal_once_main_blocks).start()


@pytest.fixture(autouse=True)
def _signals_restored() -> Iterator[None]:
    """Default dispositions and no wakeup fd for the test; the process's own ones afterwards."""
    saved = {
        signum: signal.getsignal(signum)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
    }
    installed = dict(lifecycle._installed)
    wakeup = (lifecycle._wakeup_pipe, lifecycle._wakeup_pid)
    saved_fd = signal.set_wakeup_fd(-1)
    lifecycle._wakeup_pipe, lifecycle._wakeup_pid = None, 0
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    lifecycle._installed.clear()
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(saved_fd)
        pipe = lifecycle._wakeup_pipe
        if pipe is not None:
            os.close(pipe[1])  # the watcher reads the end of its pipe and stops
            for thread in threading.enumerate():
                if thread.name == "audit-signal-watch":
                    thread.join(JOIN_TIMEOUT_S)
            os.close(pipe[0])
        lifecycle._wakeup_pipe, lifecycle._wakeup_pid = wakeup
        lifecycle._installed.clear()
        lifecycle._installed.update(installed)


def _settings(db_path: Path) -> AuditSettings:
    return AuditSettings(database=db_path, buffer_flush_interval=3600, cleanup_enabled=False)


def _run_child(target: Callable[..., None], *args: Any) -> int | None:
    child = fork.Process(target=target, args=args)
    child.start()
    child.join(JOIN_TIMEOUT_S)
    if child.is_alive():  # pragma: no cover - only when the test is failing
        child.kill()
        child.join(JOIN_TIMEOUT_S)
    return child.exitcode


def _sigterm_drains() -> bool:
    return signal.getsignal(signal.SIGTERM) is lifecycle._on_signal


def _as_a_child_starts() -> None:
    """SIGTERM as a multiprocessing child has it, unless someone measures the test run.

    coverage (``sigterm = true`` in pyproject.toml) installs a SIGTERM handler of its own when
    it starts measuring the child, which the engine rightly leaves alone.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


# -- install_signal_handlers() ------------------------------------------------------------------


def test_install_signal_handlers_leaves_pythons_keyboard_interrupt_alone() -> None:
    install_signal_handlers()

    assert _sigterm_drains()
    # Ctrl-C raises KeyboardInterrupt at once; the exit hook drains if it ends the program.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert list(lifecycle._installed) == [signal.SIGTERM]


def test_install_signal_handlers_drains_first_where_sigint_would_kill() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    install_signal_handlers()
    install_signal_handlers()  # idempotent

    assert signal.getsignal(signal.SIGINT) is lifecycle._on_signal
    assert lifecycle._installed == {signal.SIGTERM: signal.SIG_DFL, signal.SIGINT: signal.SIG_DFL}


def test_install_signal_handlers_leaves_an_ignored_signal_ignored() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    install_signal_handlers((signal.SIGTERM,))

    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    assert lifecycle._installed == {}


# -- the SIGTERM drain of a multiprocessing child -----------------------------------------------


def test_a_service_in_the_main_process_leaves_sigterm_alone(db_path: Path) -> None:
    with AuditService(_settings(db_path)):
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert lifecycle._installed == {}


def _child_makes_a_service(db_path: Path) -> None:
    _as_a_child_starts()
    with AuditService(_settings(db_path)):
        drains = _sigterm_drains()
    raise SystemExit(0 if drains else 3)


def _child_with_its_own_handler(db_path: Path) -> None:
    def own(signum: int, frame: object) -> None:  # pragma: no cover - never signalled
        pass

    signal.signal(signal.SIGTERM, own)
    with AuditService(_settings(db_path)):
        kept = signal.getsignal(signal.SIGTERM) is own
    raise SystemExit(0 if kept else 3)


def _child_makes_a_service_in_a_thread(db_path: Path) -> None:
    _as_a_child_starts()
    made: list[AuditService] = []
    thread = threading.Thread(target=lambda: made.append(AuditService(_settings(db_path))))
    thread.start()
    thread.join(JOIN_TIMEOUT_S)
    raise SystemExit(0 if made and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL else 3)


def _child_inherits_a_service() -> None:
    handler = signal.getsignal(signal.SIGTERM)
    # When coverage measures this child, its handler came first and is rightly left alone
    # (tests/reliability/test_pools.py runs the inherited case unmeasured).
    measured = type(getattr(handler, "__self__", None)).__name__ == "Coverage"
    raise SystemExit(0 if measured or handler is lifecycle._on_signal else 3)


@pytest.mark.parametrize(
    "target",
    [_child_makes_a_service, _child_with_its_own_handler, _child_makes_a_service_in_a_thread],
)
def test_a_multiprocessing_child_drains_on_sigterm_only_where_sigterm_is_the_default(
    db_path: Path, target: Callable[[Path], None]
) -> None:
    assert _run_child(target, db_path) == 0


def test_a_service_inherited_by_a_multiprocessing_child_drains_on_sigterm(db_path: Path) -> None:
    with AuditService(_settings(db_path)):
        assert _run_child(_child_inherits_a_service) == 0
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the parent's is unchanged


def _child_records_then_waits(db_path: Path, count: int, ready: Any) -> None:
    _as_a_child_starts()
    service = AuditService(_settings(db_path))
    for i in range(count):
        service.record(action="child.terminated", details={"i": i})
    ready.set()
    threading.Event().wait()  # until terminate()


def test_process_terminate_drains_the_child_then_ends_it_by_sigterm(db_path: Path) -> None:
    ready = fork.Event()
    child = fork.Process(target=_child_records_then_waits, args=(db_path, 300, ready))
    child.start()
    try:
        assert ready.wait(JOIN_TIMEOUT_S)
        child.terminate()
        child.join(JOIN_TIMEOUT_S)
        assert child.exitcode == -signal.SIGTERM
    finally:
        if child.is_alive():  # pragma: no cover - only when the test is failing
            child.kill()
            child.join(JOIN_TIMEOUT_S)
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM audit_entries").fetchone() == (300,)


def _child_signalled_in_another_thread(db_path: Path, count: int) -> None:
    """SIGTERM reaches a thread other than the main one while the main thread is blocked.

    Python then runs the handler only when the main thread next runs bytecode — here never,
    as for a Pool worker whose SIGTERM arrives just before it blocks reading its next task.
    """
    _as_a_child_starts()
    service = AuditService(_settings(db_path))
    for i in range(count):
        service.record(action="child.blocked", details={"i": i})
    blocker = threading.Lock()
    blocker.acquire()
    _signal_once_blocked(sys._getframe(), 1, signal.SIGTERM)
    blocker.acquire()  # never released: only a nudge of this thread lets the handler run


def test_a_sigterm_the_main_thread_did_not_see_still_drains_and_ends_the_child(
    db_path: Path,
) -> None:
    assert _run_child(_child_signalled_in_another_thread, db_path, 120) == -signal.SIGTERM
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM audit_entries").fetchone() == (120,)


# -- the wakeup fd ------------------------------------------------------------------------------


def test_an_application_wakeup_fd_is_left_to_the_application() -> None:
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd)
    try:
        install_signal_handlers((signal.SIGTERM,))
        assert _sigterm_drains()  # the handler still drains; only the nudge is missing
        assert signal.set_wakeup_fd(write_fd) == write_fd
        assert lifecycle._wakeup_pipe is None
    finally:
        signal.set_wakeup_fd(-1)
        os.close(read_fd)
        os.close(write_fd)


def _child_has_a_wakeup_pipe_of_its_own(parent_write_fd: int) -> None:
    own = signal.set_wakeup_fd(-1)
    watching = any(t.name == "audit-signal-watch" for t in threading.enumerate())
    ok = own not in (-1, parent_write_fd) and watching
    raise SystemExit(0 if ok else 3)


def _child_has_no_wakeup_fd() -> None:
    raise SystemExit(0 if signal.set_wakeup_fd(-1) == -1 else 3)


def test_a_forked_child_gets_a_wakeup_pipe_of_its_own_or_none(db_path: Path) -> None:
    install_signal_handlers((signal.SIGTERM,))
    pipe = lifecycle._wakeup_pipe
    assert pipe is not None
    with AuditService(_settings(db_path)):  # a live service: the child re-checks its watcher
        assert _run_child(_child_has_a_wakeup_pipe_of_its_own, pipe[1]) == 0

    # Once the handler has handed SIGTERM back, a child has nothing to watch.
    with lifecycle._signal_lock:
        signal.signal(signal.SIGTERM, lifecycle._installed.pop(signal.SIGTERM))
    assert _run_child(_child_has_no_wakeup_fd) == 0
    assert lifecycle._wakeup_pipe == pipe  # the parent's is untouched

    # One the application set meanwhile stays the application's.
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd)
    try:
        assert _run_child(_child_keeps_the_wakeup_fd, write_fd) == 0
    finally:
        signal.set_wakeup_fd(-1)
        os.close(read_fd)
        os.close(write_fd)


def _child_keeps_the_wakeup_fd(write_fd: int) -> None:
    raise SystemExit(0 if signal.set_wakeup_fd(-1) == write_fd else 3)


def test_the_watcher_is_only_set_up_from_the_main_thread() -> None:
    thread = threading.Thread(target=lifecycle._watch_signals)
    thread.start()
    thread.join(JOIN_TIMEOUT_S)
    assert lifecycle._wakeup_pipe is None
    assert signal.set_wakeup_fd(-1) == -1


# -- the handler, in this process ---------------------------------------------------------------


def test_the_handler_drains_then_calls_the_applications_handler_even_if_the_main_thread_missed_it(
    db_path: Path,
) -> None:
    called = threading.Lock()
    called.acquire()
    signal.signal(signal.SIGUSR1, lambda signum, frame: called.release())
    install_signal_handlers((signal.SIGUSR1,))
    service = AuditService(_settings(db_path))
    event_id = service.record(action="signal.in_process")
    # The main thread is not woken: only the watcher's nudge makes it run the handler.
    _signal_once_blocked(sys._getframe(), 1, signal.SIGUSR1)
    assert called.acquire(timeout=JOIN_TIMEOUT_S)  # a C call: this frame is the innermost
    # The application's handler ran after the drain, which closed the service.
    assert service.closed
    assert lifecycle._installed == {}
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("SELECT event_id FROM audit_entries").fetchall() == [(event_id,)]


def test_without_multiprocessing_imported_there_is_nothing_to_hook(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with AuditService(_settings(db_path)):
        monkeypatch.delitem(sys.modules, "multiprocessing.process")
        lifecycle._drain_on_sigterm_in_mp_child()
        monkeypatch.delitem(sys.modules, "multiprocessing.util")
        lifecycle._register_mp_hooks()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


# -- fork: which writers and services the child keeps -----------------------------------------


def _child_forgets_the_orphaned_writer(kept: AuditService, orphan: Writer) -> None:
    registered = forks.registered()
    checks = [
        # An open service and its writer: registered still, and the writer started again.
        any(obj is kept for obj in registered),
        kept.writer in lifecycle._live_writers,
        kept.writer is not None and kept.writer.alive,
        # A writer whose service is gone holds the parent's entries: not drained at exit here,
        # and its gate not waited for at the next fork.
        orphan not in lifecycle._live_writers,
        not any(obj is orphan for obj in registered),
    ]
    raise SystemExit(0 if all(checks) else 3)


def test_a_forked_child_forgets_a_writer_whose_service_is_gone(tmp_path: Path) -> None:
    with AuditService(_settings(tmp_path / "kept.db")) as kept:
        dropped: AuditService | None = AuditService(_settings(tmp_path / "dropped.db"))
        assert dropped is not None
        orphan = dropped.writer
        assert orphan is not None
        dropped = None  # garbage-collected unclosed: its writer is asked to stop
        gc.collect()
        try:
            assert orphan in lifecycle._live_writers
            assert any(obj is orphan for obj in forks.registered())

            assert _run_child(_child_forgets_the_orphaned_writer, kept, orphan) == 0

            # The parent's registries are untouched.
            assert orphan in lifecycle._live_writers
            assert any(obj is orphan for obj in forks.registered())
        finally:
            orphan.stop(JOIN_TIMEOUT_S)


def _child_can_take_the_signal_lock() -> None:
    raise SystemExit(0 if lifecycle._signal_lock.acquire(blocking=False) else 3)


def test_a_forked_child_takes_a_fresh_signal_lock_even_if_the_watcher_held_it() -> None:
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:  # as the watcher does around a nudge
        with lifecycle._signal_lock:
            holding.set()
            done.wait(JOIN_TIMEOUT_S)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert holding.wait(JOIN_TIMEOUT_S)
        assert _run_child(_child_can_take_the_signal_lock) == 0
    finally:
        done.set()
        thread.join(JOIN_TIMEOUT_S)
