"""Several processes, each with its own AuditService, write one trail — a SQLite file or a
PostgreSQL URL: one valid chain results.

Every writer takes the chain's tail inside its own write transaction (SQLite's write lock,
PostgreSQL's advisory lock), so concurrent batches from different processes can never both chain
from the same row. The children start writing together
(each waits for a line on stdin after saying it is ready); every wait here is bounded.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
from pathlib import Path

from audit_engine import AuditStore

PROCESSES = 4
ENTRIES = 2000
TIMEOUT_S = 120

CHILD = textwrap.dedent(
    """
    import sys

    from audit_engine import AuditService, AuditSettings

    database, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    service = AuditService(
        AuditSettings(
            database=database,
            buffer_max_size=20,
            buffer_flush_interval=0.01,
            cleanup_enabled=False,
            busy_timeout=30,
        )
    )
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(count):
        service.record(action="mp.write", actor=name, event_id=f"{name}-{i:05d}", details={"i": i})
        if i % 50 == 49:  # let the other processes take the lock in between
            assert service.flush(60)
    drained = service.close(timeout=90)
    stats = service.stats()
    print(drained, stats.written, stats.dead_lettered, stats.last_error, flush=True)
    sys.exit(0 if drained and stats.written == count and stats.dead_lettered == 0 else 1)
    """
)


def test_processes_writing_one_trail_extend_one_valid_chain(trail_db: Path | str) -> None:
    names = [f"p{n}" for n in range(PROCESSES)]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(trail_db), name, str(ENTRIES)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    outputs: list[tuple[str, str]] = []
    try:
        for child in children:
            assert child.stdout is not None
            # Bounded: a child that dies closes its stdout and readline() returns "".
            assert child.stdout.readline() == "ready\n"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        outputs = [child.communicate(timeout=TIMEOUT_S) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(TIMEOUT_S)

    for child, (out, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, (out, err)
        assert out.startswith(f"True {ENTRIES} 0 None"), (out, err)

    with AuditStore(trail_db) as audit:
        stored = audit.entries_after(0, limit=PROCESSES * ENTRIES + 1)
    rows = [(row_id, entry.event_id, entry.actor) for row_id, entry in stored]
    assert len(rows) == PROCESSES * ENTRIES
    assert [row[0] for row in rows] == list(range(1, PROCESSES * ENTRIES + 1))
    event_ids = [row[1] for row in rows]
    assert sorted(event_ids) == sorted(f"{name}-{i:05d}" for name in names for i in range(ENTRIES))
    # The premise of the test: the processes' batches really did interleave in the file.
    switches = sum(1 for before, row in itertools.pairwise(rows) if before[2] != row[2])
    assert switches >= PROCESSES, switches
    for name in names:  # each process's entries are stored in the order it recorded them
        own = [event_id for event_id, actor in ((r[1], r[2]) for r in rows) if actor == name]
        assert own == [f"{name}-{i:05d}" for i in range(ENTRIES)]

    with AuditStore(trail_db) as audit:
        report = audit.verify()
        head = audit.head()
    assert report.ok is True, report.reason
    assert report.rows_checked == PROCESSES * ENTRIES
    assert report.head == head
    assert head is not None
    assert head.id == PROCESSES * ENTRIES
