"""The write-behind Writer on its own: batching, flush wake-up, faults, dead letters, stop, fork.

Nothing here sleeps to wait for the writer thread: tests wait on ``flush()``/``wait_for()``,
``stop()``, or a ``threading.Event`` set from inside the write path. Locks held on the database by
a second connection are always released by a ``threading.Timer`` or in a ``finally``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from support import locked, rows_of

from audit_engine.errors import AuditServiceClosed
from audit_engine.models import AuditEntry
from audit_engine.pipeline.writer import _WRITER_BUSY_SLICE_S, WRITER_THREAD_NAME, Writer
from audit_engine.rows import entry_row
from audit_engine.storage import deadletter
from audit_engine.storage import sqlite as store
from audit_engine.storage.deadletter import DeadLetterFile
from audit_engine.storage.sqlite import append
from audit_engine.storage.sqlite.sink import SqliteSink

MakeWriter = Callable[..., Writer]

# -- helpers ------------------------------------------------------------------------------------


def _entries(count: int, action: str = "doc.save", **fields: Any) -> list[AuditEntry]:
    return [AuditEntry(action=action, details={"i": i}, **fields) for i in range(count)]


def _rows(db_path: Path) -> list[tuple[str, str]]:
    """(event_id, action) of every stored row, in commit (id) order."""
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        return conn.execute("SELECT event_id, action FROM audit_entries ORDER BY id").fetchall()


def _ids(db_path: Path) -> list[str]:
    return [event_id for event_id, _ in _rows(db_path)]


def _dead_letters(db_path: Path) -> list[tuple[AuditEntry | None, str]]:
    path = deadletter.path_for(db_path)
    if not path.exists():
        return []
    return [(entry, error) for _, entry, error in deadletter.read(path)]


class _WriteSpy:
    """Wraps ``store.commit_batch``: records each call's size and thread, can hold a write."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, hold_first: bool = False) -> None:
        self.sizes: list[int] = []
        self.threads: list[str] = []
        self.called = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()
        self._original = append.commit_batch
        monkeypatch.setattr(append, "commit_batch", self._write)

    def _write(self, conn: sqlite3.Connection, rows: Sequence[AuditEntry], *rest: Any) -> Any:
        self.sizes.append(len(rows))
        self.threads.append(threading.current_thread().name)
        self.called.set()
        # Bounded: a test that forgets to release still ends.
        self.release.wait(10)
        return self._original(conn, rows, *rest)


@pytest.fixture
def make_writer(db_path: Path) -> Iterator[MakeWriter]:
    """Writers on the test's database; every one is stopped after the test."""
    made: list[Writer] = []

    def make(
        *,
        queue_maxsize: int = 1000,
        batch_size: int = 100,
        flush_interval_s: float = 0.05,
        dead_letter_path: Path | None = None,
    ) -> Writer:
        writer = Writer(
            lambda: SqliteSink(
                store.open_connection(db_path, busy_timeout=_WRITER_BUSY_SLICE_S),
                largest=batch_size,
            ),
            DeadLetterFile(dead_letter_path or deadletter.path_for(db_path)),
            queue_maxsize=queue_maxsize,
            batch_size=batch_size,
            flush_interval_s=flush_interval_s,
        )
        made.append(writer)
        return writer

    yield make
    for writer in made:
        writer.stop(10)


def _put_all(writer: Writer, entries: Sequence[AuditEntry]) -> list[int | None]:
    return [writer.put(entry_row(entry), 5.0) for entry in entries]


def _writer_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == WRITER_THREAD_NAME}


# -- thread and queue ---------------------------------------------------------------------------


def test_writer_starts_one_named_daemon_thread(make_writer: MakeWriter) -> None:
    before = _writer_threads()
    writer = make_writer()
    new = _writer_threads() - before
    assert len(new) == 1
    (thread,) = new
    assert thread.daemon
    assert writer.alive
    assert writer.stop(5) == (True, 0)
    assert not thread.is_alive()
    assert not writer.alive


def test_put_returns_the_position_in_queue_order(make_writer: MakeWriter, db_path: Path) -> None:
    writer = make_writer()
    entries = _entries(3)
    assert _put_all(writer, entries) == [1, 2, 3]
    assert writer.enqueued == 3
    assert writer.wait_for(2, 5)
    assert writer.flush(5)
    assert _ids(db_path) == [e.event_id for e in entries]


