"""AuditService: record, flush, close, stats, subscribe, sync modes, injected connections,
full-queue policies, writer faults, interpreter exit, garbage collection and fork.

Nothing here sleeps to wait for the writer thread: tests wait on ``flush()``, ``close()`` or a
``threading.Event``. Locks held on the database by a second connection are always released by a
``threading.Timer`` or in a ``finally``; every subprocess has a timeout.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import multiprocessing
import re
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from support import locked

from audit_engine import (
    AuditEntry,
    AuditQueueFull,
    AuditService,
    AuditServiceClosed,
    AuditSettings,
    AuditStats,
    AuditStoreError,
    AuditWriteError,
    DomainEvent,
    EventBus,
    InvalidEntryError,
    Operation,
    Outcome,
    SettingsError,
)
from audit_engine.pipeline import lifecycle
from audit_engine.pipeline.writer import WRITER_THREAD_NAME, Writer
from audit_engine.storage import deadletter
from audit_engine.storage.sqlite import append

MakeService = Callable[..., AuditService]

UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
UNIQUE_FAILED = "UNIQUE constraint failed: audit_entries.event_id"

# -- helpers ------------------------------------------------------------------------------------


def _rows(db_path: Path, columns: str = "event_id, action") -> list[tuple[Any, ...]]:
    """The given columns of every stored row, in commit (id) order."""
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        return conn.execute(f"SELECT {columns} FROM audit_entries ORDER BY id").fetchall()


def _ids(db_path: Path) -> list[str]:
    return [row[0] for row in _rows(db_path, "event_id")]


def _dead_letters(db_path: Path) -> list[tuple[AuditEntry | None, str]]:
    path = deadletter.path_for(db_path)
    if not path.exists():
        return []
    return [(entry, error) for _, entry, error in deadletter.read(path)]


def _recorded(event_id: str | None) -> str:
    """The event id record() returned, which must not be None here."""
    assert event_id is not None
    return event_id


def _writer_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == WRITER_THREAD_NAME}


class _WriteSpy:
    """Wraps the writer's and the synchronous writes: remembers which thread wrote which ids."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.thread_of: dict[str, str] = {}
        for name in ("commit_batch", "write_batch"):
            monkeypatch.setattr(append, name, functools.partial(self._write, getattr(append, name)))

    def _write(
        self,
        original: Callable[..., Any],
        conn: sqlite3.Connection,
        rows: Sequence[AuditEntry],
        *rest: Any,
    ) -> Any:
        result = original(conn, rows, *rest)
        for entry in rows:
            self.thread_of[entry.event_id] = threading.current_thread().name
        return result


class OrderPlaced(DomainEvent):
    actor: str
    resource_type: str = "order"
    resource_id: str
    amount: int


# -- construction -------------------------------------------------------------------------------


def test_settings_none_reads_the_audit_trail_environment(
    monkeypatch: pytest.MonkeyPatch, db_path: Path
) -> None:
    monkeypatch.setenv("AUDIT_TRAIL_DATABASE", str(db_path))
    monkeypatch.setenv("AUDIT_TRAIL_ASYNC", "false")
    before = _writer_threads()
    with AuditService() as service:
        assert service.settings.database == db_path
        assert service.settings.async_writes is False
        assert _writer_threads() == before
        event_id = service.record(action="env.configured")
        assert _ids(db_path) == [event_id]


@pytest.mark.parametrize("as_path", [str, Path], ids=["str", "PathLike"])
def test_a_database_path_as_the_first_argument(
    db_path: Path, as_path: Callable[[Path], Any]
) -> None:
    with AuditService(as_path(db_path), cleanup_enabled=False) as service:
        assert service.settings.database == db_path
        assert service.settings.cleanup_enabled is False
        event_id = service.record(action="path.configured")
    assert _ids(db_path) == [event_id]


def test_keyword_overrides_beat_the_environment(
    monkeypatch: pytest.MonkeyPatch, db_path: Path
) -> None:
    monkeypatch.setenv("AUDIT_TRAIL_QUEUE_MAXSIZE", "7")
    monkeypatch.setenv("AUDIT_TRAIL_ASYNC", "false")
    with AuditService(database=db_path, queue_maxsize=50) as service:
        assert service.settings.database == db_path
        assert service.settings.queue_maxsize == 50
        assert service.settings.async_writes is False  # the environment still fills the rest


