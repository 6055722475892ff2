"""A PostgreSQL server that goes away: restarts, dropped connections, outages, sync mode.

Every test here stops or disturbs a server, so each has a cluster of its own (``own_cluster``),
never the session's. Waits are on flush(), close(), Events and process exits; the only timed
waits are the settings under test (block_timeout, close(timeout), busy_timeout).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from pgcluster import PgCluster

from audit_engine import AuditService, AuditSettings, AuditStore
from audit_engine.errors import AuditQueueFull, AuditWriteError
from audit_engine.storage import deadletter

TIMEOUT_S = 60


@pytest.fixture
def own_cluster() -> Iterator[PgCluster]:
    with PgCluster() as cluster:
        yield cluster


@pytest.fixture
def url(own_cluster: PgCluster) -> str:
    return own_cluster.create_database("trail")


def stored_ids(url: str) -> list[str]:
    with psycopg.connect(url, connect_timeout=10) as conn:
        return [row[0] for row in conn.execute("SELECT event_id FROM audit_entries ORDER BY id")]


def assert_stored_once(url: str, expected: list[str]) -> None:
    ids = stored_ids(url)
    assert len(ids) == len(set(ids)), "an entry is stored twice"
    assert set(ids) == set(expected)
    with AuditStore(url) as store:
        report = store.verify()
    assert report.ok, report


def service_for(url: str, tmp_path: Path, **overrides: object) -> AuditService:
    values: dict[str, object] = {
        "database": url,
        "deadletter_path": tmp_path / "dl.jsonl",
        "buffer_max_size": 20,
        "buffer_flush_interval": 0.01,
        "cleanup_enabled": False,
    }
    values.update(overrides)
    return AuditService(AuditSettings(**values))  # type: ignore[arg-type]


class Recorder:
    """Records entries in a thread of its own until stopped; keeps every event_id returned."""

    def __init__(self, service: AuditService) -> None:
        self.service = service
        self.ids: list[str] = []
        self.error: BaseException | None = None
        self.started = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)

    def __enter__(self) -> Recorder:
        self._thread.start()
        assert self.started.wait(TIMEOUT_S)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT_S)
        assert not self._thread.is_alive()

    def _run(self) -> None:
        n = 0
        try:
            while not self._stop.is_set():
                event_id = self.service.record(action="load.write", event_id=f"bg-{n:06d}")
                assert event_id is not None
                self.ids.append(event_id)
                n += 1
                if n == 100:
                    self.started.set()
                if n % 20 == 0:
                    # Pacing only (a few thousand entries a second), not a wait for anything.
                    self._stop.wait(0.002)
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc
            self.started.set()


def _restart(cluster: PgCluster, service: AuditService, dbname: str) -> list[str | None]:
    cluster.restart()
    return []


def _crash_then_start(cluster: PgCluster, service: AuditService, dbname: str) -> list[str | None]:
    cluster.stop_now("immediate")  # a crash: no checkpoint, connections cut
    down = [service.record(action="while.down", event_id=f"down-{n}") for n in range(50)]
    assert service.stats().dead_lettered == 0  # a short outage dead-letters nothing
    cluster.start_again()
    return down


def _drop_connection(cluster: PgCluster, service: AuditService, dbname: str) -> list[str | None]:
    with psycopg.connect(cluster.url(), autocommit=True, connect_timeout=10) as admin:
        ended = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = 'audit_engine'",
            (dbname,),
        ).fetchall()
    assert ended == [(True,)]  # the writer's one connection
    return []


@pytest.mark.parametrize(
    "outage",
    [_restart, _crash_then_start, _drop_connection],
    ids=["restart", "immediate-shutdown-then-start", "terminated-backend"],
)
def test_a_server_that_goes_away_mid_run_loses_nothing(
    own_cluster: PgCluster,
    url: str,
    tmp_path: Path,
    outage: Callable[[PgCluster, AuditService, str], list[str | None]],
) -> None:
    service = service_for(url, tmp_path, block_timeout=TIMEOUT_S)
    try:
        with Recorder(service) as recorder:
            assert service.flush(TIMEOUT_S)  # the writer has a connection, now made stale
            during = outage(own_cluster, service, url.rsplit("/", 1)[1])
            # At least one batch after the outage, whatever the recorder thread got to do.
            after = service.record(action="after.outage")
            assert service.flush(TIMEOUT_S)
        assert recorder.error is None, recorder.error
        assert service.close(timeout=TIMEOUT_S)
    finally:
        service.close(timeout=5)
    stats = service.stats()
    assert stats.dead_lettered == 0, stats.last_error
    assert stats.retries > 0  # the stale connection was met, and a new one opened
    expected = [*recorder.ids, *during, after]
    assert None not in expected
    assert stats.written == len(expected)
    assert_stored_once(url, [event_id for event_id in expected if event_id is not None])


def hold_a_batch(service: AuditService, prefix: str) -> str:
    """One entry the writer takes off the queue and keeps retrying: from then on it holds that
    batch and takes no other until the server is back, so the queue's room is exactly its bound."""
    event_id = service.record(action="fill", event_id=f"{prefix}-held")
    assert event_id is not None
    for _ in range(int(TIMEOUT_S / 0.5)):  # flush() makes the writer take it, and waits
        assert service.flush(0.5) is False  # the server is down: nothing commits
        if service.stats().queue_depth == 0:
            return event_id
    raise AssertionError("the writer never took the entry")


