"""Process lifecycle: drain every service at exit, give every service a fresh start after fork.

Weak registries of the live services and writers let the exit hook find them without keeping them
alive. Fork safety goes through :mod:`audit_engine.forks` (the package's one
``os.register_at_fork``): :func:`register` registers each open service there too (its gates, its
reset in a child), each writer registers its own gate, and this module's :data:`_process` hooks,
in a child, forget the writers whose service is gone and set up the multiprocessing and signal
hooks again.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
import weakref
from typing import Any, Protocol

from audit_engine import forks
from audit_engine.pipeline.writer import Writer

# How long the exit hook lets each unclosed service drain before the rest is dead-lettered.
EXIT_DRAIN_TIMEOUT_S = 60.0


class _Service(Protocol):
    @property
    def writer(self) -> Writer | None: ...

    def close(self, timeout: float | None = None) -> bool: ...

    def fork_gates(self) -> list[threading.RLock]: ...

    def after_fork_in_child(self) -> None: ...


# Weak: an unclosed service can still be garbage-collected. Writers stay reachable through their
# threads until drained, so the exit hook also finds writers whose service is already gone.
_live_services: weakref.WeakSet[_Service] = weakref.WeakSet()
_live_writers: weakref.WeakSet[Writer] = weakref.WeakSet()


def register(service: _Service) -> None:
    """Drain ``service`` (and its writer) at exit and reset it in a forked child."""
    _live_services.add(service)
    if service.writer is not None:
        _live_writers.add(service.writer)
    forks.register(service)
    _register_mp_hooks()


def unregister(service: _Service) -> None:
    """``service`` was closed: nothing left to drain, nor to reset in a child."""
    _live_services.discard(service)
    forks.unregister(service)


def _drain_at_exit() -> None:
    for service in list(_live_services):
        service.close(EXIT_DRAIN_TIMEOUT_S)
    for writer in list(_live_writers):
        if not writer.closed or writer.alive:
            writer.stop(EXIT_DRAIN_TIMEOUT_S)


# multiprocessing ends its children with os._exit(), which skips atexit; its exit function still
# runs its own finalizers, so the drain is registered there too. The bootstrap of a fork or
# forkserver child clears the finalizers it inherited (or made while importing the main module),
# then runs the after-fork callbacks: ours registers the finalizer again, and installs the SIGTERM
# drain now that the process knows its parent.
_mp_finalizer: Any = None
_mp_finalizer_pid = 0
_mp_after_fork_pid = 0


def _register_mp_hooks(_: object = None) -> None:
    global _mp_finalizer, _mp_finalizer_pid, _mp_after_fork_pid
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is None:
        return
    pid = os.getpid()
    # A finalizer made by the parent is inherited but never runs in a child (it checks the pid).
    if _mp_finalizer_pid != pid or not _mp_finalizer.still_active():
        _mp_finalizer = mp_util.Finalize(None, _drain_at_exit, exitpriority=100)
        _mp_finalizer_pid = pid
    if _mp_after_fork_pid != pid:
        mp_util.register_after_fork(_drain_at_exit, _register_mp_hooks)
        _mp_after_fork_pid = pid
    _drain_on_sigterm_in_mp_child()


def _drain_on_sigterm_in_mp_child() -> None:
    """In a multiprocessing child, make SIGTERM drain first (unless the application handles it).

    ``Pool.terminate()`` — called by ``with Pool() as pool:`` on the way out — and
    ``Process.terminate()`` end the children by SIGTERM, whose default action would lose every
    entry still queued. Only the main thread may install a handler, and only the default
    disposition is replaced: a handler the application installed, or SIG_IGN, is its choice.
    """
    if not _live_services:
        return
    if signal.SIGTERM in _installed:
        # Inherited: a forkserver child, for one, starts by clearing the wakeup fd it inherited.
        _watch_signals()
        return
    mp_process = sys.modules.get("multiprocessing.process")
    if mp_process is None:
        return
    # A spawn or forkserver child imports the main module (which may make a service) before it
    # knows its parent; multiprocessing marks the process as "inheriting" meanwhile.
    child = mp_process.parent_process() is not None
    if not (child or getattr(mp_process.current_process(), "_inheriting", False)):
        return  # not a multiprocessing child: signals belong to the application
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return
    _take_over(signal.SIGTERM, signal.SIG_DFL)


class _ProcessForkHooks:
    """In a child: the writers' registry, the multiprocessing exit hooks and the signal watcher.

    The services are registered with :mod:`audit_engine.forks` themselves (see :func:`register`):
    before a fork it waits for their gates — the writer's, held for one transaction attempt (at
    most one short busy-wait slice of waiting) or one dead-letter append; the cleanup thread's,
    for one purge step (up to the busy timeout); the synchronous lock, for a whole synchronous
    write (up to the busy timeout) — and in the child each open one starts over.
    """

    def fork_gates(self) -> tuple[()]:
        return ()

    def after_fork_in_child(self) -> None:
        global _signal_lock
        # Held only around a disposition change or a nudge, so the fork does not wait for it;
        # the watcher that may have held it is not copied, so the child takes a fresh one.
        _signal_lock = threading.RLock()
        mp_util = sys.modules.get("multiprocessing.util")
        if mp_util is not None:
            # A multiprocessing child clears its finalizers right after the fork, then runs its
            # after-fork callbacks: register from there.
            mp_util.register_after_fork(_drain_at_exit, _register_mp_hooks)
        # A writer whose service is gone holds only the parent's entries: the child must not
        # write them, nor wait for its gate.
        keep = {id(service.writer) for service in list(_live_services)}
        for writer in list(_live_writers):
            if id(writer) not in keep:
                _live_writers.discard(writer)
                forks.unregister(writer)
        _watch_signals_after_fork()


# Module-level, so the weak registration in audit_engine.forks keeps it for the process's life.
_process = _ProcessForkHooks()
forks.register(_process)
atexit.register(_drain_at_exit)


# -- signals ----------------------------------------------------------------------------------

_installed: dict[int, Any] = {}


def install_signal_handlers(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
    """Make SIGTERM (and SIGINT where it would kill) close every open service first.

    Opt-in, because signal handlers belong to the application: call it once, from the main
    thread, after installing your own handlers if you have any. For each signal:

    - default action (``SIG_DFL``, SIGTERM's normally): drain every service, then the process
      ends by the signal, as it would have.
    - a handler the application installed: drain every service, then that handler is called.
    - Python's ``default_int_handler`` (SIGINT's normally) is left as it is: ``KeyboardInterrupt``
      is raised at once where the program is, the services stay open (so an ``except`` or
      ``finally`` may still record), and the exit hook drains them when the interrupt ends the
      program. Draining first would close them under a program that is still running.
    - ``SIG_IGN`` stays ignored, and a handler installed outside Python is left alone.

    Without it, SIGTERM's default action ends the process at once and loses what is queued.
    Idempotent.
    """
    for signum in signals:
        if signum in _installed:
            continue
        previous = signal.getsignal(signum)
        # None: a handler installed outside Python, which could not be put back afterwards.
        if previous in (None, signal.SIG_IGN) or previous is signal.default_int_handler:
            continue
        _take_over(signum, previous)


def _take_over(signum: int, previous: Any) -> None:
    with _signal_lock:
        _installed[signum] = previous
        signal.signal(signum, _on_signal)
    _watch_signals()


def _on_signal(signum: int, frame: Any) -> None:
    # The handler interrupts the main thread wherever it is — possibly inside record(), holding
    # the queue's lock that the drain needs. So it only hands over: put the previous handling
    # back, drain in a thread of its own, then deliver the signal again to the main thread,
    # which acts as it would have (SIG_DFL: terminate with the signal's status; an application
    # handler: whatever it does). Until then the main thread runs on, and record() raises
    # AuditServiceClosed once the drain has closed its service.
    with _signal_lock:  # the watcher never nudges once the previous handling is back
        if signum not in _installed:  # pragma: no cover - a nudge that raced this handler
            return
        signal.signal(signum, _installed.pop(signum))
    main_ident = threading.main_thread().ident
    assert main_ident is not None  # the main thread has started: it is running this handler

    def drain_then_deliver() -> None:
        _drain_at_exit()
        signal.pthread_kill(main_ident, signum)

    threading.Thread(target=drain_then_deliver, name="audit-signal-drain").start()


# A Python signal handler runs in the main thread at its next check between bytecodes. A signal
# that arrives just before the main thread blocks (Event.wait(), a pipe read: where a Pool worker
# waits for its next task) is recorded but not acted on until something wakes that thread, which
# may be never — and Pool.terminate() then waits for the worker for ever. So the C-level handler
# also writes the signal's number to a wakeup pipe, and a watcher thread nudges the main thread
# with the same signal until our handler has run. (Skipped if the application already owns the
# wakeup fd, as asyncio does.)
_NUDGE_INTERVAL_S = 0.05
_signal_lock = threading.RLock()
_wakeup_pipe: tuple[int, int] | None = None  # (read end, write end)
_wakeup_pid = 0


def _watch_signals() -> None:
    global _wakeup_pipe, _wakeup_pid
    if _wakeup_pid == os.getpid():
        return
    inherited = _wakeup_pipe
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except ValueError:  # not the main thread
        previous = None
    if previous is None or (previous != -1 and (inherited is None or previous != inherited[1])):
        if previous is not None:
            signal.set_wakeup_fd(previous)  # the application's own: leave it
        os.close(read_fd)
        os.close(write_fd)
        return
    if inherited is not None:  # the parent's pipe, after a fork: the parent's watcher reads it
        for fd in inherited:
            with contextlib.suppress(OSError):
                os.close(fd)
    _wakeup_pipe, _wakeup_pid = (read_fd, write_fd), os.getpid()
    threading.Thread(
        target=_nudge_on_signal, args=(read_fd,), name="audit-signal-watch", daemon=True
    ).start()


def _nudge_on_signal(read_fd: int) -> None:
    main_ident = threading.main_thread().ident
    assert main_ident is not None
    while True:
        try:
            received = os.read(read_fd, 64)
        except OSError:  # pragma: no cover - the pipe was closed under us
            return
        if not received:  # pragma: no cover - the write end is never closed while we run
            return
        for signum in set(received):
            _nudge_until_handled(main_ident, signum)


def _nudge_until_handled(main_ident: int, signum: int) -> None:
    handled = threading.Event()  # never set: a bounded wait between two nudges
    while True:
        with _signal_lock:
            if signum not in _installed:
                return  # our handler ran (or the signal is not ours)
            # Delivered before the main thread can run any code, so our handler is still the
            # disposition then: the nudge cannot end the process before the drain.
            signal.pthread_kill(main_ident, signum)
        handled.wait(_NUDGE_INTERVAL_S)


def _watch_signals_after_fork() -> None:
    """In a forked child: the parent's wakeup pipe must not carry the child's signals."""
    global _wakeup_pipe
    inherited = _wakeup_pipe
    if inherited is None or _wakeup_pid == os.getpid():
        return
    if _installed:
        _watch_signals()  # a pipe and a watcher of its own (threads do not survive a fork)
        return
    with contextlib.suppress(ValueError):  # not forked from the main thread: not ours to set
        previous = signal.set_wakeup_fd(-1)
        if previous != inherited[1]:
            signal.set_wakeup_fd(previous)  # not ours any more: leave it
    for fd in inherited:
        with contextlib.suppress(OSError):
            os.close(fd)
    _wakeup_pipe = None
