"""Many processes append one PostgreSQL chain: the advisory lock keeps it linear. (Several
services writing one trail is tests/reliability/test_multiprocess_chain.py, on both backends.)

Each child is its own AuditService (or its own `audit-engine record` process) on one URL; the
children start together (each waits for a line on stdin after saying it is ready) and write in
small batches, so their transactions interleave. Every wait is bounded by a timeout or a
process exit, never by a sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import psycopg

from audit_engine import AuditStore

PROCESSES = 3
ENTRIES = 2000
CLI_ENTRIES = 200
TIMEOUT_S = 120

CHILD = textwrap.dedent(
    """
    import sys

    from audit_engine import AuditService, AuditSettings

    url, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    service = AuditService(
        AuditSettings(
            database=url,
            buffer_max_size=25,
            buffer_flush_interval=0.005,
            cleanup_enabled=False,
            deadletter_path=sys.argv[4],
        )
    )
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(count):
        service.record(action="mp.write", actor=name, event_id=f"{name}-{i:05d}", details={"i": i})
        if i % 100 == 99:  # commit now and then: the other processes take the lock in between
            assert service.flush(60)
            print(f"flushed {i + 1}", flush=True)
    drained = service.close(timeout=60)
    stats = service.stats()
    print("done", drained, stats.written, stats.dead_lettered, stats.last_error, flush=True)
    sys.exit(0 if drained and stats.written == count and stats.dead_lettered == 0 else 1)
    """
)


@contextmanager
def children(
    commands: Sequence[Sequence[str]], **popen: object
) -> Iterator[list[subprocess.Popen[str]]]:
    """Start the processes; whatever happens, none outlives the block."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for command in commands:
            procs.append(
                subprocess.Popen(  # type: ignore[call-overload]
                    list(command),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    **popen,
                )
            )
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)


def start_together(procs: Sequence[subprocess.Popen[str]]) -> None:
    for proc in procs:
        assert proc.stdout is not None
        # Bounded: a child that dies closes its stdout and readline() returns "".
        line = proc.stdout.readline()
        assert line == "ready\n", (line, proc.stderr.read() if proc.poll() is not None else "")
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()


def stored_event_ids(url: str) -> list[str]:
    with psycopg.connect(url, connect_timeout=10) as conn:
        return [row[0] for row in conn.execute("SELECT event_id FROM audit_entries ORDER BY id")]


def assert_one_valid_chain(url: str, expected: set[str]) -> None:
    store = AuditStore(url)
    try:
        report = store.verify()
        assert report.ok, report
        assert store.count() == len(expected)
    finally:
        store.close()
    ids = stored_event_ids(url)
    assert len(ids) == len(set(ids))  # no entry twice
    assert set(ids) == expected


def child_command(url: str, name: str, count: int, dl_path: str) -> list[str]:
    return [sys.executable, "-c", CHILD, url, name, str(count), dl_path]


def test_three_cli_record_processes_on_one_url(pg_url: str, tmp_path) -> None:
    names = [f"cli{n}" for n in range(PROCESSES)]
    env = {**os.environ, "AUDIT_TRAIL_DEADLETTER_PATH": str(tmp_path / "cli.dl")}
    env.update(AUDIT_TRAIL_BUFFER_MAX_SIZE="10", AUDIT_TRAIL_CLEANUP_ENABLED="false")
    inputs = {
        name: "".join(
            json.dumps({"action": "cli.write", "actor": name, "event_id": f"{name}-{i:04d}"}) + "\n"
            for i in range(CLI_ENTRIES)
        )
        for name in names
    }
    cli = os.path.join(os.path.dirname(sys.executable), "audit-engine")
    commands = [[cli, "--db", pg_url, "record", "--stdin"] for _ in names]
    with children(commands, env=env) as procs:
        # All three are started before any gets its input: they run at the same time.
        outputs = [
            proc.communicate(inputs[name], timeout=TIMEOUT_S)
            for name, proc in zip(names, procs, strict=True)
        ]
        codes = [proc.returncode for proc in procs]
    assert codes == [0] * PROCESSES, outputs
    expected = {f"{name}-{i:04d}" for name in names for i in range(CLI_ENTRIES)}
    assert_one_valid_chain(pg_url, expected)


def test_kill_9_of_a_writer_leaves_a_valid_chain_and_no_lock(pg_url: str, tmp_path) -> None:
    commands = [
        child_command(pg_url, "victim", 100_000, str(tmp_path / "victim.dl")),
        child_command(pg_url, "other", ENTRIES, str(tmp_path / "other.dl")),
    ]
    with children(commands) as procs:
        victim, other = procs
        start_together(procs)
        assert victim.stdout is not None
        # Killed once it has committed some batches and is busy writing more.
        for _ in range(3):
            assert victim.stdout.readline().startswith("flushed")
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL
        # The other process keeps appending after the kill and finishes cleanly.
        out, err = other.communicate(timeout=TIMEOUT_S)
        assert other.returncode == 0, (out, err)
    # What the victim committed verifies together with everything the other one wrote.
    ids = stored_event_ids(pg_url)
    victims = {eid for eid in ids if eid.startswith("victim-")}
    assert len(victims) >= 300
    # The victim's entries are a prefix of its sequence: batches commit in order, whole or
    # not at all.
    assert victims == {f"victim-{i:05d}" for i in range(len(victims))}
    assert_one_valid_chain(pg_url, victims | {f"other-{i:05d}" for i in range(ENTRIES)})
    # No advisory lock outlives the killed session: a new writer's transaction gets it at once.
    with psycopg.connect(pg_url, autocommit=True, connect_timeout=10) as conn:
        held = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()
        assert held == (0,)
        conn.execute("SET lock_timeout = '2s'")  # a held lock fails fast instead of hanging
        with conn.transaction():
            got = conn.execute(
                "SELECT pg_try_advisory_xact_lock(%s, 'audit_entries'::regclass::oid::int)",
                (0x41554454,),
            ).fetchone()
            assert got == (True,)
    with children([child_command(pg_url, "late", 50, str(tmp_path / "late.dl"))]) as (late,):
        start_together([late])
        out, err = late.communicate(timeout=60)
        assert late.returncode == 0, (out, err)
    assert_one_valid_chain(
        pg_url,
        victims | {f"other-{i:05d}" for i in range(ENTRIES)} | {f"late-{i:05d}" for i in range(50)},
    )
