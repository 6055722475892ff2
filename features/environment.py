"""Set-up and tear-down for the behave scenarios.

Every scenario gets a fresh :class:`World`: its own temporary directory (also the working directory,
so a default ``audit.db`` never lands in the repository), no ``AUDIT_TRAIL_*`` variables, and a
register of everything it starts. ``after_scenario`` releases held locks first (a writer stuck
behind one could not drain), then closes every service and connection, and restores the
environment, the working directory and the file system.

``behave -D backend=postgres`` runs the same scenarios against a throwaway PostgreSQL server
started in ``before_all`` (tests/pgcluster.py) and stopped in ``after_all``: each scenario's
database is then a fresh database on it (dropped afterwards), and ``World.database`` is its URL.
Scenarios tagged ``@sqlite_only`` are about the SQLite file itself (its bytes, locks, modes, a
connection to it) and are skipped there, by design, with the reason in the run's output; they
still run on SQLite.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time
from pathlib import Path
from typing import Any

from behave.model import Scenario
from behave.runner import Context
from trail_backend import (
    POSTGRES,
    SQLITE,
    SQLITE_ONLY,
    TEAM_SERVER,
    Database,
    ServerConnection,
    append_rows,
    chosen_backend,
    connect,
    count_event,
    read_rows,
    start_cluster,
    take_write_lock,
)

from audit_engine import AuditEntry, AuditService, AuditSettings, AuditStore
from audit_engine.rows import entry_row
from audit_engine.settings import default_deadletter_path
from audit_engine.storage.chain import ChainHead, VerifyReport

ENV_PREFIX = "AUDIT_TRAIL_"
# Upper bound for every wait in a scenario: long enough for a loaded CI machine, short enough
# that a hang fails the scenario instead of the whole run.
WAIT_S = 10.0
_POLL_TICK_S = 0.005
# A URL trail's dead-letter file defaults to the user's data directory: each scenario's own.
_DATA_ENV = ("XDG_DATA_HOME",)
_AGE = re.compile(r"(\d+) (day|hour)s? ago")

_AUDIT_COLUMNS = (
    "id",
    "event_id",
    "timestamp",
    "actor",
    "action",
    "operation",
    "resource_type",
    "resource_id",
    "details",
)


class _LogRecorder(logging.Handler):
    """Keeps what the library logs during a scenario, so steps can check what operators see."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class World:
    """What one scenario owns, and the helpers its steps share."""

    def __init__(self, root: Path, backend: str = SQLITE) -> None:
        self.root = root
        self.backend = backend
        # A URL on the postgres run (before_scenario sets it); the file otherwise.
        self.database: Database = root / "audit.db"
        self.settings_values: dict[str, Any] = {}
        self.service: AuditService | None = None
        self.services: list[AuditService] = []
        self.connections: list[sqlite3.Connection | ServerConnection] = []
        self.threads: list[threading.Thread] = []
        self.timers: list[threading.Timer] = []
        self._locks: list[Callable[[], None]] = []
        self._lock_guard = threading.Lock()
        self.lock_released = threading.Event()
        self.log = _LogRecorder()
        self.release_started_at: float | None = None
        # What the tool recorded: every record() result in order, and the ids it got back.
        self.results: list[str | None] = []
        self.last_results: list[str | None] = []
        self.accepted: list[str] = []
        # Entries recorded under a label (record_labelled), with what record() returned.
        self.labelled: list[tuple[str, str | None]] = []
        self.seq = 0
        # The outcome of the last single attempt ("tries to ...").
        self.error: BaseException | None = None
        self.returned: Any = None
        self.elapsed_s = 0.0
        self.finished_at = 0.0
        self.close_results: list[bool] = []
        # Run last by close_everything(), newest first (e.g. stop a server the scenario started).
        self.cleanups: list[Callable[[], None]] = []

    # -- services ------------------------------------------------------------------------------

    def settings(self, **values: Any) -> AuditSettings:
        """Settings for this scenario's database, overridden by ``values``."""
        merged = {"database": self.database, **self.settings_values, **values}
        return AuditSettings(**merged)

    def track(self, service: AuditService) -> AuditService:
        """Register ``service`` so that ``after_scenario`` closes it."""
        self.services.append(service)
        return service

    def open_service(self, settings: AuditSettings | None = None, **kwargs: Any) -> AuditService:
        service = self.track(AuditService(settings or self.settings(), **kwargs))
        self.service = service
        return service

    @property
    def audit(self) -> AuditService:
        assert self.service is not None, "the scenario has not started an audit service"
        return self.service

    def connect(self, path: Database, **kwargs: Any) -> sqlite3.Connection | ServerConnection:
        """An application's connection (on a URL: another program's), closed after the scenario."""
        conn = connect(path, **kwargs)
        self.connections.append(conn)
        return conn

    # -- recording -----------------------------------------------------------------------------

    def next_seq(self) -> int:
        seq = self.seq
        self.seq += 1
        return seq

    def record_notes(self, count: int, **fields: Any) -> list[str | None]:
        """Record ``count`` distinct note saves; returns what each record() returned."""
        results = []
        for _ in range(count):
            seq = self.next_seq()
            values = {
                "action": "note.save",
                "actor": "alice",
                "operation": "update",
                "resource_type": "note",
                "resource_id": f"note-{seq}",
                "details": {"seq": seq},
                **fields,
            }
            results.append(self.keep(self.audit.record(**values)))
        self.last_results = results
        return results

    def record_labelled(self, label: str, **fields: Any) -> str | None:
        """Record one entry (actor alice unless given), remembering its result under ``label``.

        None is a legitimate result here: the audit policy may leave the entry out.
        """
        result = self.keep(self.audit.record(**{"actor": "alice", **fields}))
        self.labelled.append((label, result))
        return result

    @staticmethod
    def recorded_at(age: str, count: int) -> list[datetime]:
        """Timestamps for ``count`` entries recorded ``age`` ("200 days ago", "1 hour ago").

        "N days ago" is noon UTC of that calendar day, so one day's entries never straddle
        midnight; the entries of one group are a second apart, in recording order.
        """
        match = _AGE.fullmatch(age.strip())
        assert match, f"unknown age {age!r}: say 'N days ago' or 'N hours ago'"
        amount, unit = int(match[1]), match[2]
        now = datetime.now(UTC)
        if unit == "day":
            day = (now - timedelta(days=amount)).date()
            start = datetime.combine(day, dt_time(12), tzinfo=UTC)
        else:
            start = now - timedelta(hours=amount)
        return [start + timedelta(seconds=i) for i in range(count)]

    def write_entries(self, count: int, age: str, **fields: Any) -> list[str]:
        """Commit ``count`` note saves recorded ``age``, in one transaction, as a writer would.

        How a scenario sets up a trail recorded long ago: record() stamps entries with the
        current time, and a service's cleanup thread could purge old ones before a step looks.
        """
        entries = []
        for timestamp in self.recorded_at(age, count):
            seq = self.next_seq()
            values = {
                "action": "note.save",
                "actor": "alice",
                "operation": "update",
                "resource_type": "note",
                "resource_id": f"note-{seq}",
                "details": {"seq": seq},
                "timestamp": timestamp,
                **fields,
            }
            entries.append(AuditEntry(**values))
        append_rows(self.database, [entry_row(e) for e in entries])
        return [entry.event_id for entry in entries]

    def keep(self, result: str | None) -> str | None:
        self.results.append(result)
        if result is not None:
            self.accepted.append(result)
        return result

    def attempt(self, action: Callable[[], Any]) -> None:
        """Run ``action`` once, remembering what it returned or raised and how long it took."""
        self.error, self.returned = None, None
        started = time.monotonic()
        try:
            self.returned = action()
        except Exception as exc:
            self.error = exc
        self.finished_at = time.monotonic()
        self.elapsed_s = self.finished_at - started

    # -- another program's write lock ----------------------------------------------------------

    def hold_write_lock(self, path: Path | None = None) -> None:
        """Take the database's write lock from a separate connection, as another program would."""
        release = take_write_lock(path or self.database)
        with self._lock_guard:
            self._locks.append(release)
            self.lock_released.clear()

    @property
    def lock_held(self) -> bool:
        with self._lock_guard:
            return bool(self._locks)

    def release_write_locks(self) -> None:
        """Release every held lock; safe from a Timer thread and safe to call twice."""
        with self._lock_guard:
            locks, self._locks = self._locks, []
            if locks:
                self.release_started_at = time.monotonic()
            for release in locks:
                release()
            self.lock_released.set()

    def release_locks_later(self, delay_s: float) -> None:
        timer = threading.Timer(delay_s, self.release_write_locks)
        timer.daemon = True
        self.timers.append(timer)
        timer.start()

    # -- waiting and reading -------------------------------------------------------------------

    @staticmethod
    def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
        """Poll a condition the library reports only as a counter, with a hard deadline.

        Used only where the public API offers nothing to wait on (e.g. "the writer has met the
        lock"); everything else waits on flush(), close(), joins and Events.
        """
        deadline = time.monotonic() + timeout_s
        tick = threading.Event()
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"gave up after {timeout_s}s waiting until {what}")
            tick.wait(min(_POLL_TICK_S, remaining))

    def audit_rows(self, path: Database | None = None) -> list[dict[str, Any]]:
        """The audit rows in commit order, read through a separate connection."""
        return read_rows(path or self.database, _AUDIT_COLUMNS)

    def verify_trail(self, expected_head: ChainHead | None = None) -> VerifyReport:
        """What ``AuditStore.verify()`` says about this scenario's database now."""
        with AuditStore(self.database) as audit_store:
            return audit_store.verify(expected_head=expected_head)

    def committed(self, event_id: str, path: Database | None = None) -> bool:
        """Whether another program sees ``event_id`` committed (a fresh connection, no cache)."""
        return count_event(path or self.database, event_id) == 1

    @property
    def deadletter_path(self) -> Path:
        """Where the writer sets entries aside for this scenario's database by default."""
        return default_deadletter_path(self.database)

    def dead_letters(self) -> list[dict[str, Any]]:
        path = self.deadletter_path
        if not path.exists():
            return []
        lines = path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    # -- tear-down -----------------------------------------------------------------------------

    def close_everything(self) -> list[str]:
        """Stop and close everything the scenario started; returns what could not be stopped."""
        problems = []
        for timer in self.timers:
            timer.cancel()
            timer.join(WAIT_S)
        # Locks first: a writer retrying behind a lock cannot drain while it is held.
        self.release_write_locks()
        for thread in self.threads:
            thread.join(WAIT_S)
            if thread.is_alive():
                problems.append(f"thread {thread.name} still running")
        for service in self.services:
            service.close(timeout=WAIT_S)
            if service.stats().writer_alive:
                problems.append("an audit writer thread still running after close()")
        for conn in self.connections:
            conn.close()
        for cleanup in reversed(self.cleanups):
            cleanup()
        return problems


