"""The writer's commit logic against an in-memory sink: no thread, no database, no real sleep.

:class:`Committer` is what the writer thread runs for each batch: retry while the sink is busy,
split a refused batch until the poison rows are alone, set aside a whole batch when the store is
unavailable, and count. A fake sink scripts each failure; ``wait`` is injected.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from audit_engine.models import AuditEntry
from audit_engine.pipeline.committer import BACKOFF_MAX_S, BACKOFF_START_S, Committer
from audit_engine.pipeline.setaside import SetAside
from audit_engine.rows import Row, entry_row
from audit_engine.storage import deadletter
from audit_engine.storage import sqlite as store
from audit_engine.storage.base import (
    ChainSink,
    SinkBusy,
    SinkError,
    SinkRefused,
    SinkUnavailable,
    Tail,
)
from audit_engine.storage.deadletter import DeadLetterFile
from audit_engine.storage.sqlite.sink import SqliteSink, classify
from audit_engine.storage.store import AuditStore


class FakeSink:
    """An in-memory chain: commits all of a batch or nothing, fails as ``fail`` scripts.

    ``fail(rows)`` returns the error to raise for this attempt, or None to commit.
    """

    def __init__(self, fail: Callable[[Sequence[Row]], SinkError | None] = lambda rows: None):
        self.rows: list[Row] = []
        self.attempts: list[int] = []  # the size of each commit attempt, in order
        self.tails_given: list[Tail | None] = []
        self.closed = False
        self._fail = fail

    def read_tail(self) -> Tail:
        return (len(self.rows), f"h{len(self.rows)}")

    def commit(self, rows: Sequence[Row], tail: Tail | None) -> Tail:
        self.attempts.append(len(rows))
        self.tails_given.append(tail)
        error = self._fail(rows)
        if error is not None:
            raise error
        self.rows.extend(rows)
        return self.read_tail()

    def close(self) -> None:
        self.closed = True


def _rows(count: int) -> list[Row]:
    return [entry_row(AuditEntry(action="doc.save", details={"i": i})) for i in range(count)]


def _poison(row: Row) -> Row:
    return row._replace(action="doc.poison")


class Waits:
    """The injected wait: records each delay; gives up (True) after ``give_up_after`` waits."""

    def __init__(self, give_up_after: int | None = None) -> None:
        self.delays: list[float] = []
        self._give_up_after = give_up_after

    def __call__(self, seconds: float) -> bool:
        self.delays.append(seconds)
        return self._give_up_after is not None and len(self.delays) >= self._give_up_after


def _committer(
    sink: ChainSink | None, dead_letter_path: Path, wait: Callable[[float], bool] | None = None
) -> tuple[Committer, SetAside]:
    aside = SetAside(DeadLetterFile(dead_letter_path))
    committer = Committer(
        aside,
        gate=contextlib.nullcontext,
        abort=threading.Event(),
        wait=wait or Waits(give_up_after=1),
    )
    committer.sink = sink
    return committer, aside


def _dead(path: Path) -> list[tuple[str, str]]:
    """(action, error) of each dead-lettered entry."""
    return [(entry.action, error) for _, entry, error in deadletter.read(path) if entry]


def test_a_batch_commits_in_one_attempt_chained_from_the_tail_read_up_front(tmp_path: Path) -> None:
    sink = FakeSink()
    sink.rows = _rows(2)  # someone wrote before the writer started
    committer, aside = _committer(sink, tmp_path / "dl.jsonl")
    committer.read_tail()
    batch = _rows(5)

    committer.commit(batch)
    committer.commit(_rows(1))

    assert sink.rows[2:7] == batch
    assert sink.tails_given == [(2, "h2"), (7, "h7")]  # each batch chains from the last tail
    assert (committer.written, committer.batches, committer.retries) == (6, 2, 0)
    assert committer.done == 6
    assert (aside.dead_lettered, aside.logged_only) == (0, 0)
    assert not (tmp_path / "dl.jsonl").exists()


def test_a_tail_that_cannot_be_read_up_front_is_left_to_the_first_commit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class NoTail(FakeSink):
        def read_tail(self) -> Tail:
            raise SinkBusy("database is locked")

    sink = NoTail()
    committer, _ = _committer(sink, tmp_path / "dl.jsonl")
    with caplog.at_level(logging.DEBUG, logger="audit_engine.writer"):
        committer.read_tail()
    assert committer.tail is None
    assert "could not read the chain's tail up front" in caplog.text


def test_a_busy_sink_is_retried_with_doubling_capped_waits_until_it_commits(tmp_path: Path) -> None:
    busy = iter(range(12))
    sink = FakeSink(
        lambda rows: SinkBusy("database is locked") if next(busy, None) is not None else None
    )
    waits = Waits()
    committer, aside = _committer(sink, tmp_path / "dl.jsonl", waits)
    batch = _rows(3)

    committer.commit(batch)

    assert sink.rows == batch
    assert sink.attempts == [3] * 13  # never split while busy: the same batch each time
    assert committer.retries == 12
    assert waits.delays[0] == BACKOFF_START_S
    assert all(
        b == min(a * 2, BACKOFF_MAX_S) for a, b in zip(waits.delays, waits.delays[1:], strict=False)
    )
    assert waits.delays[-1] == BACKOFF_MAX_S
    assert committer.last_error == "database busy, retrying: database is locked"
    assert (committer.written, aside.dead_lettered) == (3, 0)


def test_a_busy_sink_given_up_on_sets_the_batch_aside_whole(tmp_path: Path) -> None:
    sink = FakeSink(lambda rows: SinkBusy("database is locked"))
    committer, aside = _committer(sink, tmp_path / "dl.jsonl", Waits(give_up_after=3))
    committer._abort.set()  # close() timed out: no split either

    committer.commit(_rows(4))

    assert sink.attempts == [4, 4, 4]
    assert committer.retries == 3
    assert (
        _dead(tmp_path / "dl.jsonl")
        == [("doc.save", "aborted by close() while the database was busy")] * 4
    )
    assert (committer.written, aside.dead_lettered, committer.done) == (0, 4, 4)


def test_a_refused_batch_is_split_until_the_poison_row_is_alone(tmp_path: Path) -> None:
    def refuse(rows: Sequence[Row]) -> SinkError | None:
        if any(row.action == "doc.poison" for row in rows):
            return SinkRefused("IntegrityError: CHECK constraint failed")
        return None

    sink = FakeSink(refuse)
    committer, aside = _committer(sink, tmp_path / "dl.jsonl")
    batch = _rows(8)
    batch[5] = _poison(batch[5])

    committer.commit(batch)

    assert sink.rows == batch[:5] + batch[6:]  # the rest committed, in order
    # 8 -> 4 (ok) + 4 -> 2 (fails) -> 1 (ok) + 1 (poison) ; then 2 (ok)
    assert sink.attempts == [8, 4, 4, 2, 1, 1, 2]
    assert _dead(tmp_path / "dl.jsonl") == [
        ("doc.poison", "IntegrityError: CHECK constraint failed")
    ]
    assert (committer.written, committer.batches, committer.retries) == (7, 3, 0)
    assert (aside.dead_lettered, aside.logged_only, committer.done) == (1, 0, 8)
    assert committer.last_error == "IntegrityError: CHECK constraint failed"


def test_an_unavailable_store_sets_the_whole_batch_aside_at_once(tmp_path: Path) -> None:
    sink = FakeSink(
        lambda rows: SinkUnavailable("OperationalError: attempt to write a readonly database")
    )
    committer, aside = _committer(sink, tmp_path / "dl.jsonl")
    appends: list[int] = []
    original = aside.file.append

    def append(entries: Sequence[Row], error: str, **kwargs: object) -> Path:
        appends.append(len(entries))
        return original(entries, error, **kwargs)  # type: ignore[arg-type]

    aside.file.append = append  # type: ignore[method-assign]
    committer.commit(_rows(6))

    assert sink.attempts == [6]  # no split
    assert appends == [6]  # one append, one fsync
    assert (
        _dead(tmp_path / "dl.jsonl")
        == [("doc.save", "OperationalError: attempt to write a readonly database")] * 6
    )
    assert (committer.written, aside.dead_lettered, committer.done) == (0, 6, 6)


def test_when_the_dead_letter_file_cannot_be_written_the_rows_go_to_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    sink = FakeSink(lambda rows: SinkRefused("IntegrityError: refused"))
    committer, aside = _committer(sink, blocker / "dl.jsonl")

    with caplog.at_level(logging.CRITICAL, logger="audit_engine.writer"):
        committer.commit(_rows(2))

    assert (aside.dead_lettered, aside.logged_only, committer.done) == (0, 2, 2)
    assert committer.last_error is not None
    assert committer.last_error.startswith("dead-letter file not writable")
    assert aside.last_error is None  # handed over to the committer
    assert sum(deadletter.LOG_MESSAGE in r.getMessage() for r in caplog.records) == 2


def test_without_a_sink_the_batch_is_set_aside(tmp_path: Path) -> None:
    committer, aside = _committer(None, tmp_path / "dl.jsonl")
    committer.commit(_rows(3))
    assert _dead(tmp_path / "dl.jsonl") == [("doc.save", "the writer's connection is closed")] * 3
    assert aside.dead_lettered == 3


def test_the_longest_batch_is_timed_with_the_injected_clock(tmp_path: Path) -> None:
    ticks = iter([0.0, 0.25, 1.0, 1.5, 2.0, 2.1])
    committer, _ = _committer(FakeSink(), tmp_path / "dl.jsonl")
    committer._clock = lambda: next(ticks)
    for _ in range(3):
        committer.commit(_rows(1))
    assert committer.longest_batch_s == 0.5


# -- the SQLite sink: real commits, and its errors classified for the committer ---------------


def _coded(message: str, code: int) -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError(message)
    exc.sqlite_errorcode = code  # type: ignore[attr-defined]
    return exc


@pytest.mark.parametrize(
    ("error", "kind", "text"),
    [
        (_coded("database is locked", sqlite3.SQLITE_BUSY), SinkBusy, "database is locked"),
        (
            _coded("attempt to write a readonly database", sqlite3.SQLITE_READONLY),
            SinkUnavailable,
            "OperationalError: attempt to write a readonly database",
        ),
        (_coded("disk I/O error", sqlite3.SQLITE_IOERR | (3 << 8)), SinkUnavailable, None),
        (_coded("database or disk is full", sqlite3.SQLITE_FULL), SinkRefused, None),
        (sqlite3.IntegrityError("UNIQUE constraint failed"), SinkRefused, None),
        (RuntimeError("unexpected"), SinkRefused, "RuntimeError: unexpected"),
    ],
)
def test_sqlite_errors_are_classified_for_the_writer(
    error: Exception, kind: type[SinkError], text: str | None
) -> None:
    classified = classify(error)
    assert type(classified) is kind
    assert str(classified) == (text or f"{type(error).__name__}: {error}")


def test_the_sqlite_sink_commits_chained_batches_and_notices_a_moved_tail(db_path: Path) -> None:
    sink: ChainSink = SqliteSink(store.open_connection(db_path), largest=8)
    try:
        first = _rows(4)
        tail = sink.commit(first, sink.read_tail())
        assert tail == sink.read_tail()
        # Someone else appends meanwhile: the remembered tail is stale, the sink re-reads it.
        with contextlib.closing(store.open_connection(db_path)) as other:
            store.write_batch(other, _rows(1))
        moved = sink.read_tail()
        assert moved[0] == tail[0] + 1
        new_tail = sink.commit(_rows(2), tail)
        assert new_tail[0] == moved[0] + 2
        with contextlib.closing(AuditStore(db_path)) as audit:
            assert audit.verify().ok
    finally:
        sink.close()


def test_the_sqlite_sink_raises_the_seams_errors_only(db_path: Path) -> None:
    sink = SqliteSink(store.open_connection(db_path), largest=8)
    row = _rows(1)[0]
    sink.commit([row], None)
    with pytest.raises(SinkRefused, match="IntegrityError") as raised:
        sink.commit([row], None)  # the same event_id again: the UNIQUE index refuses it
    assert isinstance(raised.value.__cause__, sqlite3.IntegrityError)
    sink.close()
    with pytest.raises(SinkRefused, match="ProgrammingError"):
        sink.read_tail()  # a closed connection


def test_a_sink_that_raises_an_unclassified_error_has_the_batch_set_aside_whole(
    tmp_path: Path,
) -> None:
    class Broken(FakeSink):
        def read_tail(self) -> Tail:
            raise TypeError("a bug in the sink")

        def commit(self, rows: Sequence[Row], tail: Tail | None) -> Tail:
            self.attempts.append(len(rows))
            raise TypeError("a bug in the sink")

    sink = Broken()
    committer, aside = _committer(sink, tmp_path / "dl.jsonl")
    committer.read_tail()  # best effort: nothing raised
    batch = _rows(4)

    committer.commit(batch)  # nothing raised either: set aside, never lost

    assert sink.attempts == [4]  # not split: every row would fail the same way
    assert aside.dead_lettered == 4
    error = "unexpected sink error: TypeError('a bug in the sink')"
    assert _dead(tmp_path / "dl.jsonl") == [("doc.save", error)] * 4
    assert committer.last_error == error
