"""The dead-letter path under attack: a fork mid-append, a lock held elsewhere, a full disk.

Issue 11, items 4, 5, 7 and 8. Every wait is bounded: threads are joined with a timeout, the
forked child and the subprocess have one too, and locks are released in a ``finally``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import locked

from audit_engine import AuditService, AuditSettings, AuditStore, AuditWriteError
from audit_engine.pipeline.writer import WRITER_THREAD_NAME
from audit_engine.storage import deadletter

MakeService = Callable[..., AuditService]

# A fork hook of this module, run before the engine's own (hooks registered later run first): it
# tells the test a fork is starting. Fork hooks cannot be removed, so it is inert unless armed.
_fork_starting: list[threading.Event] = []


def _announce_fork() -> None:
    if _fork_starting:
        _fork_starting.pop().set()


os.register_at_fork(before=_announce_fork)


def _ids(db_path: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        return [row[0] for row in conn.execute("SELECT event_id FROM audit_entries ORDER BY id")]


def _is_file(fd: int, path: Path) -> bool:
    return os.path.realpath(f"/proc/self/fd/{fd}") == str(path)


def _lock_is_free(path: Path) -> bool:
    """Whether the dead-letter file's lock could be taken now (by another open file)."""
    fd = os.open(f"{path}.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


@contextlib.contextmanager
def _lock_held_elsewhere(path: Path) -> Iterator[None]:
    """The dead-letter lock held as a replay in another process holds it."""
    fd = os.open(f"{path}.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# -- item 4: a fork while the writer appends ------------------------------------------------------


def _child(service: AuditService, dl_path: Path, go: int) -> int:
    """In the forked child: wait for the parent's go, then check the lock and dead-letter."""
    os.read(go, 1)
    if not _lock_is_free(dl_path):
        return 3  # the child inherited the parent's lock
    try:
        service.record(event_id="dup", action="child", critical=True)
    except AuditWriteError:
        pass
    else:
        return 4
    kept = [e.action for _, e, _ in deadletter.read(dl_path) if e is not None]
    return 0 if kept == ["parent", "child"] else 5


def test_a_fork_during_a_dead_letter_append_waits_for_it_and_the_child_holds_no_lock(
    make_service: MakeService, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dl_path = deadletter.path_for(db_path)
    service = make_service(buffer_flush_interval=3600, block_timeout=5)
    service.record(event_id="dup", action="first")
    assert service.flush(10)

    # The writer's fsync of the dead-letter file blocks until a fork has started.
    in_fsync, release, forking = threading.Event(), threading.Event(), threading.Event()
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        in_writer = threading.current_thread().name == WRITER_THREAD_NAME
        if in_writer and not in_fsync.is_set() and _is_file(fd, dl_path):
            in_fsync.set()
            release.wait(10)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    service.record(event_id="dup", action="parent")
    assert service.writer is not None
    service.writer._wake()
    assert in_fsync.wait(10)
    releaser = threading.Thread(target=lambda: forking.wait(10) and release.set(), daemon=True)
    releaser.start()
    _fork_starting.append(forking)
    go_read, go_write = os.pipe()
    pid = os.fork()  # the engine's fork hook waits until the append is done
    if pid == 0:  # pragma: no cover - the child leaves through os._exit
        code = 6
        try:
            os.close(go_write)
            code = _child(service, dl_path, go_read)
        finally:
            os._exit(code)
    os.close(go_read)
    try:
        assert service.flush(10)
        # The child is alive and keeps every descriptor it inherited: none holds the lock.
        assert _lock_is_free(dl_path)
    finally:
        os.write(go_write, b"g")
        os.close(go_write)
        waited = threading.Thread(target=lambda: status.append(os.waitpid(pid, 0)[1]))
        status: list[int] = []
        waited.start()
        waited.join(30)
        releaser.join(10)
    assert len(status) == 1
    assert os.waitstatus_to_exitcode(status[0]) == 0
    assert service.stats().dead_lettered == 1


# -- item 5: close(timeout) while the lock is held elsewhere --------------------------------------


def test_close_with_the_lock_held_elsewhere_returns_on_time_and_loses_nothing(
    make_service: MakeService, db_path: Path
) -> None:
    dl_path = deadletter.path_for(db_path)
    service = make_service(buffer_max_size=10, buffer_flush_interval=0.01)
    assert service.flush(10)
    result: list[bool] = []
    with _lock_held_elsewhere(dl_path), locked(db_path):
        ids = [service.record(action="doc.save", details={"n": n}) for n in range(100)]
        closer = threading.Thread(target=lambda: result.append(service.close(timeout=0.5)))
        started = time.monotonic()
        closer.start()
        closer.join(10)
        elapsed = time.monotonic() - started
        assert not closer.is_alive(), "close() waited on the dead-letter lock"
    assert result == [False]
    assert elapsed < 0.5 + 2.5
    sides = deadletter.side_files(dl_path)
    assert sides
    assert all(side.stat().st_mode & 0o777 == 0o600 for side in sides)
    assert not dl_path.exists()
    assert service.stats().dead_lettered == 100
    with AuditStore(db_path) as audit_store:
        report = audit_store.replay_dead_letters()
    assert (report.replayed, report.kept, report.errors) == (100, 0, [])
    assert sorted(_ids(db_path)) == sorted(ids)
    assert deadletter.side_files(dl_path) == []


def test_a_close_timeout_names_the_side_file_its_entries_went_to(
    make_service: MakeService, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Review D15: the log line and last_error named the dead-letter file, which stayed empty.
    dl_path = deadletter.path_for(db_path)
    service = make_service(buffer_max_size=10, buffer_flush_interval=0.01)
    assert service.flush(10)
    with (
        caplog.at_level(logging.ERROR, logger="audit_engine.writer"),
        _lock_held_elsewhere(dl_path),
        locked(db_path),
    ):
        for n in range(20):
            service.record(action="doc.save", details={"n": n})
        assert service.close(timeout=0.5) is False
    sides = deadletter.side_files(dl_path)
    assert not dl_path.exists()
    where = ", ".join(str(side) for side in sides)
    assert service.stats().last_error == (
        f"close() could not drain the queue in time: 20 entries moved to {where}"
    )
    summary = [r.getMessage() for r in caplog.records if "did not drain" in r.getMessage()]
    assert summary == [f"audit writer did not drain within 0.5s; 20 entries moved to {where}"]


# -- items 7 and 8: a file size limit, as on a full disk ------------------------------------------

_FULL_DISK_CHILD = textwrap.dedent(
    """
    import json, logging, resource, signal, sys
    from audit_engine import AuditService, AuditSettings

    logging.basicConfig(stream=sys.stderr, level=logging.CRITICAL, format="%(asctime)s %(message)s")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death, as ENOSPC would be
    service = AuditService(AuditSettings(database=sys.argv[1], buffer_max_size=50,
                                         cleanup_enabled=False))
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    for n in range(int(sys.argv[3])):
        service.record(action="doc.save", actor="zoë", details={"n": n, "pad": "x" * 300})
    closed = service.close(60)
    s = service.stats()
    print(json.dumps({"closed": closed, "accepted": s.accepted, "written": s.written,
                      "dead_lettered": s.dead_lettered,
                      "logged_only": service.writer.logged_only}))
    """
)


def test_on_a_full_disk_every_entry_is_committed_dead_lettered_or_logged_and_comes_back(
    db_path: Path, tmp_path: Path
) -> None:
    AuditService(AuditSettings(database=db_path, cleanup_enabled=False)).close()  # the schema
    count = 1500
    child = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_CHILD, str(db_path), str(192 * 1024), str(count)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    stats = json.loads(child.stdout)
    assert stats["accepted"] == count
    assert stats["dead_lettered"] > 0, stats
    assert stats["logged_only"] > 0, stats
    assert stats["written"] + stats["dead_lettered"] + stats["logged_only"] == count
    assert stats["closed"] is False  # entries only in the log: not a clean close
    dl_path = deadletter.path_for(db_path)
    lines = list(deadletter.read(dl_path))
    # No torn line: every line of the file is a whole entry, and each was counted.
    assert [n for n, entry, _ in lines if entry is None] == []
    assert len(lines) == stats["dead_lettered"]
    log = tmp_path / "app.log"
    log.write_text(child.stderr, encoding="utf-8")
    with AuditStore(db_path) as audit_store:
        from_file = audit_store.replay_dead_letters()
        from_log = audit_store.replay_dead_letters(from_log=log)
        assert audit_store.verify().ok
    assert from_file.replayed == stats["dead_lettered"]
    assert (from_log.replayed, from_log.errors) == (stats["logged_only"], [])
    ids = _ids(db_path)
    assert len(ids) == len(set(ids)) == count