def test_put_after_stop_raises_and_stop_is_idempotent(make_writer: MakeWriter) -> None:
    writer = make_writer()
    assert writer.stop(5) == (True, 0)
    assert writer.closed
    with pytest.raises(AuditServiceClosed, match=r"^the audit service is closed$"):
        writer.put(entry_row(AuditEntry(action="late")), 1.0)
    assert writer.stop(5) == (True, 0)


def test_put_on_a_full_queue_waits_for_room_then_gives_up(
    make_writer: MakeWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _WriteSpy(monkeypatch, hold_first=True)
    writer = make_writer(queue_maxsize=2, batch_size=1)
    first, second, third, fourth, fifth = _entries(5)
    assert writer.put(entry_row(first), 1.0) == 1
    assert spy.called.wait(5)  # the writer holds `first` and is stuck in its write
    assert writer.put(entry_row(second), 1.0) == 2
    assert writer.put(entry_row(third), 1.0) == 3
    assert writer.queue_depth == 2
    assert writer.max_queue_depth == 2

    assert writer.put(entry_row(fourth), 0) == 0
    started = time.monotonic()
    assert writer.put(entry_row(fourth), 0.2) == 0
    assert 0.2 <= time.monotonic() - started < 2

    releaser = threading.Timer(0.2, spy.release.set)
    releaser.start()
    try:
        assert writer.put(entry_row(fifth), 10) == 4  # room appears once the write goes through
    finally:
        releaser.cancel()
        spy.release.set()
    assert writer.flush(10)
    assert writer.written == 4


def _full_behind_a_stuck_write(
    make_writer: MakeWriter, monkeypatch: pytest.MonkeyPatch
) -> tuple[Writer, _WriteSpy, AuditEntry]:
    """A writer stuck writing its first entry, a queue of one full with the second, and a third
    entry to put (the spy's ``release`` lets the write go on)."""
    spy = _WriteSpy(monkeypatch, hold_first=True)
    writer = make_writer(queue_maxsize=1, batch_size=1)
    first, second, third = _entries(3)
    assert writer.put(entry_row(first), 1.0) == 1
    assert spy.called.wait(5)  # the writer is stuck writing `first`
    assert writer.put(entry_row(second), 1.0) == 2  # the queue is full now
    return writer, spy, third


@pytest.mark.parametrize("many", [False, True])
def test_put_waits_until_its_deadline_even_when_the_room_it_saw_was_taken(
    make_writer: MakeWriter, monkeypatch: pytest.MonkeyPatch, many: bool
) -> None:
    writer, spy, third = _full_behind_a_stuck_write(make_writer, monkeypatch)
    real = writer._queue.wait_for_room
    waits: list[float] = []

    def raced(timeout: float, count: int = 1) -> bool:
        waits.append(timeout)
        if len(waits) == 1:
            # Room appeared, and a producer (they append without the lock) took it before
            # this one looked again: no room, long before the timeout.
            return False
        return real(timeout, count)

    monkeypatch.setattr(writer._queue, "wait_for_room", raced)
    releaser = threading.Timer(0.2, spy.release.set)
    releaser.start()
    try:
        if many:
            assert writer.put_many([entry_row(third)], 10) == 3
        else:
            assert writer.put(entry_row(third), 10) == 3
    finally:
        releaser.cancel()
        spy.release.set()
    assert len(waits) >= 2  # it went on waiting after the room it saw was gone
    assert writer.flush(10)
    assert writer.written == 3


def test_a_queue_smaller_than_a_batch_wakes_the_writer_when_full(
    make_writer: MakeWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _WriteSpy(monkeypatch)
    # The writer would wait an hour for a batch of 500 that a queue of 3 can never hold.
    writer = make_writer(queue_maxsize=3, batch_size=500, flush_interval_s=3600)
    for entry in _entries(3):
        assert writer.put(entry_row(entry), 0)
    assert spy.called.wait(10)  # committed because the queue is full, not after the hour
    assert spy.sizes[0] >= 1


def test_a_producer_waiting_for_room_is_woken_by_close(
    make_writer: MakeWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer, spy, third = _full_behind_a_stuck_write(make_writer, monkeypatch)
    outcome: list[BaseException | int] = []

    def produce() -> None:
        try:
            outcome.append(writer.put(entry_row(third), 60.0))
        except AuditServiceClosed as exc:
            outcome.append(exc)

    producer = threading.Thread(target=produce, name="waiting-producer")
    producer.start()
    try:
        writer.request_stop()
        producer.join(10)  # far less than its 60 s wait: closing woke it
        assert not producer.is_alive()
    finally:
        spy.release.set()
    assert len(outcome) == 1
    assert isinstance(outcome[0], AuditServiceClosed)
    assert writer.stop(10) == (True, 0)
    assert writer.written == 2


def test_flush_markers_do_not_take_queue_room(
    make_writer: MakeWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _WriteSpy(monkeypatch, hold_first=True)
    writer = make_writer(queue_maxsize=3, batch_size=1)
    first, second, third = _entries(3)
    try:
        assert writer.put(entry_row(first), 1.0) == 1
        assert spy.called.wait(5)
        assert writer.put(entry_row(second), 1.0) == 2
        assert not writer.flush(0.01)
        assert not writer.flush(0.01)
        assert writer.queue_depth == 1  # one entry waits; the queue holds up to 3
        assert writer.put(entry_row(third), 0) == 3
    finally:
        spy.release.set()


# -- batching and flush -------------------------------------------------------------------------


def test_entries_commit_in_batches_of_at_most_batch_size(
    make_writer: MakeWriter, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _WriteSpy(monkeypatch)
    writer = make_writer(batch_size=100, flush_interval_s=1.0, queue_maxsize=2000)
    entries = _entries(1000)
    _put_all(writer, entries)
    assert writer.flush(30)
    assert writer.written == 1000
    assert 10 <= writer.batches <= 20
    # One commit_batch call is one transaction.
    assert len(spy.sizes) == writer.batches
    assert sum(spy.sizes) == 1000
    assert max(spy.sizes) == 100
    assert set(spy.threads) == {WRITER_THREAD_NAME}
    assert _ids(db_path) == [e.event_id for e in entries]


def test_a_full_batch_commits_without_waiting_for_the_interval(
    make_writer: MakeWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _WriteSpy(monkeypatch)
    writer = make_writer(batch_size=5, flush_interval_s=3600)
    started = time.monotonic()
    _put_all(writer, _entries(5))
    assert spy.called.wait(10)
    assert time.monotonic() - started < 10
    assert spy.sizes == [5]


def test_a_partial_batch_commits_one_interval_after_its_first_entry(
    make_writer: MakeWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _WriteSpy(monkeypatch)
    writer = make_writer(batch_size=100, flush_interval_s=0.05)
    started = time.monotonic()
    _put_all(writer, _entries(3))
    assert spy.called.wait(10)  # nobody called flush(): the interval ran out
    assert time.monotonic() - started >= 0.05
    assert spy.sizes == [3]


def test_flush_wakes_the_writer_before_the_interval(make_writer: MakeWriter, db_path: Path) -> None:
    writer = make_writer(batch_size=100, flush_interval_s=3600)
    entries = _entries(3)
    _put_all(writer, entries)
    started = time.monotonic()
    assert writer.flush(10)
    assert time.monotonic() - started < 5
    assert _ids(db_path) == [e.event_id for e in entries]
    assert writer.batches == 1


def test_flush_with_nothing_queued_returns_at_once(make_writer: MakeWriter) -> None:
    writer = make_writer()
    assert writer.flush(0)


# -- busy database ------------------------------------------------------------------------------


def test_flush_times_out_while_the_database_islocked(
    make_writer: MakeWriter, db_path: Path
) -> None:
    writer = make_writer()
    entry = AuditEntry(action="doc.save")
    with locked(db_path) as lock:
        writer.put(entry_row(entry), 1.0)
        started = time.monotonic()
        assert not writer.flush(0.3)
        assert 0.3 <= time.monotonic() - started < 3
        lock.release()
        assert writer.flush(30)
    assert writer.retries > 0
    assert writer.last_error == "database busy, retrying: database is locked"
    assert _ids(db_path) == [entry.event_id]


def test_a_busy_batch_is_retried_and_nothing_is_lost(
    make_writer: MakeWriter, db_path: Path
) -> None:
    writer = make_writer(batch_size=7)
    entries = _entries(20)
    with locked(db_path, release_after=0.5):
        _put_all(writer, entries)
        assert writer.flush(30)
    assert writer.retries > 0
    assert writer.dead_lettered == 0
    assert writer.written == 20
    assert _ids(db_path) == [e.event_id for e in entries]
    assert _dead_letters(db_path) == []


# -- failing rows -------------------------------------------------------------------------------


def test_a_failing_batch_is_split_and_only_the_bad_row_is_dead_lettered(
    make_writer: MakeWriter, db_path: Path
) -> None:
    writer = make_writer(batch_size=100, flush_interval_s=3600)
    a, b, c = _entries(3)
    dup1 = AuditEntry(event_id="dup", action="first.dup")
    dup2 = AuditEntry(event_id="dup", action="second.dup")
    _put_all(writer, [a, dup1, b, dup2, c])
    assert writer.flush(10)  # dead-lettered rows count as handled
    assert _rows(db_path) == [
        (a.event_id, a.action),
        ("dup", "first.dup"),
        (b.event_id, b.action),
        (c.event_id, c.action),
    ]
    # [a dup1 b dup2 c] fails -> [a dup1] ok, [b dup2 c] fails -> [b] ok, [dup2 c] fails ->
    # [dup2] dead-lettered, [c] ok.
    assert writer.batches == 3
    assert writer.written == 4
    assert writer.dead_lettered == 1
    assert _dead_letters(db_path) == [
        (dup2, "IntegrityError: UNIQUE constraint failed: audit_entries.event_id")
    ]


def test_a_row_that_raises_alone_is_dead_lettered_and_the_rest_commit(
    make_writer: MakeWriter, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both ways the writer inserts: appending after the tail it remembers, and write_batch.
    for name in ("append_batch", "write_batch"):
        original = getattr(append, name)

        def insert(
            conn: sqlite3.Connection,
            entries: Sequence[AuditEntry],
            *rest: Any,
            original: Callable[..., Any] = original,
        ) -> Any:
            if any(e.action == "poison" for e in entries):
                raise RuntimeError("cannot bind this one")
            return original(conn, entries, *rest)

        monkeypatch.setattr(append, name, insert)
    writer = make_writer(batch_size=100, flush_interval_s=3600)
    good = _entries(7)
    poison = AuditEntry(action="poison")
    batch = [*good[:5], poison, *good[5:]]
    _put_all(writer, batch)
    assert writer.flush(10)
    assert _ids(db_path) == [e.event_id for e in good]
    assert writer.dead_lettered == 1
    assert writer.last_error == "RuntimeError: cannot bind this one"
    assert _dead_letters(db_path) == [(poison, "RuntimeError: cannot bind this one")]


def test_dead_letter_lines_are_json_with_the_entry_and_the_error(
    make_writer: MakeWriter, db_path: Path
) -> None:
    writer = make_writer()
    first = AuditEntry(event_id="same", action="one")
    second = AuditEntry(event_id="same", action="two", actor="bob", details={"k": [1, 2]})
    _put_all(writer, [first, second])
    assert writer.flush(10)
    lines = deadletter.path_for(db_path).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["entry"] == second.model_dump(mode="json")
    assert record["error"] == "IntegrityError: UNIQUE constraint failed: audit_entries.event_id"
    assert set(record) == {"entry", "error", "failed_at"}


def test_an_unwritable_dead_letter_file_logs_the_entry_at_critical(
    make_writer: MakeWriter,
    db_path: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    blocked = tmp_path / "dead-letters-are-a-directory"
    blocked.mkdir()
    writer = make_writer(dead_letter_path=blocked)
    first = AuditEntry(event_id="same", action="one")
    second = AuditEntry(event_id="same", action="two")
    with caplog.at_level(logging.CRITICAL, logger="audit_engine.writer"):
        _put_all(writer, [first, second])
        # Handled, but not kept anywhere replay looks by default: flush() does not claim success.
        assert not writer.flush(10)
    critical = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1
    prefix = "audit entry LOST to disk, logged instead: "
    assert critical[0].startswith(prefix)
    # The dead-letter line format, so that `replay-deadletter --from LOG` can bring it back.
    record = json.loads(critical[0][len(prefix) :])
    assert set(record) == {"entry", "error", "failed_at"}
    assert record["entry"] == second.model_dump(mode="json")
    assert record["error"] == "IntegrityError: UNIQUE constraint failed: audit_entries.event_id"
    assert writer.dead_lettered == 0
    assert writer.logged_only == 1
    assert not writer.clean
    assert writer.last_error is not None
    assert writer.last_error.startswith("dead-letter file not writable: [Errno 21]")
    assert _ids(db_path) == ["same"]


# -- faults in the loop itself ------------------------------------------------------------------


def test_an_unexpected_loop_error_is_reported_and_the_writer_goes_on(
    make_writer: MakeWriter,
    db_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    original = Writer._collect
    calls = 0

    def collect(self: Writer) -> tuple[list[AuditEntry], bool]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return original(self)

    monkeypatch.setattr(Writer, "_collect", collect)
    with caplog.at_level(logging.ERROR, logger="audit_engine.writer"):
        writer = make_writer()
        entries = _entries(10)
        _put_all(writer, entries)
        assert writer.flush(10)
    assert writer.alive
    assert writer.last_error == "writer loop error: RuntimeError('boom')"
    assert "audit writer loop failed; continuing" in caplog.messages
    assert _ids(db_path) == [e.event_id for e in entries]
    assert writer.dead_lettered == 0
    assert writer.stop(10) == (True, 0)


def test_a_loop_error_with_a_batch_in_hand_dead_letters_that_batch(
    make_writer: MakeWriter, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Writer._collect
    failed = False

    def collect(self: Writer) -> tuple[list[AuditEntry], bool]:
        nonlocal failed
        batch, stop = original(self)
        if batch and not failed:
            failed = True
            raise RuntimeError("after collecting")
        return batch, stop

    monkeypatch.setattr(Writer, "_collect", collect)
    writer = make_writer(flush_interval_s=3600)
    lost_in_loop = _entries(3, action="first")
    later = _entries(2, action="later")
    _put_all(writer, lost_in_loop)
    assert writer.flush(10)
    _put_all(writer, later)
    assert writer.flush(10)
    assert _ids(db_path) == [e.event_id for e in later]
    assert writer.dead_lettered == 3
    assert _dead_letters(db_path) == [
        (e, "writer loop error: RuntimeError('after collecting')") for e in lost_in_loop
    ]


class _WriterKilled(SystemExit):
    """A BaseException the tests let end the writer thread (see _kill_writer)."""


class _Deaths:
    """Stands in for ``threading.excepthook``: remembers what threads died of.

    Also keeps pytest from reporting the (intended) death as an unhandled thread exception.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.types: list[type[BaseException]] = []
        self.seen = threading.Event()
        monkeypatch.setattr(threading, "excepthook", self._hook)

    def _hook(self, args: threading.ExceptHookArgs) -> None:
        self.types.append(args.exc_type)
        self.seen.set()


def _kill_writer(monkeypatch: pytest.MonkeyPatch, *, mid_batch: bool = False) -> _Deaths:
    """Make the writer thread die: on its first loop, or in its first batch write.

    The loop recovers from any exception, so the test also makes its recovery let this one
    through: what remains to test is a thread ended from outside (interpreter shutdown).
    """
    deaths = _Deaths(monkeypatch)
    killed = False
    original_recover = Writer._recover

    def recover(self: Writer, exc: BaseException) -> None:
        if isinstance(exc, _WriterKilled):
            raise exc
        original_recover(self, exc)

    monkeypatch.setattr(Writer, "_recover", recover)
    if mid_batch:
        original_write = append.commit_batch

        def write(conn: sqlite3.Connection, rows: Sequence[AuditEntry], *rest: Any) -> Any:
            nonlocal killed
            if not killed:
                killed = True
                raise _WriterKilled("writer thread killed by the test")
            return original_write(conn, rows, *rest)

        monkeypatch.setattr(append, "commit_batch", write)
        return deaths
    original_collect = Writer._collect

    def collect(self: Writer) -> tuple[list[AuditEntry], bool]:
        nonlocal killed
        if not killed:
            killed = True
            raise _WriterKilled("writer thread killed by the test")
        return original_collect(self)

    monkeypatch.setattr(Writer, "_collect", collect)
    return deaths


def test_flush_returns_false_promptly_when_the_writer_thread_died(
    make_writer: MakeWriter, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    deaths = _kill_writer(monkeypatch)
    with caplog.at_level(logging.CRITICAL, logger="audit_engine.writer"):
        writer = make_writer()
        _put_all(writer, _entries(3))
        started = time.monotonic()
        assert not writer.flush(30)
        assert time.monotonic() - started < 2
        assert not writer.alive
        assert deaths.seen.wait(5)
    assert deaths.types == [_WriterKilled]
    assert "audit writer thread died; close() will write the queue itself" in caplog.messages


def test_stop_writes_what_a_dead_writer_thread_left_queued(
    make_writer: MakeWriter, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _kill_writer(monkeypatch)
    writer = make_writer()
    entries = _entries(3)
    _put_all(writer, entries)
    assert not writer.flush(5)
    assert writer.stop(10) == (True, 0)
    assert _ids(db_path) == [e.event_id for e in entries]
    assert writer.flush(1)


def test_stop_reopens_the_database_for_a_dead_writer_without_a_connection(
    make_writer: MakeWriter, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _kill_writer(monkeypatch)
    writer = make_writer()
    entries = _entries(2)
    _put_all(writer, entries)
    assert not writer.flush(5)
    writer._close_connection()  # the dead thread's connection is gone too
    assert writer.stop(10) == (True, 0)
    assert _ids(db_path) == [e.event_id for e in entries]


def test_stop_dead_letters_the_queue_when_the_database_cannot_be_reopened(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _kill_writer(monkeypatch)
    opened = 0

    def connect() -> sqlite3.Connection:
        nonlocal opened
        opened += 1
        if opened > 1:
            raise sqlite3.OperationalError("unable to open database file")
        return store.open_connection(db_path)

    writer = Writer(
        lambda: SqliteSink(connect(), largest=10),
        DeadLetterFile(deadletter.path_for(db_path)),
        queue_maxsize=10,
        batch_size=10,
        flush_interval_s=0.05,
    )
    entries = _entries(2)
    _put_all(writer, entries)
    assert not writer.flush(5)
    writer._close_connection()
    assert writer.stop(10) == (False, 2)
    assert _ids(db_path) == []
    assert _dead_letters(db_path) == [
        (e, "could not reopen the database: unable to open database file") for e in entries
    ]
    assert writer.dead_lettered == 2


def test_stop_writes_the_batch_a_dead_writer_thread_had_in_hand(
    make_writer: MakeWriter, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deaths = _kill_writer(monkeypatch, mid_batch=True)
    writer = make_writer(flush_interval_s=3600)
    in_hand = _entries(3, action="in.hand")
    _put_all(writer, in_hand)
    assert not writer.flush(5)  # the writer died writing these
    assert deaths.seen.wait(5)
    queued = _entries(2, action="queued")
    _put_all(writer, queued)
    drained, left = writer.stop(10)
    assert _ids(db_path) == [e.event_id for e in in_hand + queued]
    assert (drained, left) == (True, 0)


# -- stop -------------------------------------------------------------------------------------


def test_stop_drains_everything_queued(make_writer: MakeWriter, db_path: Path) -> None:
    writer = make_writer(batch_size=10, flush_interval_s=3600)
    entries = _entries(45)
    _put_all(writer, entries)
    assert writer.stop(10) == (True, 0)
    assert _ids(db_path) == [e.event_id for e in entries]
    assert writer.batches == 5


def test_stop_timeout_aborts_and_moves_the_rest_to_the_dead_letter_file(
    make_writer: MakeWriter, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = make_writer(batch_size=3)
    entries = _entries(10)
    with locked(db_path), caplog.at_level(logging.ERROR, logger="audit_engine.writer"):
        _put_all(writer, entries)
        started = time.monotonic()
        drained, left = writer.stop(0.5)
        elapsed = time.monotonic() - started
        assert (drained, left) == (False, 10)
        assert elapsed < 0.5 + 1.5
        assert not writer.alive
        with pytest.raises(AuditServiceClosed):
            writer.put(entry_row(AuditEntry(action="late")), 0)
    assert _ids(db_path) == []
    assert sorted(e.event_id for e, _ in _dead_letters(db_path) if e is not None) == sorted(
        e.event_id for e in entries
    )
    assert writer.dead_lettered == 10
    path = deadletter.path_for(db_path)
    assert writer.last_error == f"close() timed out; 10 entries moved to {path}"
    assert f"audit writer did not drain within 0.5s; 10 entries moved to {path}" in (
        caplog.messages
    )


def test_stop_timeout_still_closes_the_writer_connection(
    make_writer: MakeWriter, db_path: Path
) -> None:
    writer = make_writer()
    with locked(db_path):
        _put_all(writer, _entries(3))
        drained, _ = writer.stop(0.3)
        assert not drained
    assert not writer.alive
    assert writer._committer.sink is None


# -- fork -------------------------------------------------------------------------------------


def _child_after_fork(writer: Writer) -> None:
    """Runs in the forked child: the writer must start over empty, then work on its own."""
    writer.reset_after_fork()
    assert writer.alive
    assert writer.enqueued == 0
    assert writer.queue_depth == 0
    assert writer.written == 0
    for entry in _entries(3, action="child"):
        writer.put(entry_row(entry), 5.0)
    assert writer.stop(30) == (True, 0)
    assert writer.written == 3


def test_after_fork_the_child_writer_starts_fresh(make_writer: MakeWriter, db_path: Path) -> None:
    writer = make_writer(batch_size=100, flush_interval_s=3600)
    parent_entries = _entries(5, action="parent")
    _put_all(writer, parent_entries)  # held by the parent's writer, not committed yet

    child = multiprocessing.get_context("fork").Process(target=_child_after_fork, args=(writer,))
    # Forked under the writer's fork gate, as the engine's fork hook does for a registered
    # writer: a fork while its thread is inside SQLite (reading the tail as it starts) would
    # leave the child a SQLite mutex that no thread there can release.
    with writer.fork_gate:
        child.start()
    child.join(60)
    if child.is_alive():  # pragma: no cover - only when the test is failing
        child.kill()
        child.join(10)
    assert child.exitcode == 0

    # The child wrote its own entries only; the parent's are still the parent's to write.
    assert [action for _, action in _rows(db_path)] == ["child"] * 3
    assert writer.stop(10) == (True, 0)
    rows = _rows(db_path)
    assert sorted(action for _, action in rows) == ["child"] * 3 + ["parent"] * 5
    assert len({event_id for event_id, _ in rows}) == 8
    assert [event_id for event_id, action in rows if action == "parent"] == [
        e.event_id for e in parent_entries
    ]


def test_the_first_batch_chains_from_the_tail_read_when_the_thread_started(
    make_writer: MakeWriter, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rows already in the file: the writer's thread reads their tail before any batch arrives,
    # so even its first batch is one guarded statement, not a BEGIN IMMEDIATE transaction.
    with contextlib.closing(store.open_connection(db_path, busy_timeout=1.0)) as conn:
        existing = store.write_batch(conn, rows_of(_entries(3, action="before")))
    calls: list[str] = []
    for name in ("append_batch", "write_batch"):
        original = getattr(append, name)

        def spy(*args: Any, original: Callable[..., Any] = original, name: str = name) -> Any:
            calls.append(name)
            return original(*args)

        monkeypatch.setattr(append, name, spy)
    writer = make_writer()
    first = _entries(2, action="after")

    _put_all(writer, first)
    assert writer.flush(10)

    assert set(calls) == {"append_batch"}
    assert _ids(db_path)[3:] == [e.event_id for e in first]
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        (prev_hash,) = conn.execute("SELECT prev_hash FROM audit_entries WHERE id = 4").fetchone()
    assert prev_hash == existing[1]


def test_a_tail_that_cannot_be_read_up_front_is_read_by_the_first_batch(
    make_writer: MakeWriter, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = append.chain_tail
    failures = 0

    def chain_tail(conn: sqlite3.Connection) -> tuple[int, str]:
        nonlocal failures
        if failures == 0:  # only the read when the thread starts
            failures += 1
            raise sqlite3.OperationalError("disk I/O error")
        return original(conn)

    monkeypatch.setattr(append, "chain_tail", chain_tail)
    writer = make_writer()
    entries = _entries(2)

    _put_all(writer, entries)
    assert writer.flush(10)

    assert failures == 1
    assert _ids(db_path) == [e.event_id for e in entries]
    assert writer.dead_lettered == 0


# -- nothing ends the loop; nothing is counted before it is on disk (issue 11, items 6-8) ---------


def test_an_entry_that_cannot_be_encoded_is_dead_lettered_and_its_batch_commits(
    make_writer: MakeWriter, db_path: Path
) -> None:
    # A row whose text skipped validation: a lone surrogate has no UTF-8 form, for SQLite or
    # the file. (A model holding one is validated again on its way to a row, and refused.)
    bad = entry_row(AuditEntry(action="x"))._replace(actor="\ud800")
    good = _entries(10)
    writer = make_writer(flush_interval_s=3600)
    for row in [*rows_of(good[:5]), bad, *rows_of(good[5:])]:
        writer.put(row, 5.0)

    assert writer.flush(10)

    assert writer.alive
    assert _ids(db_path) == [e.event_id for e in good]
    # Written with JSON's \u escape (the file stays UTF-8); replay reports it as invalid.
    [line] = deadletter.path_for(db_path).read_bytes().splitlines()
    assert b'"actor": "\\ud800"' in line
    record = json.loads(line)
    assert (record["entry"]["event_id"], record["entry"]["actor"]) == (bad.event_id, "\ud800")
    assert writer.dead_lettered == 1
    assert writer.clean


class _Interrupted(BaseException):
    """Not an Exception: what used to end the writer thread."""


def test_a_base_exception_in_the_loop_dead_letters_the_batch_and_the_writer_goes_on(
    make_writer: MakeWriter,
    db_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    original = append.commit_batch
    raised = False

    def commit(conn: sqlite3.Connection, rows: Sequence[AuditEntry], *rest: Any) -> Any:
        nonlocal raised
        if not raised:
            raised = True
            raise _Interrupted("in the middle of a commit")
        return original(conn, rows, *rest)

    monkeypatch.setattr(append, "commit_batch", commit)
    writer = make_writer(flush_interval_s=3600)
    first, later = _entries(3, action="first"), _entries(2, action="later")
    with caplog.at_level(logging.CRITICAL, logger="audit_engine.writer"):
        _put_all(writer, first)
        assert writer.flush(10)
    _put_all(writer, later)
    assert writer.flush(10)

    assert writer.alive
    assert "audit writer loop failed; continuing" in caplog.messages
    assert _ids(db_path) == [e.event_id for e in later]
    reason = "writer loop error: _Interrupted('in the middle of a commit')"
    assert _dead_letters(db_path) == [(e, reason) for e in first]
    assert (writer.dead_lettered, writer.loop_failures, writer.clean) == (3, 1, False)
    assert writer.stop(10) == (True, 0)


def test_a_loop_error_whose_dead_letter_also_fails_logs_the_batch_and_goes_on(
    make_writer: MakeWriter,
    db_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def collect(self: Writer) -> tuple[list[AuditEntry], bool]:
        batch, stop = original_collect(self)
        if batch and batch[0].action == "first":
            raise RuntimeError("after collecting")
        return batch, stop

    def append(self: DeadLetterFile, *args: Any, **kwargs: Any) -> Path:
        raise ValueError("not an OSError")

    original_collect = Writer._collect
    monkeypatch.setattr(Writer, "_collect", collect)
    monkeypatch.setattr(DeadLetterFile, "append", append)
    writer = make_writer(flush_interval_s=3600)
    with caplog.at_level(logging.CRITICAL, logger="audit_engine.writer"):
        _put_all(writer, _entries(2, action="first"))
        assert not writer.flush(10)
        _put_all(writer, _entries(1, action="later"))
        assert not writer.flush(10)  # still False: two entries exist only in the log

    assert writer.alive
    assert _rows(db_path) == [(_rows(db_path)[0][0], "later")]
    lost = [m for m in caplog.messages if m.startswith("audit entry LOST to disk")]
    assert len(lost) == 2
    assert (writer.logged_only, writer.loop_failures) == (2, 1)
    assert writer.last_error == "dead-letter file not writable: not an OSError"


def test_entries_whose_dead_letter_fsync_failed_are_not_counted_as_dead_lettered(
    make_writer: MakeWriter,
    db_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import errno
    import os

    real_fsync = os.fsync
    path = deadletter.path_for(db_path)

    def fsync(fd: int) -> None:
        if os.path.realpath(f"/proc/self/fd/{fd}") == str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(deadletter.os, "fsync", fsync)
    writer = make_writer()
    with caplog.at_level(logging.CRITICAL, logger="audit_engine.writer"):
        _put_all(writer, [AuditEntry(event_id="same", action="a")] * 2)
        assert not writer.flush(10)

    assert (writer.dead_lettered, writer.logged_only) == (0, 1)
    # The lines written before the failed fsync were cut off again: no double on replay.
    assert path.read_bytes() == b""
    assert writer.last_error == "dead-letter file not writable: [Errno 28] No space left on device"
