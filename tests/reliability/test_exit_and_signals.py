"""How a process ends decides what it keeps: normal exit, SIGTERM, SIGINT and kill -9.

Each test runs a small program (written to ``tmp_path``, run with ``sys.executable``) that records
entries and then ends in one way; the test then reads the database. Every wait is bounded: stdout
is read through a thread with a deadline, every subprocess has a timeout and is killed in a
``finally``. Nothing here sleeps; the paced workload sleeps in the child, where it is the workload.

The kill -9 tests print the measured loss (run with ``-s`` or ``-rA`` to see it).
"""

from __future__ import annotations

import contextlib
import queue
import signal
import sqlite3
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit_engine import AuditStore

CHILD_TIMEOUT_S = 30.0

# -- helpers ------------------------------------------------------------------------------------


def _ids(db_path: Path) -> list[str]:
    """Every stored event_id, in commit (id) order."""
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        return [row[0] for row in conn.execute("SELECT event_id FROM audit_entries ORDER BY id")]


def _script(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


class _Child:
    """A running script whose stdout lines arrive through a reader thread: reads have deadlines."""

    def __init__(self, tmp_path: Path, script: Path, *args: object) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(script), *map(str, args)],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[bytes] = []
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._lines.put(raw.decode())
        self._lines.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self._stderr.append(self.proc.stderr.read())

    def readline(self, timeout_s: float = CHILD_TIMEOUT_S) -> str:
        """The next stdout line; fails the test if none comes in time or the child ended."""
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            pytest.fail(f"no output from the child within {timeout_s}s")
        if line is None:
            pytest.fail(f"the child ended early: {self.wait()} {self.stderr}")
        return line

    def wait(self, timeout_s: float = CHILD_TIMEOUT_S) -> int:
        returncode = self.proc.wait(timeout_s)
        for thread in self._threads:
            thread.join(timeout_s)
        return returncode

    @property
    def stderr(self) -> str:
        return b"".join(self._stderr).decode(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(CHILD_TIMEOUT_S)
        for thread in self._threads:
            thread.join(CHILD_TIMEOUT_S)  # the pipes reach EOF once the child is gone
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def _running(tmp_path: Path, script: Path, *args: object) -> Iterator[_Child]:
    child = _Child(tmp_path, script, *args)
    try:
        yield child
    finally:
        child.kill()


def _run(tmp_path: Path, script: Path, *args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S * 2,
        check=False,
    )


# -- normal exit without close() ----------------------------------------------------------------

# Batches of 500 and a one-hour interval: the last 250 entries can only be committed by the exit
# hook (nothing else ever commits a partial batch here).
EXIT_ENTRIES = 20_250

EXIT_CHILD = """
    import sys
    from pathlib import Path

    from audit_engine import AuditService, AuditSettings

    database, ids_path, count, how = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    service = AuditService(
        AuditSettings(
            database=database,
            queue_maxsize=count,
            buffer_max_size=500,
            buffer_flush_interval=3600,
            cleanup_enabled=False,
        )
    )
    ids = [service.record(action="exit.unclosed", details={"i": i}) for i in range(count)]
    Path(ids_path).write_text("\\n".join(ids) + "\\n")
    stats = service.stats()
    print(stats.accepted, stats.written, flush=True)
    # No close(): the program ends with entries still queued.
    if how == "sys.exit":
        sys.exit(3)
    if how == "exception":
        raise RuntimeError("the application failed")
    """


@pytest.mark.parametrize(("how", "returncode"), [("end", 0), ("sys.exit", 3), ("exception", 1)])
def test_a_program_that_exits_without_close_keeps_every_entry(
    tmp_path: Path, db_path: Path, how: str, returncode: int
) -> None:
    script = _script(tmp_path, "exit_child.py", EXIT_CHILD)
    ids_path = tmp_path / "ids.txt"
    result = _run(tmp_path, script, db_path, ids_path, EXIT_ENTRIES, how)

    assert result.returncode == returncode, result.stderr
    if how == "exception":
        assert "RuntimeError: the application failed" in result.stderr
    else:
        assert result.stderr == ""
    accepted, written_before_exit = map(int, result.stdout.split())
    ids = ids_path.read_text().split()
    assert accepted == len(ids) == len(set(ids)) == EXIT_ENTRIES
    assert written_before_exit <= EXIT_ENTRIES - 250  # the exit hook had work to do
    assert _ids(db_path) == ids  # every entry, once, in order


# -- SIGTERM and SIGINT -------------------------------------------------------------------------

# Batches of 500 and a one-hour interval: at least the last 250 entries are still queued when the
# signal arrives.
SIGNAL_ENTRIES = 5_250

SIGNAL_CHILD = """
    import signal
    import sys
    import threading
    from pathlib import Path

    import audit_engine
    from audit_engine import AuditService, AuditSettings

    # What an interactive program starts with, even if the test runner ignores SIGINT (as a
    # background job of a non-interactive shell does, and its children inherit).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    database, ids_path, count, handlers = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    service = AuditService(
        AuditSettings(
            database=database, buffer_max_size=500, buffer_flush_interval=3600,
            cleanup_enabled=False,
        )
    )
    if handlers == "handlers":
        audit_engine.install_signal_handlers()
    ids = [service.record(action="signal.wait", details={"i": i}) for i in range(count)]
    Path(ids_path).write_text("\\n".join(ids) + "\\n")
    print("ready", flush=True)
    # Until a signal ends the process. Timed waits: Python runs a handler when the main thread
    # next runs bytecode, and a SIGINT landing just before an untimed wait blocks would never be
    # acted on (CPython's own race; the engine's watcher covers only the signals it handles).
    while True:
        threading.Event().wait(1)
    """


def _signal_child(
    tmp_path: Path, db_path: Path, handlers: bool, signum: int
) -> tuple[int, str, list[str]]:
    """Run the child, send ``signum`` once it is ready; (returncode, stderr, accepted ids)."""
    script = _script(tmp_path, "signal_child.py", SIGNAL_CHILD)
    ids_path = tmp_path / "ids.txt"
    mode = "handlers" if handlers else "none"
    with _running(tmp_path, script, db_path, ids_path, SIGNAL_ENTRIES, mode) as child:
        assert child.readline() == "ready\n"
        child.proc.send_signal(signum)
        returncode = child.wait()
    ids = ids_path.read_text().split()
    assert len(ids) == len(set(ids)) == SIGNAL_ENTRIES
    return returncode, child.stderr, ids


def test_sigterm_with_the_signal_handlers_drains_then_dies_by_sigterm(
    tmp_path: Path, db_path: Path
) -> None:
    returncode, stderr, ids = _signal_child(tmp_path, db_path, True, signal.SIGTERM)
    assert returncode == -signal.SIGTERM, stderr
    assert stderr == ""
    assert _ids(db_path) == ids


def test_sigint_with_the_signal_handlers_raises_keyboard_interrupt_and_keeps_everything(
    tmp_path: Path, db_path: Path
) -> None:
    returncode, stderr, ids = _signal_child(tmp_path, db_path, True, signal.SIGINT)
    # Python's own SIGINT handler is left in place: an uncaught KeyboardInterrupt, the exit hook
    # drains, and CPython then ends the process by SIGINT (so the shell sees it as interrupted).
    assert returncode == -signal.SIGINT, stderr
    assert "KeyboardInterrupt" in stderr
    assert _ids(db_path) == ids


def test_sigint_without_the_signal_handlers_still_keeps_everything(
    tmp_path: Path, db_path: Path
) -> None:
    # KeyboardInterrupt is an ordinary (uncaught) exception: the exit hook runs.
    returncode, stderr, ids = _signal_child(tmp_path, db_path, False, signal.SIGINT)
    assert returncode == -signal.SIGINT, stderr
    assert "KeyboardInterrupt" in stderr
    assert _ids(db_path) == ids


def test_sigterm_without_the_signal_handlers_loses_what_is_queued(
    tmp_path: Path, db_path: Path
) -> None:
    returncode, stderr, ids = _signal_child(tmp_path, db_path, False, signal.SIGTERM)
    assert returncode == -signal.SIGTERM, stderr
    committed = _ids(db_path)
    print(
        f"\n[SIGTERM, no handlers] accepted {len(ids)}, committed {len(committed)}, "
        f"lost {len(ids) - len(committed)}"
    )
    # Why install_signal_handlers() exists: the default action kills before any drain.
    assert len(committed) < len(ids)
    assert len(committed) <= SIGNAL_ENTRIES - 250
    assert committed == ids[: len(committed)]  # what was committed is still a prefix


# Where a Ctrl-C lands decides what the application sees: in a recording loop, or in an
# ``except KeyboardInterrupt`` that records how the program ended. Either way the program must end
# by an uncaught KeyboardInterrupt (exit status -2) with every entry kept.
INTERRUPTED_CHILD = """
    import signal
    import sys
    import threading

    import audit_engine
    from audit_engine import AuditService, AuditSettings

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the runner ignores it
    database, ids_path, where = sys.argv[1], sys.argv[2], sys.argv[3]
    service = AuditService(
        AuditSettings(database=database, buffer_flush_interval=3600, cleanup_enabled=False)
    )
    audit_engine.install_signal_handlers()
    with open(ids_path, "w", buffering=1) as out:
        if where == "recording":
            i = 0
            while True:  # until Ctrl-C
                out.write(service.record(action="signal.loop", details={"i": i}) + "\\n")
                i += 1
                if i == 1000:
                    print("ready", flush=True)
        try:
            print("ready", flush=True)
            while True:
                threading.Event().wait(1)  # timed: see SIGNAL_CHILD
        except KeyboardInterrupt:
            out.write(service.record(action="app.interrupted") + "\\n")
            raise
    """


@pytest.mark.parametrize("where", ["recording", "except"])
def test_sigint_with_the_signal_handlers_ends_by_keyboard_interrupt_wherever_it_lands(
    tmp_path: Path, db_path: Path, where: str
) -> None:
    script = _script(tmp_path, "interrupted_child.py", INTERRUPTED_CHILD)
    ids_path = tmp_path / "ids.txt"
    with _running(tmp_path, script, db_path, ids_path, where) as child:
        assert child.readline() == "ready\n"
        child.proc.send_signal(signal.SIGINT)
        returncode = child.wait()
    assert returncode == -signal.SIGINT, child.stderr
    assert child.stderr.rstrip().endswith("KeyboardInterrupt"), child.stderr
    assert "AuditServiceClosed" not in child.stderr
    ids = ids_path.read_text().split()
    assert ids
    stored = _ids(db_path)
    # Every id the app was given is stored, in order. The interrupt may land after the last
    # record() accepted its entry but before the app wrote its id down (or inside record(), after
    # the hand-off): that entry is stored too — one more, never one less.
    assert stored[: len(ids)] == ids
    assert len(stored) - len(ids) <= (1 if where == "recording" else 0)


RECORDING_SIGTERM_CHILD = """
    import os
    import signal
    import sys
    import threading

    import audit_engine
    from audit_engine import AuditService, AuditSettings

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # even if the test runner ignores it
    database, ids_path = sys.argv[1], sys.argv[2]
    service = AuditService(
        AuditSettings(database=database, buffer_flush_interval=3600, cleanup_enabled=False)
    )
    audit_engine.install_signal_handlers()


    class SignalInside:
        \"\"\"The hand-off queue's lock; SIGTERM arrives the 2nd time the main thread holds it.

        Where a SIGTERM sent to a process busy recording lands now and then (between two
        bytecodes of record(), inside the queue's critical section), made deterministic.
        Producers take the lock only to wake the writer (the 1st time: the first entry; the
        2nd: when a batch is full), not for every entry.
        \"\"\"

        def __init__(self, lock):
            self.lock = lock
            self.taken = 0

        def __enter__(self):
            self.lock.acquire()
            if threading.current_thread() is threading.main_thread():
                self.taken += 1
                if self.taken == 2:
                    os.kill(os.getpid(), signal.SIGTERM)
            return self

        def __exit__(self, *exc_info):
            self.lock.release()


    handoff = service.writer._queue
    name = next((n for n in ("_mutex", "mutex") if hasattr(handoff, n)), None)
    if name is None:
        sys.exit("TEST OUT OF DATE: the hand-off queue's lock is no longer _mutex or mutex")
    setattr(handoff, name, SignalInside(getattr(handoff, name)))
    with open(ids_path, "w", buffering=1) as out:
        for i in range(2000):
            out.write(service.record(action="signal.recording", details={"i": i}) + "\\n")
    """


def test_sigterm_while_the_main_thread_is_recording_drains_and_exits(
    tmp_path: Path, db_path: Path
) -> None:
    script = _script(tmp_path, "recording_sigterm_child.py", RECORDING_SIGTERM_CHILD)
    ids_path = tmp_path / "ids.txt"
    with _running(tmp_path, script, db_path, ids_path) as child:
        try:
            returncode: int | None = child.wait(timeout_s=8)
        except subprocess.TimeoutExpired:
            returncode = None
    if "TEST OUT OF DATE" in child.stderr:
        pytest.fail(child.stderr)  # not an AssertionError: reported as a failure, not as the bug
    assert returncode is not None, "the process hung after SIGTERM (deadlock in the handler)"
    assert returncode == -signal.SIGTERM, child.stderr
    ids = ids_path.read_text().split()
    committed = _ids(db_path)
    assert committed[: len(ids)] == ids
    assert len(committed) <= len(ids) + 1  # the record() the signal interrupted, at most


# -- kill -9 ------------------------------------------------------------------------------------

QUEUE_MAXSIZE = 2000
BUFFER_MAX_SIZE = 500
LOSS_BOUND = QUEUE_MAXSIZE + BUFFER_MAX_SIZE

# The child records event ids 000000000, 000000001, ... and after each record() returns writes
# how many were accepted into a shared memory-mapped file, which outlives kill -9. Printing every
# id instead would slow the producer below the writer's pace.
KILL_CHILD = """
    import mmap
    import struct
    import sys
    import time

    from audit_engine import AuditService, AuditSettings

    database, counter_path = sys.argv[1], sys.argv[2]
    queue_maxsize, buffer_max_size = int(sys.argv[3]), int(sys.argv[4])
    interval_s, rate = float(sys.argv[5]), float(sys.argv[6])  # rate 0: as fast as it goes
    service = AuditService(
        AuditSettings(
            database=database,
            queue_maxsize=queue_maxsize,
            buffer_max_size=buffer_max_size,
            buffer_flush_interval=interval_s,
            block_timeout=120,
            cleanup_enabled=False,
        )
    )
    writer = service.writer
    with open(counter_path, "r+b") as f:
        counter = mmap.mmap(f.fileno(), 8)
    started = time.monotonic()
    i = 0
    while True:
        event_id = f"{i:09d}"
        assert service.record(action="stream", event_id=event_id, details={"i": i}) == event_id
        i += 1
        struct.pack_into("<q", counter, 0, i)
        if i % 500 == 0:
            elapsed = time.monotonic() - started
            print(i, writer.queue_depth, writer.written, f"{elapsed:.3f}", flush=True)
        if rate and i % 10 == 0:
            time.sleep(10 / rate)  # the workload's own pace
    """


def _kill_9_mid_stream(
    tmp_path: Path, db_path: Path, *, until: int, interval_s: float, rate: float
) -> tuple[int, list[str], str]:
    """Run the stream, kill -9 it once ``until`` entries were accepted.

    Returns (entries accepted, event ids committed in id order, the child's last progress line).
    """
    script = _script(tmp_path, "kill_child.py", KILL_CHILD)
    counter_path = tmp_path / "accepted.bin"
    counter_path.write_bytes(bytes(8))
    args = (db_path, counter_path, QUEUE_MAXSIZE, BUFFER_MAX_SIZE, interval_s, rate)
    with _running(tmp_path, script, *args) as child:
        progress = ""
        while int(progress.split()[0] if progress else 0) < until:
            progress = child.readline()
        child.proc.kill()
        assert child.wait() == -signal.SIGKILL
    accepted = struct.unpack("<q", counter_path.read_bytes())[0]
    return accepted, _ids(db_path), progress.strip()


def _check_prefix(accepted: int, committed: list[str]) -> int:
    """Assert the committed ids are the first accepted ones, in order; returns the loss."""
    assert committed == [f"{i:09d}" for i in range(len(committed))], "not a gap-free prefix"
    # The counter is written just after record() returns: it can lag by one entry.
    assert len(committed) <= accepted + 1
    return max(accepted - len(committed), 0)


def test_kill_9_at_a_saturating_rate_loses_at_most_the_queue_and_one_batch(
    tmp_path: Path, db_path: Path
) -> None:
    accepted, committed, progress = _kill_9_mid_stream(
        tmp_path, db_path, until=30_000, interval_s=1.0, rate=0
    )
    lost = _check_prefix(accepted, committed)
    _, depth, _, elapsed = progress.split()
    message = (
        f"[kill -9, as fast as record() goes] accepted {accepted} in ~{elapsed}s, committed "
        f"{len(committed)}, lost {lost} (bound {LOSS_BOUND} = queue_maxsize {QUEUE_MAXSIZE} "
        f"+ buffer_max_size {BUFFER_MAX_SIZE}); queue depth at the last progress line {depth}"
    )
    print("\n" + message)
    assert lost <= LOSS_BOUND, message


def test_kill_9_while_the_writer_is_stalled_loses_exactly_the_bound(
    tmp_path: Path, db_path: Path
) -> None:
    # The worst case: the writer cannot commit at all (another connection holds the write lock),
    # the queue fills and record() blocks. Everything accepted is then in memory.
    AuditStore(db_path, create=True).close()
    lock = sqlite3.connect(db_path, isolation_level=None, timeout=10)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        accepted, committed, progress = _kill_9_mid_stream(
            tmp_path, db_path, until=LOSS_BOUND, interval_s=3600, rate=0
        )
    finally:
        lock.close()
    lost = _check_prefix(accepted, committed)
    message = (
        f"[kill -9, writer stalled by a lock] accepted {accepted}, committed {len(committed)}, "
        f"lost {lost} (bound {LOSS_BOUND}); last progress: {progress}"
    )
    print("\n" + message)
    assert (accepted, committed, lost) == (LOSS_BOUND, [], LOSS_BOUND), message


PACED_RATE = 2000.0
PACED_INTERVAL_S = 0.2


def test_kill_9_while_the_writer_keeps_up_loses_about_one_flush_interval(
    tmp_path: Path, db_path: Path
) -> None:
    started = time.monotonic()
    accepted, committed, progress = _kill_9_mid_stream(
        tmp_path, db_path, until=4000, interval_s=PACED_INTERVAL_S, rate=PACED_RATE
    )
    lost = _check_prefix(accepted, committed)
    _, depth, _, elapsed = progress.split()
    rate = accepted / float(elapsed) if float(elapsed) else 0.0
    message = (
        f"[kill -9, paced at ~{rate:.0f}/s, buffer_flush_interval={PACED_INTERVAL_S}s] "
        f"accepted {accepted}, committed {len(committed)}, lost {lost} "
        f"(one interval of traffic is ~{rate * PACED_INTERVAL_S:.0f}; bound {LOSS_BOUND}); "
        f"queue depth at the last progress line {depth}; "
        f"test took {time.monotonic() - started:.1f}s"
    )
    print("\n" + message)
    assert lost <= LOSS_BOUND, message
    # Far below the saturated case: only the batch being collected (and what arrived while it
    # was committed) is in memory.
    assert lost < QUEUE_MAXSIZE, message