def test_keyword_overrides_replace_those_settings_only(
    make_settings: Callable[..., AuditSettings], db_path: Path
) -> None:
    settings = make_settings(buffer_max_size=20, level="all")
    with AuditService(settings, queue_maxsize=50, async_writes=False) as service:
        assert service.settings.queue_maxsize == 50
        assert service.settings.async_writes is False
        assert service.settings.buffer_max_size == 20
        assert service.settings.level == "all"
        assert service.settings.database == db_path
    assert settings.queue_maxsize == 10000  # the caller's settings are left as they were


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (
            (),
            {"queue_maxsize": 0},
            "invalid setting queue_maxsize (the queue_maxsize= argument): "
            "Input should be greater than 0 (got 0)",
        ),
        (
            ("x.db",),
            {"on_full": "wait"},
            "invalid setting on_full (the on_full= argument): "
            "Input should be 'block', 'drop' or 'sync' (got 'wait')",
        ),
        (
            (AuditSettings(),),
            {"sample_rate": 2},
            "invalid setting sample_rate "
            "(the sample_rate= argument): Input should be less than or equal to 1 (got 2)",
        ),
    ],
)
def test_a_bad_override_raises_settings_error_naming_the_setting(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingsError) as exc:
        AuditService(*args, **kwargs)
    assert str(exc.value) == message
    assert not list(tmp_path.iterdir())  # nothing was opened


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (
            (42,),
            {},
            "AuditService() settings must be AuditSettings, a database path (str or "
            "os.PathLike) or None, got int",
        ),
        (
            (b"x.db",),
            {},
            "AuditService() settings must be AuditSettings, a database path (str or "
            "os.PathLike) or None, got bytes",
        ),
        (
            (),
            {"connection": "x.db"},
            "AuditService() connection must be None or the caller's transaction to write the "
            "entry in: a sqlite3.Connection, a psycopg.Connection, or a SQLAlchemy Session or "
            "Connection on either driver (sqlite+pysqlite, postgresql+psycopg); got str",
        ),
        (
            (),
            {"queue_max_size": 10},
            "AuditService() got an unexpected keyword argument 'queue_max_size'",
        ),
        (
            ("x.db",),
            {"database": "y.db"},
            "AuditService() got the database twice: as its first argument and as database=",
        ),
    ],
)
def test_an_argument_of_the_wrong_kind_raises_type_error_naming_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError) as exc:
        AuditService(*args, **kwargs)
    assert str(exc.value) == message
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("async_writes", [True, False], ids=["async", "sync"])
def test_an_existing_trail_other_users_can_read_is_reported_and_left_as_it_is(
    db_path: Path, caplog: pytest.LogCaptureFixture, async_writes: bool
) -> None:
    with AuditService(db_path, cleanup_enabled=False) as service:
        service.record(action="trail.created")
    db_path.chmod(0o644)
    caplog.set_level(logging.WARNING)

    with AuditService(db_path, async_writes=async_writes, cleanup_enabled=False) as service:
        assert service.flush(10)  # the writer has opened the trail
        warnings = service.stats().warnings

    assert warnings == [
        f"the audit trail {db_path} can be read or written by other users "
        f"(audit.db has mode 0644); it holds sensitive data: chmod 600 {db_path}*"
    ]
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    # SQLite gives the -wal and -shm files the database's mode.
    assert logged == [
        f"the audit trail {db_path} can be read or written by other users (audit.db has mode "
        "0644, audit.db-wal has mode 0644, audit.db-shm has mode 0644); it holds sensitive "
        f"data: chmod 600 {db_path}*"
    ]
    assert db_path.stat().st_mode & 0o777 == 0o644  # the user's file, not ours to chmod


def test_a_private_or_new_trail_has_no_warning(make_service: MakeService, db_path: Path) -> None:
    assert make_service().stats().warnings == []  # new: created readable by its owner only
    assert make_service().stats().warnings == []  # existing and private


def test_each_async_service_starts_one_daemon_writer_thread(make_service: MakeService) -> None:
    before = _writer_threads()
    first = make_service()
    after_first = _writer_threads()
    assert len(after_first - before) == 1
    assert all(t.daemon for t in after_first - before)
    make_service(database=first.settings.database.with_name("other.db"))
    assert len(_writer_threads() - after_first) == 1
    assert first.stats().writer_alive


# -- record -------------------------------------------------------------------------------------


def test_record_stores_the_fields_and_returns_the_event_id(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service()
    event_id = service.record(
        action="document.save",
        actor="alice",
        operation="update",
        outcome="failure",
        resource_type="document",
        resource_id="42",
        correlation_id="req-1",
        details={"size": 3, "tags": ["a"]},
        critical=True,
    )
    assert event_id is not None
    assert UUID7.match(event_id)
    assert service.flush(10)
    assert _rows(
        db_path,
        "event_id, action, actor, operation, outcome, resource_type, resource_id, "
        "correlation_id, details, critical",
    ) == [
        (
            event_id,
            "document.save",
            "alice",
            "update",
            "failure",
            "document",
            "42",
            "req-1",
            '{"size":3,"tags":["a"]}',
            1,
        )
    ]


def test_record_accepts_an_audit_entry(make_service: MakeService, db_path: Path) -> None:
    service = make_service()
    entry = AuditEntry(action="door.open", actor="bob", operation=Operation.EXECUTE)
    assert service.record(entry) == entry.event_id
    assert service.flush(10)
    assert _rows(db_path, "event_id, actor") == [(entry.event_id, "bob")]


def test_record_rejects_an_entry_and_fields_together(make_service: MakeService) -> None:
    service = make_service()
    with pytest.raises(
        TypeError, match=r"^record\(\) takes an AuditEntry or keyword fields, not both$"
    ):
        service.record(AuditEntry(action="a"), actor="bob")


def test_record_rejects_a_positional_argument_that_is_not_an_entry(
    make_service: MakeService,
) -> None:
    service = make_service()
    with pytest.raises(
        TypeError, match=r"^record\(\) takes an AuditEntry or keyword fields, got dict$"
    ):
        service.record({"action": "a"})  # type: ignore[arg-type]


def test_an_entry_over_the_service_details_limit_is_invalid(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service(max_details_bytes=10)
    entry = AuditEntry(action="big", details={"k": "a" * 50})  # fine under the default limit
    size = entry.details_size()
    with pytest.raises(InvalidEntryError) as raised:
        service.record(entry)
    assert (
        str(raised.value) == f"details is {size} bytes serialised, more than max_details_bytes=10"
    )
    assert isinstance(raised.value, ValueError)
    assert service.flush(10)
    assert service.stats().accepted == 0
    assert _ids(db_path) == []


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"action": "   "}, "action", "action must not be blank"),
        ({"action": "a", "operation": "explode"}, "operation", "Input should be"),
        ({"action": "a", "details": {"x": float("nan")}}, None, "details.x is nan"),
        ({"action": "a", "details": {"x": "y" * 100}}, None, "more than max_details_bytes=20"),
        ({"action": "a", "actor": "\ud800"}, "actor", "Input should be a valid string"),
        ({"action": "a", "colour": "red"}, "colour", "Extra inputs are not permitted"),
    ],
)
def test_bad_fields_raise_in_the_caller_and_never_reach_the_writer(
    make_service: MakeService,
    db_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fields: dict[str, Any],
    field: str | None,
    message: str,
) -> None:
    puts: list[AuditEntry] = []
    original_put = Writer.put

    def put(self: Writer, entry: AuditEntry, timeout_s: float) -> int | None:
        puts.append(entry)
        return original_put(self, entry, timeout_s)

    monkeypatch.setattr(Writer, "put", put)
    service = make_service(max_details_bytes=20)
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        service.record(**fields)
    if field is not None:
        assert isinstance(raised.value, ValidationError)
        assert [error["loc"] for error in raised.value.errors()] == [(field,)]
    assert puts == []
    assert service.flush(10)
    assert service.stats().accepted == 0
    assert _ids(db_path) == []