def fill_until_refused(service: AuditService, prefix: str) -> list[str]:
    """Record until the (stuck) writer's queue refuses; the event_ids accepted."""
    accepted: list[str] = []
    for n in range(10_000):
        try:
            event_id = service.record(action="fill", event_id=f"{prefix}-{n:05d}")
        except AuditQueueFull:  # on_full='block', after block_timeout
            return accepted
        if event_id is None:  # on_full='drop'
            return accepted
        accepted.append(event_id)
    raise AssertionError("the queue never filled up")


def test_while_the_server_is_down_the_queue_bounds_then_close_dead_letters_and_replay_restores(
    own_cluster: PgCluster, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_DATA_HOME", str(xdg))
    common = {"queue_maxsize": 40, "buffer_max_size": 10, "block_timeout": 0.2}
    blocking = service_for(url, tmp_path, on_full="block", **common)
    dropping = service_for(url, tmp_path, on_full="drop", deadletter_path=None, **common)
    try:
        for service in (blocking, dropping):
            service.record(action="before", event_id=f"before-{id(service)}")
            assert service.flush(TIMEOUT_S)  # the trail exists; each writer has a connection
        before = stored_ids(url)
        own_cluster.stop_now()

        blocked = [hold_a_batch(blocking, "block"), *fill_until_refused(blocking, "block")]
        with pytest.raises(AuditQueueFull, match="queue_maxsize=40"):
            blocking.record(action="fill", event_id="block-refused")
        # The batch the writer holds while it retries, and the queue's bound.
        assert len(blocked) == 1 + 40

        dropped = [hold_a_batch(dropping, "drop"), *fill_until_refused(dropping, "drop")]
        assert len(dropped) == 1 + 40
        for n in range(5):
            assert dropping.record(action="fill", event_id=f"dropped-{n}") is None
        assert dropping.stats().dropped == 6

        for service in (blocking, dropping):
            # The writer keeps trying for a while (nothing can commit: flush times out), yet an
            # outage alone dead-letters nothing.
            assert service.flush(0.5) is False
            stats = service.stats()
            assert stats.retries > 0
            assert stats.dead_lettered == 0
        # close(timeout) with the server still down: what is queued goes to the dead-letter file.
        assert blocking.close(timeout=0.5) is False
        assert dropping.close(timeout=0.5) is False
    finally:
        blocking.close(timeout=5)
        dropping.close(timeout=5)
    assert blocking.stats().dead_lettered == len(blocked)
    assert dropping.stats().dead_lettered == len(dropped)

    explicit = tmp_path / "dl.jsonl"
    default = dropping.settings.deadletter_file
    assert default.is_relative_to(xdg / "audit-engine")  # a URL's file, in the data directory
    for path, ids in ((explicit, blocked), (default, dropped)):
        lines = list(deadletter.read(path))
        assert sorted(entry.event_id for _, entry, _ in lines if entry) == sorted(ids)

    own_cluster.start_again()
    with AuditStore(url) as store:
        report = store.replay_dead_letters(explicit)
    assert report.replayed == len(blocked), report
    assert not report.errors
    cli = Path(sys.executable).with_name("audit-engine")
    done = subprocess.run(
        [str(cli), "--db", url, "replay-deadletter"],
        env={**os.environ, "XDG_DATA_HOME": str(xdg)},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert_stored_once(url, before + blocked + dropped)


def test_sync_mode_names_a_server_that_is_down_and_recovers_after_a_restart(
    own_cluster: PgCluster, url: str, tmp_path: Path
) -> None:
    service = service_for(url, tmp_path, async_writes=False, busy_timeout=0.5)
    try:
        first = service.record(action="sync.write", event_id="sync-1")
        own_cluster.stop_now()
        with pytest.raises(AuditWriteError, match=r"sync-2.*127\.0\.0\.1") as failed:
            service.record(action="sync.write", event_id="sync-2")
        assert str(own_cluster.port) in str(failed.value)
        own_cluster.start_again()
        # The connection the server dropped is replaced: the first write after the restart works.
        second = service.record(action="sync.write", event_id="sync-3")
        assert service.close(timeout=TIMEOUT_S)
    finally:
        service.close(timeout=5)
    assert_stored_once(url, [first or "", second or ""])


# The command in a child whose first flush() (the wait for its entries, once standard input
# ended) says so on a pipe, then waits for the test's go: the test stops the server and signals
# meanwhile, so the command waits for a server that is away when SIGTERM comes.
RECORD_CHILD = """
import os, sys
from audit_engine.cli import main
from audit_engine.pipeline.service import AuditService

report, go, database = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
real_flush = AuditService.flush
waited = []

def flush(self, timeout=None):
    if not waited:
        waited.append(True)
        os.write(report, b"F")
        os.read(go, 1)
    return real_flush(self, timeout)

AuditService.flush = flush
main(["--db", database, "record", "--stdin"], prog_name="audit-engine")
"""


def test_record_stdin_stopped_by_sigterm_while_the_server_is_down_keeps_every_entry(
    own_cluster: PgCluster, url: str, tmp_path: Path
) -> None:
    """Waiting for a server that is away is what record does — until SIGTERM: then it waits a
    few seconds more, keeps what the server did not take in the dead-letter file, and ends."""
    dead = tmp_path / "dl.jsonl"
    script = tmp_path / "child.py"
    script.write_text(RECORD_CHILD, encoding="utf-8")
    env = {
        **os.environ,
        "AUDIT_TRAIL_DEADLETTER_PATH": str(dead),
        "AUDIT_TRAIL_BUFFER_FLUSH_INTERVAL": "30",  # nothing commits before the final wait
    }
    report_read, report_write = os.pipe()
    go_read, go_write = os.pipe()
    lines = b"".join(b'{"action": "note.save", "event_id": "down-%d"}\n' % n for n in range(10))
    with subprocess.Popen(
        [sys.executable, str(script), str(report_write), str(go_read), url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=(report_write, go_read),
        env=env,
    ) as proc:
        os.close(report_write)
        os.close(go_read)
        try:
            assert proc.stdin is not None
            proc.stdin.write(lines)
            proc.stdin.close()
            ready, _, _ = select.select([report_read], [], [], TIMEOUT_S)
            assert ready, "the command never waited for its entries"
            assert os.read(report_read, 1) == b"F"
            own_cluster.stop_now()
            proc.send_signal(signal.SIGTERM)
            os.write(go_write, b"g")
            proc.wait(timeout=TIMEOUT_S)  # a few lines of output: the pipes never fill
            assert proc.stdout is not None
            assert proc.stderr is not None
            out, err = proc.stdout.read(), proc.stderr.read()
        finally:
            os.close(report_read)
            os.close(go_write)
            if proc.poll() is None:
                proc.kill()

    assert proc.returncode == -signal.SIGTERM, err
    assert out == b"accepted 10, filtered 0, written 0, dead-lettered 10\n", err
    assert f"kept in {dead}".encode() in err
    assert b"the rest of standard input was not read" not in err  # it was all read
    assert len(dead.read_text().splitlines()) == 10
    own_cluster.start_again()
    with AuditStore(url) as store:
        assert store.replay_dead_letters(dead).replayed == 10
        assert store.verify().ok
