"""``record`` and SIGTERM (review D9): what it accepted is committed, then it dies by the signal.

``systemctl stop``, ``timeout`` or a cancelled CI job end ``audit-engine record --stdin`` with
SIGTERM; its default action lost every entry still queued. Each test runs the real command in a
child process whose ``AuditService.record`` reports each accepted entry on a pipe, so the test
knows exactly when to send the signal. Every wait has a deadline; children are killed in a
``finally``.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Cli

CHILD_TIMEOUT_S = 30.0

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from audit_engine.cli import main
    from audit_engine.pipeline.service import AuditService

    report, kill_after, database = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    real_record = AuditService.record
    recorded = 0

    def record(self, *args, **kwargs):
        global recorded
        result = real_record(self, *args, **kwargs)
        recorded += 1
        os.write(report, b"+")
        if recorded == kill_after:  # the signal lands while the command is not reading
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    AuditService.record = record
    main(["--db", database, "record", "--stdin"], prog_name="audit-engine")
    """
)


def _actions(database: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(database)) as conn:
        return [row[0] for row in conn.execute("SELECT action FROM audit_entries ORDER BY id")]


@contextlib.contextmanager
def _record_child(
    tmp_path: Path, database: Path, kill_after: int = 0
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``audit-engine record --stdin`` in a child; yields it and the read end of its report."""
    script = tmp_path / "child.py"
    script.write_text(CHILD, encoding="utf-8")
    read_end, write_end = os.pipe()
    env = {**os.environ, "AUDIT_TRAIL_BUFFER_FLUSH_INTERVAL": "30"}  # nothing commits early
    proc = subprocess.Popen(
        [sys.executable, str(script), str(write_end), str(kill_after), str(database)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=(write_end,),
        env=env,
    )
    os.close(write_end)
    try:
        yield proc, read_end
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=CHILD_TIMEOUT_S)
        os.close(read_end)


def _await_records(read_end: int, count: int) -> None:
    """Wait (bounded) until the child reported ``count`` accepted entries."""
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    seen = 0
    while seen < count:
        ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            pytest.fail(f"the child accepted {seen} entries within {CHILD_TIMEOUT_S}s")
        chunk = os.read(read_end, 64)
        if not chunk:
            pytest.fail(f"the child ended after accepting {seen} entries")
        seen += len(chunk)


def test_sigterm_while_reading_stdin_commits_what_was_accepted_then_dies_by_it(
    tmp_path: Path, db_path: Path
) -> None:
    with _record_child(tmp_path, db_path) as (proc, report):
        assert proc.stdin is not None
        proc.stdin.write(b"".join(b'{"action": "term%d"}\n' % i for i in (1, 2, 3)))
        proc.stdin.flush()  # standard input stays open: the command waits for more
        _await_records(report, 3)

        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=CHILD_TIMEOUT_S)

    assert proc.returncode == -signal.SIGTERM
    assert stdout == b"accepted 3, filtered 0, written 3\n"
    assert stderr == b"Stopped by SIGTERM: the rest of standard input was not read\n"
    assert _actions(db_path) == ["term1", "term2", "term3"]


def test_sigterm_while_recording_finishes_that_line_and_reads_no_more(
    tmp_path: Path, db_path: Path
) -> None:
    with _record_child(tmp_path, db_path, kill_after=2) as (proc, report):
        assert proc.stdin is not None
        proc.stdin.write(b"".join(b'{"action": "term%d"}\n' % i for i in (1, 2, 3)))
        proc.stdin.flush()
        _await_records(report, 2)
        stdout, stderr = proc.communicate(timeout=CHILD_TIMEOUT_S)

    assert proc.returncode == -signal.SIGTERM
    assert stdout == b"accepted 2, filtered 0, written 2\n"
    assert stderr == b"Stopped by SIGTERM: the rest of standard input was not read\n"
    assert _actions(db_path) == ["term1", "term2"]


def test_record_puts_the_sigterm_handling_back_when_it_is_done(cli: Cli) -> None:
    before = signal.getsignal(signal.SIGTERM)

    cli.run("record", "--action", "a")
    cli.run("record", "--stdin", input='{"action": "b"}\n')

    assert signal.getsignal(signal.SIGTERM) is before