def test_async_record_only_enqueues_and_never_touches_sqlite(
    make_service: MakeService, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _WriteSpy(monkeypatch)
    service = make_service(buffer_flush_interval=0.05)
    with locked(db_path) as lock:
        started = time.monotonic()
        ids = [service.record(action="while.locked") for _ in range(20)]
        # A locked database would hold a synchronous INSERT for busy_timeout (5 s).
        assert time.monotonic() - started < 2
        assert service.stats().written == 0
        lock.release()
        assert service.flush(30)
    assert _ids(db_path) == ids
    assert set(spy.thread_of.values()) == {WRITER_THREAD_NAME}


def test_entries_from_one_thread_commit_in_record_order(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service(buffer_max_size=7, buffer_flush_interval=0.05)
    ids = [service.record(action="ordered", details={"i": i}) for i in range(300)]
    assert service.flush(30)
    assert _ids(db_path) == ids


def test_entries_from_several_threads_keep_per_thread_order(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service(buffer_max_size=16, queue_maxsize=50, buffer_flush_interval=0.05)
    start = threading.Barrier(4)
    recorded: dict[str, list[str | None]] = {}

    def work(name: str) -> None:
        start.wait(10)
        recorded[name] = [service.record(action="mixed", actor=name) for _ in range(150)]

    threads = [threading.Thread(target=work, args=(f"t{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert service.flush(30)
    rows = _rows(db_path, "event_id, actor")
    assert len(rows) == 600
    for name, ids in recorded.items():
        assert [event_id for event_id, actor in rows if actor == name] == ids


def test_batches_hold_up_to_buffer_max_size_entries(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service(buffer_max_size=100, queue_maxsize=2000)
    for i in range(1000):
        service.record(action="bulk", details={"i": i})
    assert service.flush(30)
    stats = service.stats()
    assert stats.written == 1000
    assert 10 <= stats.batches <= 20
    assert len(_ids(db_path)) == 1000


# -- flush --------------------------------------------------------------------------------------


def test_flush_commits_everything_accepted_before_the_call(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service(buffer_flush_interval=3600)
    ids = [service.record(action="pending") for _ in range(5)]
    assert _ids(db_path) == []  # still waiting for its batch
    started = time.monotonic()
    assert service.flush(10) is True
    assert time.monotonic() - started < 5
    assert _ids(db_path) == ids


def test_flush_is_safe_from_several_threads_at_once(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service(buffer_max_size=10, buffer_flush_interval=3600)
    start = threading.Barrier(5)
    results: dict[int, list[bool]] = {}
    recorded: dict[int, list[str | None]] = {}

    def work(n: int) -> None:
        start.wait(10)
        recorded[n] = []
        results[n] = []
        for i in range(40):
            recorded[n].append(service.record(action="flushing", details={"i": i}))
            if i % 10 == 9:
                results[n].append(service.flush(30))
                # Everything this thread recorded so far is committed.
                assert set(recorded[n]) <= set(_ids(service.settings.database))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {n: [True] * 4 for n in range(5)}
    assert len(_ids(db_path)) == 200


def test_flush_returns_false_on_timeout_while_the_database_islocked(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service(buffer_flush_interval=0.05)
    with locked(db_path) as lock:
        event_id = service.record(action="stuck")
        started = time.monotonic()
        assert service.flush(timeout=0.3) is False
        assert 0.3 <= time.monotonic() - started < 3
        lock.release()
        assert service.flush(timeout=30) is True
    assert _ids(db_path) == [event_id]


# -- close --------------------------------------------------------------------------------------


def test_close_drains_stops_the_writer_and_refuses_new_entries(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service(buffer_flush_interval=3600)
    before = _writer_threads()
    ids = [service.record(action="before.close") for _ in range(25)]
    assert service.close() is True
    assert service.closed
    assert _ids(db_path) == ids
    assert not service.stats().writer_alive
    assert _writer_threads() <= before
    with pytest.raises(AuditServiceClosed, match=r"^the audit service is closed$"):
        service.record(action="after.close")
    assert service.close() is True  # idempotent
    assert service.flush(1) is True


def test_close_from_several_threads_closes_once(make_service: MakeService, db_path: Path) -> None:
    service = make_service(buffer_flush_interval=3600)
    ids = [service.record(action="x") for _ in range(10)]
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(service.close(30))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [True] * 4
    assert _ids(db_path) == ids


def test_service_is_a_context_manager(make_settings: Callable[..., AuditSettings]) -> None:
    settings = make_settings(buffer_flush_interval=3600)
    with AuditService(settings) as service:
        event_id = service.record(action="in.context")
    assert service.closed
    assert _ids(settings.database) == [event_id]
    with pytest.raises(AuditServiceClosed):
        service.record(action="after")


def test_close_times_out_on_a_locked_database_and_dead_letters_the_rest(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service(buffer_max_size=3, buffer_flush_interval=0.05)
    with locked(db_path):
        ids = [_recorded(service.record(action="locked.out")) for _ in range(10)]
        started = time.monotonic()
        assert service.close(timeout=1) is False
        assert time.monotonic() - started < 1 + 1.5
        stats = service.stats()
        assert not stats.writer_alive
        assert service.close(timeout=1) is False  # idempotent: same answer
    path = deadletter.path_for(db_path)
    assert path == Path(f"{db_path}.deadletter.jsonl")
    assert sorted(e.event_id for e, _ in _dead_letters(db_path) if e is not None) == sorted(ids)
    assert _ids(db_path) == []
    assert stats.dead_lettered == 10
    assert stats.written == 0
    assert stats.last_error == (
        f"close() could not drain the queue in time: 10 entries moved to {path}"
    )


# -- stats --------------------------------------------------------------------------------------

_CORE_STATS = {
    "accepted",
    "written",
    "dropped",
    "batches",
    "queue_depth",
    "max_queue_depth",
    "retries",
    "dead_lettered",
    "writer_alive",
    "last_error",
}


def test_stats_count_and_still_answer_after_close(make_service: MakeService) -> None:
    service = make_service(buffer_max_size=10, buffer_flush_interval=3600)
    fresh = service.stats()
    assert isinstance(fresh, AuditStats)
    assert fresh.model_dump(include=_CORE_STATS) == {
        "accepted": 0,
        "written": 0,
        "dropped": 0,
        "batches": 0,
        "queue_depth": 0,
        "max_queue_depth": 0,
        "retries": 0,
        "dead_lettered": 0,
        "writer_alive": True,
        "last_error": None,
    }
    for _ in range(25):
        service.record(action="counted")
    assert service.flush(10)
    stats = service.stats()
    assert (stats.accepted, stats.written, stats.dropped) == (25, 25, 0)
    assert 3 <= stats.batches <= 25
    assert stats.queue_depth == 0
    assert 1 <= stats.max_queue_depth <= 25
    assert (stats.retries, stats.dead_lettered, stats.last_error) == (0, 0, None)
    assert stats.writer_alive
    assert service.close(10)
    after = service.stats()
    assert not after.writer_alive
    assert (after.accepted, after.written) == (25, 25)


# -- subscribe ----------------------------------------------------------------------------------


def test_subscribe_records_domain_events(make_service: MakeService, db_path: Path) -> None:
    service = make_service()
    bus = EventBus()
    handler = service.subscribe(bus)
    bus.emit(
        OrderPlaced(
            event_type="order.placed", actor="alice", resource_id="o-1", amount=3, payload={"x": 1}
        )
    )
    bus.emit(DomainEvent(event_type="app.started", correlation_id="c-1"))
    assert service.flush(10)
    assert _rows(db_path, "action, actor, resource_type, resource_id, correlation_id, details") == [
        ("order.placed", "alice", "order", "o-1", None, '{"amount":3,"x":1}'),
        ("app.started", None, None, None, "c-1", "{}"),
    ]
    assert bus.unsubscribe(DomainEvent, handler)
    bus.emit(DomainEvent(event_type="after.unsubscribe"))
    assert service.flush(10)
    assert len(_ids(db_path)) == 2


def test_subscribe_with_a_mapper_that_can_skip_events(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service()
    bus = EventBus()
    seen: list[str] = []

    def mapper(event: DomainEvent) -> AuditEntry | None:
        seen.append(event.event_type)
        if event.event_type.startswith("noise."):
            return None
        return AuditEntry(action=f"mapped.{event.event_type}", outcome=Outcome.FAILURE)

    service.subscribe(bus, mapper)
    for name in ("noise.tick", "login", "noise.tock", "logout"):
        bus.emit(DomainEvent(event_type=name))
    assert service.flush(10)
    assert seen == ["noise.tick", "login", "noise.tock", "logout"]
    assert _rows(db_path, "action, outcome") == [
        ("mapped.login", "failure"),
        ("mapped.logout", "failure"),
    ]


# -- synchronous writes -------------------------------------------------------------------------


def test_sync_mode_commits_each_record_in_the_caller_thread(
    make_service: MakeService, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _WriteSpy(monkeypatch)
    before = _writer_threads()
    service = make_service(async_writes=False)
    assert _writer_threads() == before
    with contextlib.closing(sqlite3.connect(db_path)) as reader:
        for n in range(1, 4):
            event_id = _recorded(service.record(action="sync.write"))
            # Committed before record() returned: another connection sees it at once.
            assert reader.execute("SELECT count(*) FROM audit_entries").fetchone() == (n,)
            assert spy.thread_of[event_id] == threading.current_thread().name
    assert service.flush(0) is True
    stats = service.stats()
    assert (stats.accepted, stats.written, stats.batches) == (3, 3, 0)
    assert not stats.writer_alive
    assert service.close() is True
    with pytest.raises(AuditServiceClosed):
        service.record(action="after")


def test_sync_mode_write_error_raises_audit_write_error(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service(async_writes=False)
    service.record(event_id="dup", action="first")
    with pytest.raises(AuditWriteError) as raised:
        service.record(event_id="dup", action="second")
    assert str(raised.value) == f"could not write audit entry dup: IntegrityError: {UNIQUE_FAILED}"
    assert _rows(db_path) == [("dup", "first")]
    assert service.stats().written == 1


def test_sync_mode_fails_in_the_constructor_on_a_bad_database(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "audit.db"
    with pytest.raises(AuditStoreError) as raised:
        AuditService(AuditSettings(database=missing, async_writes=False))
    assert str(raised.value) == f"cannot create the audit database {missing}: no such directory"


@pytest.fixture
def app_conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """The application's own connection (default legacy transaction mode) with a business table."""
    conn = sqlite3.connect(tmp_path / "app.db")
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL)")
    conn.commit()
    yield conn
    conn.close()


def _committed(path: Path) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(orders, audit entries) as another connection sees them."""
    with contextlib.closing(sqlite3.connect(path)) as reader:
        orders = reader.execute("SELECT item FROM orders ORDER BY id").fetchall()
        audit = reader.execute("SELECT event_id, action FROM audit_entries ORDER BY id").fetchall()
        return orders, audit


@pytest.mark.parametrize("finish", ["commit", "rollback"])
def test_an_injected_connection_writes_inside_the_caller_transaction(
    make_service: MakeService, app_conn: sqlite3.Connection, tmp_path: Path, finish: str
) -> None:
    app_db = tmp_path / "app.db"
    before = _writer_threads()
    service = make_service(connection=app_conn)
    assert _writer_threads() == before
    app_conn.execute("INSERT INTO orders (item) VALUES ('book')")
    event_id = service.record(action="order.create", resource_type="order", resource_id="1")
    assert app_conn.in_transaction
    assert _committed(app_db) == ([], [])  # not committed by the service
    assert service.flush(1) is True
    assert _committed(app_db) == ([], [])
    getattr(app_conn, finish)()
    if finish == "commit":
        assert _committed(app_db) == ([("book",)], [(event_id, "order.create")])
    else:
        assert _committed(app_db) == ([], [])
    assert service.close() is True
    app_conn.execute("SELECT 1")  # the caller's connection stays open


def test_record_with_a_connection_argument_bypasses_the_writer(
    make_service: MakeService, app_conn: sqlite3.Connection, tmp_path: Path, db_path: Path
) -> None:
    service = make_service()
    app_conn.execute("INSERT INTO orders (item) VALUES ('pen')")
    first = service.record(action="order.create", connection=app_conn)
    app_conn.rollback()
    app_conn.execute("INSERT INTO orders (item) VALUES ('ink')")
    second = service.record(action="order.create", connection=app_conn)
    app_conn.commit()
    assert service.flush(10)
    assert _committed(tmp_path / "app.db") == ([("ink",)], [(second, "order.create")])
    assert first != second
    assert _ids(db_path) == []  # nothing went through the service's own database


def test_an_injected_write_error_raises_audit_write_error(
    make_service: MakeService, app_conn: sqlite3.Connection
) -> None:
    service = make_service(connection=app_conn)
    service.record(event_id="dup", action="first")
    with pytest.raises(AuditWriteError) as raised:
        service.record(event_id="dup", action="second")
    assert str(raised.value) == f"could not write audit entry dup: {UNIQUE_FAILED}"


# -- a full queue -------------------------------------------------------------------------------


def test_on_full_block_waits_then_raises_audit_queue_full(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service(on_full="block", queue_maxsize=5, buffer_max_size=1, block_timeout=0.2)
    accepted: list[str | None] = []
    with locked(db_path) as lock:
        with pytest.raises(AuditQueueFull) as raised:  # noqa: PT012 - fills the queue first
            for _ in range(20):
                entry = AuditEntry(action="fill")
                started = time.monotonic()
                accepted.append(service.record(entry))
        waited = time.monotonic() - started
        assert str(raised.value) == (
            "the audit queue stayed full for 0.2s (queue_maxsize=5); the entry was not recorded"
        )
        assert 0.2 <= waited < 2
        # The queue (5) plus at most the one entry the stuck writer holds.
        assert 5 <= len(accepted) <= 6
        assert service.stats().max_queue_depth == 5
        lock.release()
        assert service.flush(30)
    assert _ids(db_path) == accepted
    assert entry.event_id not in _ids(db_path)
    assert service.stats().accepted == len(accepted)


def test_on_full_drop_discards_counts_and_warns(
    make_service: MakeService, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = make_service(on_full="drop", queue_maxsize=5, buffer_max_size=1)
    with locked(db_path) as lock, caplog.at_level(logging.WARNING, logger="audit_engine"):
        results = [service.record(action="maybe") for _ in range(20)]
        lock.release()
        assert service.flush(30)
    kept = [r for r in results if r is not None]
    dropped = results.count(None)
    assert 5 <= len(kept) <= 6
    assert dropped == 20 - len(kept)
    assert service.stats().dropped == dropped
    assert service.stats().accepted == len(kept)
    assert _ids(db_path) == kept
    assert "audit queue full: dropped 1 entries (on_full='drop'); 1 dropped in total" in (
        caplog.messages
    )


def test_on_full_drop_never_drops_a_critical_entry_it_waits_for_room_then_raises(
    make_service: MakeService, db_path: Path
) -> None:
    """Review D3: with on_full='drop' a critical entry was dropped (record() returned None)."""
    service = make_service(on_full="drop", queue_maxsize=2, buffer_max_size=1, block_timeout=0.2)
    with locked(db_path) as lock:
        kept = _fill_stuck_writer(service, room=3)
        dropped = service.stats().dropped
        critical = AuditEntry(action="crit", critical=True)
        started = time.monotonic()
        with pytest.raises(AuditQueueFull) as raised:
            service.record(critical)
        waited = time.monotonic() - started
        lock.release()
        assert service.flush(30)
    assert str(raised.value) == (
        "the audit queue stayed full for 0.2s (queue_maxsize=2); the critical entry was not "
        "recorded (a critical entry is never dropped: with on_full='drop' it waits up to "
        "block_timeout for room, as with 'block')"
    )
    assert 0.2 <= waited < 5
    assert service.stats().dropped == dropped  # the critical entry raised: not dropped
    assert _ids(db_path) == kept


def _fill_stuck_writer(service: AuditService, room: int) -> list[str]:
    """Record plain entries until ``room`` were accepted (the queue, and the one entry the writer
    stuck on the lock holds); the writer takes its entry when it gets to it, so until then an
    entry may be dropped."""
    kept: list[str] = []
    deadline = time.monotonic() + 10
    while len(kept) < room and time.monotonic() < deadline:
        event_id = service.record(action="fill")
        if event_id is not None:
            kept.append(event_id)
    assert len(kept) == room
    return kept


def test_on_full_drop_a_critical_entry_waits_for_room_and_is_committed(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service(on_full="drop", queue_maxsize=2, buffer_max_size=1, block_timeout=30)
    with locked(db_path, release_after=0.3):
        kept = [r for r in (service.record(action="fill") for _ in range(6)) if r is not None]
        event_id = service.record(action="crit", critical=True)  # waits for room, then commit
    assert event_id is not None
    assert _ids(db_path) == [*kept, event_id]


def test_on_full_sync_writes_the_overflow_in_the_caller_thread(
    make_service: MakeService, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _WriteSpy(monkeypatch)
    service = make_service(on_full="sync", queue_maxsize=2, buffer_max_size=1, busy_timeout=10)
    me = threading.current_thread().name
    # The writer is stuck on the lock; the overflow write waits (busy_timeout) until the timer
    # releases it, then commits from this thread.
    with locked(db_path, release_after=0.5):
        ids = [_recorded(service.record(action="overflow", details={"i": i})) for i in range(6)]
        assert service.flush(30)
    assert sorted(_ids(db_path)) == sorted(ids)
    assert set(spy.thread_of) == set(ids)
    assert me in spy.thread_of.values()
    assert set(spy.thread_of.values()) == {me, WRITER_THREAD_NAME}
    stats = service.stats()
    assert (stats.accepted, stats.written, stats.dropped) == (6, 6, 0)
    synchronous = [i for i in ids if spy.thread_of[i] == me]
    assert stats.batches == 6 - len(synchronous)


# -- disabled -----------------------------------------------------------------------------------


def test_a_disabled_service_records_nothing_and_creates_no_file(
    make_service: MakeService, db_path: Path
) -> None:
    before = _writer_threads()
    service = make_service(enabled=False)
    assert service.record(action="ignored") is None
    assert service.record(AuditEntry(action="ignored")) is None
    assert _writer_threads() == before
    assert not db_path.exists()
    assert service.flush(0) is True
    stats = service.stats()
    assert (stats.accepted, stats.written, stats.writer_alive) == (0, 0, False)
    assert service.close() is True
    assert not db_path.exists()
    with pytest.raises(AuditServiceClosed):
        service.record(action="after")


# -- writer faults seen through the service -----------------------------------------------------


def test_a_busy_database_is_retried_and_nothing_is_lost(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service(buffer_max_size=10, buffer_flush_interval=0.05)
    with locked(db_path, release_after=0.5):
        ids = [service.record(action="retry", details={"i": i}) for i in range(30)]
        assert service.flush(timeout=30)
    stats = service.stats()
    assert stats.retries > 0
    assert (stats.written, stats.dead_lettered) == (30, 0)
    assert _ids(db_path) == ids


def test_a_duplicate_event_id_is_dead_lettered_and_the_rest_commit(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service(buffer_max_size=100, buffer_flush_interval=3600)
    before = service.record(action="before")
    service.record(event_id="same-id", action="first")
    service.record(event_id="same-id", action="second")
    after = service.record(action="after")
    assert service.flush(10)
    assert _rows(db_path) == [
        (before, "before"),
        ("same-id", "first"),
        (after, "after"),
    ]
    dead = _dead_letters(db_path)
    assert [(e.action if e else None, error) for e, error in dead] == [
        ("second", f"IntegrityError: {UNIQUE_FAILED}")
    ]
    stats = service.stats()
    assert (stats.accepted, stats.written, stats.dead_lettered) == (4, 3, 1)
    assert stats.last_error == f"IntegrityError: {UNIQUE_FAILED}"


def test_an_unwritable_dead_letter_file_logs_entries_at_critical(
    make_service: MakeService, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    deadletter.path_for(db_path).mkdir()  # a directory where the file should go
    service = make_service(buffer_flush_interval=3600)
    with caplog.at_level(logging.CRITICAL, logger="audit_engine"):
        service.record(event_id="same-id", action="first")
        service.record(event_id="same-id", action="second", actor="carol")
        assert not service.flush(10)  # an entry only in the log is not a success (issue 11, 8)
    critical = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1
    assert critical[0].startswith("audit entry LOST to disk, logged instead: {")
    assert '"event_id":"same-id"' in critical[0]
    assert '"actor":"carol"' in critical[0]
    stats = service.stats()
    assert stats.dead_lettered == 0
    assert stats.logged_only == 1
    assert stats.last_error is not None
    assert stats.last_error.startswith("dead-letter file not writable: ")


def test_an_unexpected_writer_loop_error_is_reported_and_the_writer_keeps_working(
    make_service: MakeService, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Writer._collect
    raised = False

    def collect(self: Writer) -> tuple[list[AuditEntry], bool]:
        nonlocal raised
        if not raised:
            raised = True
            raise RuntimeError("loop bug")
        return original(self)

    monkeypatch.setattr(Writer, "_collect", collect)
    service = make_service(buffer_flush_interval=0.05)
    ids = [service.record(action="survives") for _ in range(10)]
    assert service.flush(10)
    stats = service.stats()
    assert stats.last_error == "writer loop error: RuntimeError('loop bug')"
    assert stats.writer_alive
    assert _ids(db_path) == ids
    more = service.record(action="later")
    started = time.monotonic()
    assert service.close(10) is True
    assert time.monotonic() - started < 5
    assert _ids(db_path) == [*ids, more]


class _WriterKilled(SystemExit):
    """A BaseException that _Deaths lets end the writer thread."""


class _Deaths:
    """Stands in for ``threading.excepthook``: remembers what threads died of."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.types: list[type[BaseException]] = []
        self.seen = threading.Event()
        monkeypatch.setattr(threading, "excepthook", self._hook)
        # The writer loop recovers from every exception; let _WriterKilled through, to test a
        # thread ended from outside (interpreter shutdown).
        recover = Writer._recover

        def recover_unless_killed(writer: Writer, exc: BaseException) -> None:
            if isinstance(exc, _WriterKilled):
                raise exc
            recover(writer, exc)

        monkeypatch.setattr(Writer, "_recover", recover_unless_killed)

    def _hook(self, args: threading.ExceptHookArgs) -> None:
        self.types.append(args.exc_type)
        self.seen.set()


def _kill_writer_on_first_loop(monkeypatch: pytest.MonkeyPatch) -> _Deaths:
    deaths = _Deaths(monkeypatch)
    original = Writer._collect
    killed = False

    def collect(self: Writer) -> tuple[list[AuditEntry], bool]:
        nonlocal killed
        if not killed:
            killed = True
            raise _WriterKilled("killed by the test")
        return original(self)

    monkeypatch.setattr(Writer, "_collect", collect)
    return deaths


def _kill_writer_in_first_write(monkeypatch: pytest.MonkeyPatch) -> _Deaths:
    deaths = _Deaths(monkeypatch)
    original = append.commit_batch
    killed = False

    def write(conn: sqlite3.Connection, rows: Sequence[AuditEntry], *rest: Any) -> Any:
        nonlocal killed
        if not killed:
            killed = True
            raise _WriterKilled("killed by the test")
        return original(conn, rows, *rest)

    monkeypatch.setattr(append, "commit_batch", write)
    return deaths


def test_flush_returns_false_promptly_when_the_writer_died(
    make_service: MakeService, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    deaths = _kill_writer_on_first_loop(monkeypatch)
    with caplog.at_level(logging.CRITICAL, logger="audit_engine"):
        service = make_service()
        service.record(action="orphan")
        started = time.monotonic()
        assert service.flush(timeout=30) is False
        assert time.monotonic() - started < 2
        assert not service.stats().writer_alive
        assert deaths.seen.wait(5)
    assert deaths.types == [_WriterKilled]
    assert "audit writer thread died; close() will write the queue itself" in caplog.messages


def test_close_commits_what_a_dead_writer_left_in_the_queue(
    make_service: MakeService, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _kill_writer_on_first_loop(monkeypatch)
    service = make_service()
    ids = [service.record(action="orphan") for _ in range(5)]
    assert service.flush(timeout=5) is False
    started = time.monotonic()
    assert service.close(timeout=10) is True
    assert time.monotonic() - started < 5
    assert _ids(db_path) == ids
    stats = service.stats()
    assert (stats.accepted, stats.written, stats.dead_lettered) == (5, 5, 0)


def test_close_keeps_the_batch_a_dead_writer_had_in_hand(
    make_service: MakeService, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deaths = _kill_writer_in_first_write(monkeypatch)
    service = make_service(buffer_flush_interval=3600)
    in_hand = [service.record(action="in.hand") for _ in range(5)]
    assert service.flush(timeout=5) is False  # the writer died writing these
    assert deaths.seen.wait(5)
    queued = [service.record(action="queued") for _ in range(2)]
    service.close(timeout=10)
    stats = service.stats()
    assert stats.written + stats.dead_lettered == stats.accepted == 7
    assert _ids(db_path) == in_hand + queued


# -- process lifecycle: exit, garbage collection, fork ------------------------------------------

_EXIT_SCRIPT = textwrap.dedent(
    """
    import gc, sys
    from audit_engine import AuditService, AuditSettings

    service = AuditService(
        AuditSettings(database=sys.argv[1], buffer_flush_interval=3600, buffer_max_size=10000)
    )
    for i in range(int(sys.argv[2])):
        service.record(action="at.exit", details={"i": i})
    if sys.argv[3] == "drop-reference":
        del service
        gc.collect()
    # no close(): the interpreter exits with the entries still queued
    """
)


@pytest.mark.parametrize("how", ["keep-reference", "drop-reference"])
def test_an_unclosed_service_is_drained_at_interpreter_exit(db_path: Path, how: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _EXIT_SCRIPT, str(db_path), "250", how],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    rows = _rows(db_path, "action, details")
    assert rows == [("at.exit", f'{{"i":{i}}}') for i in range(250)]


def test_a_garbage_collected_unclosed_service_drains_its_writer(
    make_settings: Callable[..., AuditSettings], db_path: Path
) -> None:
    before = _writer_threads()
    service = AuditService(make_settings(buffer_flush_interval=3600))
    (thread,) = _writer_threads() - before
    ids = [service.record(action="collected") for _ in range(40)]
    del service
    gc.collect()
    thread.join(10)
    assert not thread.is_alive()
    assert _ids(db_path) == ids


def test_the_exit_hook_closes_live_services_and_drains_orphaned_writers(
    make_service: MakeService, make_settings: Callable[..., AuditSettings], db_path: Path
) -> None:
    kept = make_service(buffer_flush_interval=3600)
    kept_ids = [kept.record(action="kept") for _ in range(5)]
    other_db = db_path.with_name("orphan.db")
    orphan = AuditService(make_settings(database=other_db, buffer_flush_interval=3600))
    orphan_ids = [orphan.record(action="orphan") for _ in range(5)]
    del orphan
    gc.collect()
    lifecycle._drain_at_exit()  # what atexit runs
    assert kept.closed
    assert not kept.stats().writer_alive
    assert _ids(db_path) == kept_ids
    assert _ids(other_db) == orphan_ids


def _child_records_and_closes(service: AuditService, count: int) -> None:
    """Runs in a forked child (multiprocessing 'fork'): a fresh writer, the child's own entries."""
    stats = service.stats()
    assert (stats.accepted, stats.queue_depth, stats.written) == (0, 0, 0)
    assert stats.writer_alive
    for i in range(count):
        service.record(action="child", details={"i": i})
    assert service.close(timeout=30) is True
    assert service.stats().written == count


def _child_records_without_closing(service: AuditService, count: int) -> None:
    for i in range(count):
        service.record(action="child.unclosed", details={"i": i})


def test_a_forked_multiprocessing_child_drains_its_unclosed_service_on_exit(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service(buffer_flush_interval=3600, buffer_max_size=1000)
    child = multiprocessing.get_context("fork").Process(
        target=_child_records_without_closing, args=(service, 15)
    )
    child.start()
    child.join(60)
    if child.is_alive():  # pragma: no cover - only when the test is failing
        child.kill()
        child.join(10)
    assert child.exitcode == 0
    assert [action for _, action in _rows(db_path)] == ["child.unclosed"] * 15


def test_after_fork_parent_and_child_each_write_their_own_entries(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service(buffer_flush_interval=3600, buffer_max_size=1000)
    parent_ids = [service.record(action="parent", details={"i": i}) for i in range(30)]

    child = multiprocessing.get_context("fork").Process(
        target=_child_records_and_closes, args=(service, 20)
    )
    child.start()
    child.join(60)
    if child.is_alive():  # pragma: no cover - only when the test is failing
        child.kill()
        child.join(10)
    assert child.exitcode == 0

    # The parent's queued entries were not written by the child...
    assert [action for _, action in _rows(db_path)] == ["child"] * 20
    # ...and the parent still has them (and its writer) after the fork.
    assert service.stats().writer_alive
    more = service.record(action="parent", details={"i": 30})
    assert service.close(timeout=30) is True
    rows = _rows(db_path)
    assert len(rows) == 51
    assert len({event_id for event_id, _ in rows}) == 51
    assert [event_id for event_id, action in rows if action == "parent"] == [*parent_ids, more]
