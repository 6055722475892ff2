"""Process lifecycle: drain every service at exit, give every service a fresh start after fork.

This is the engine's only module-level state: weak registries of the live services and writers,
so that the exit hook and the fork hook can find them without keeping them alive.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import weakref
from typing import Any, Protocol

from audit_engine.writer import Writer

# How long the exit hook lets each unclosed service drain before the rest is dead-lettered.
EXIT_DRAIN_TIMEOUT_S = 60.0


class _Service(Protocol):
    @property
    def writer(self) -> Writer | None: ...

    def close(self, timeout: float | None = None) -> bool: ...

    def fork_gates(self) -> list[threading.RLock]: ...

    def _reset_after_fork(self) -> None: ...


# Weak: an unclosed service can still be garbage-collected. Writers stay reachable through their
# threads until drained, so the exit hook also finds writers whose service is already gone.
_live_services: weakref.WeakSet[_Service] = weakref.WeakSet()
_live_writers: weakref.WeakSet[Writer] = weakref.WeakSet()


def register(service: _Service) -> None:
    """Drain ``service`` (and its writer) at exit and reset it in a forked child."""
    _live_services.add(service)
    if service.writer is not None:
        _live_writers.add(service.writer)
    _register_mp_finalizer()


def unregister(service: _Service) -> None:
    """``service`` was closed: nothing left to drain."""
    _live_services.discard(service)


def _drain_at_exit() -> None:
    for service in list(_live_services):
        service.close(EXIT_DRAIN_TIMEOUT_S)
    for writer in list(_live_writers):
        if not writer.closed or writer.alive:
            writer.stop(EXIT_DRAIN_TIMEOUT_S)


# multiprocessing ends its children with os._exit(), which skips atexit; its exit function still
# runs its own finalizers, so the drain is registered there too (once per process).
_mp_finalizer_pid = 0


def _register_mp_finalizer(_: object = None) -> None:
    global _mp_finalizer_pid
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is None or _mp_finalizer_pid == os.getpid():
        return
    mp_util.Finalize(None, _drain_at_exit, exitpriority=100)
    _mp_finalizer_pid = os.getpid()


# Gates taken before a fork and let go after it, in the parent and in the child.
_held_gates: list[threading.RLock] = []


def _before_fork() -> None:
    # Wait until no engine thread is inside SQLite: a SQLite mutex locked by a thread at the
    # moment of the fork would stay locked forever in the child. Each thread holds only its own
    # gate, for one short step (at most one busy-wait slice), so this cannot deadlock.
    gates = {id(gate): gate for service in list(_live_services) for gate in service.fork_gates()}
    gates.update((id(w.fork_gate), w.fork_gate) for w in list(_live_writers))
    for gate in gates.values():
        gate.acquire()
        _held_gates.append(gate)


def _release_gates() -> None:
    while _held_gates:
        _held_gates.pop().release()


def _after_fork_in_child() -> None:
    _release_gates()
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        # A multiprocessing child clears its finalizers right after the fork, then runs its
        # after-fork callbacks: register from there.
        mp_util.register_after_fork(_drain_at_exit, _register_mp_finalizer)
    services = list(_live_services)
    for service in services:
        service._reset_after_fork()
    # A writer whose service is gone holds only the parent's entries: the child must not write them.
    keep = {id(service.writer) for service in services}
    for writer in list(_live_writers):
        if id(writer) not in keep:
            _live_writers.discard(writer)


atexit.register(_drain_at_exit)
os.register_at_fork(
    before=_before_fork, after_in_parent=_release_gates, after_in_child=_after_fork_in_child
)


# -- signals ----------------------------------------------------------------------------------

_installed: dict[int, Any] = {}


def install_signal_handlers(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
    """Make SIGTERM and SIGINT close (drain) every open service, then act as they would have.

    Opt-in, because signal handlers belong to the application: call it once, from the main
    thread, after installing your own handlers if you have any — they run afterwards (the
    signal is delivered again once every service is drained).
    Without it, SIGTERM's default action ends the process at once and loses what is queued.
    A signal the process ignores (``SIG_IGN``) stays ignored. Idempotent.
    """
    for signum in signals:
        if signum in _installed:
            continue
        previous = signal.getsignal(signum)
        if previous is signal.SIG_IGN:
            continue
        _installed[signum] = previous
        signal.signal(signum, _on_signal)


def _on_signal(signum: int, frame: Any) -> None:
    # The handler interrupts the main thread wherever it is — possibly inside record(), holding
    # the queue's lock that the drain needs. So it only hands over: put the previous handling
    # back, drain in a thread of its own, then deliver the signal again to the main thread,
    # which acts as it would have (SIG_DFL: terminate with the signal's status; Python's SIGINT
    # handler: KeyboardInterrupt). Until then the main thread runs on, and record() raises
    # AuditServiceClosed once the drain has closed its service.
    signal.signal(signum, _installed.pop(signum, signal.SIG_DFL))
    main_ident = threading.main_thread().ident
    assert main_ident is not None  # the main thread has started: it is running this handler

    def drain_then_deliver() -> None:
        _drain_at_exit()
        signal.pthread_kill(main_ident, signum)

    threading.Thread(target=drain_then_deliver, name="audit-signal-drain").start()