def before_all(context: Context) -> None:
    context.backend = chosen_backend(context.config.userdata)
    context.pg_cluster = None
    if context.backend == POSTGRES:
        context.pg_cluster = start_cluster()
        print(f"behave: every scenario on PostgreSQL at {context.pg_cluster.url()}")


def after_all(context: Context) -> None:
    if context.pg_cluster is not None:
        context.pg_cluster.stop()


def before_scenario(context: Context, scenario: Scenario) -> None:
    if context.backend == POSTGRES and SQLITE_ONLY in scenario.effective_tags:
        # behave's summary counts it as skipped; the formatter shows the reason.
        reason = "about SQLite's file, locks or messages; not run on postgres"
        scenario.skip(reason=f"@{SQLITE_ONLY}: {reason}")
        context.world = None
        return
    root = Path(tempfile.mkdtemp(prefix="audit-feature-"))
    context.saved_env = {
        k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX) or k in _DATA_ENV
    }
    for name in context.saved_env:
        del os.environ[name]
    os.environ["XDG_DATA_HOME"] = str(root / "data")
    context.saved_cwd = os.getcwd()
    os.chdir(root)
    context.world = World(root, context.backend)
    if TEAM_SERVER in scenario.effective_tags and context.pg_cluster is None:
        # About the server itself: it runs on the SQLite run too, with a server of its own.
        context.pg_cluster = start_cluster()
    if context.backend == POSTGRES or TEAM_SERVER in scenario.effective_tags:
        context.world.database = context.pg_cluster.create_database()
    library_logger = logging.getLogger("audit_engine")
    context.saved_logging = (library_logger.level, library_logger.propagate)
    library_logger.addHandler(context.world.log)
    library_logger.setLevel(logging.DEBUG)
    library_logger.propagate = False  # expected warnings stay out of the run's output


def after_scenario(context: Context, scenario: Scenario) -> None:
    world: World | None = context.world
    if world is None:  # skipped before it started
        return
    try:
        problems = world.close_everything()
    finally:
        if context.pg_cluster is not None and isinstance(world.database, str):
            context.pg_cluster.drop_database(world.database.rsplit("/", 1)[1])
        for name in [k for k in os.environ if k.startswith(ENV_PREFIX) or k in _DATA_ENV]:
            del os.environ[name]
        os.environ.update(context.saved_env)
        os.chdir(context.saved_cwd)
        library_logger = logging.getLogger("audit_engine")
        library_logger.removeHandler(world.log)
        library_logger.level, library_logger.propagate = context.saved_logging
        shutil.rmtree(world.root, ignore_errors=True)
    assert not problems, f"scenario left work running: {problems}"
