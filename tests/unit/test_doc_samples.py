"""Every code sample in README.md and docs/*.md runs as written.

Per file, in document order, in a fresh directory: the ```python blocks share one namespace (a
later block uses what an earlier one defined, as a reader following along would), and each
``audit-engine ...`` line of a ```sh block runs as the real command (``python -m audit_engine``)
and must exit 0. Other shell lines (pip, jq, sqlite3, export, nox, asv) are the reader's own tools
and are not run. Each file runs in its own process with a time limit, so a sample that installs
signal handlers or leaves a service open affects nothing else.

Some pages start from a situation they describe rather than build (a trail that already holds
entries, a dead-letter file to look at): ``SITUATIONS`` sets that up before the page runs.

A page's samples that name the docs' example server (:data:`EXAMPLE_URL`) run against a real one:
the URL is replaced by a fresh database on the test session's throwaway PostgreSQL.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from audit_engine import AuditService, AuditSettings

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Under pytest-timeout's 120 s, so the child is killed here and the failure names the page.
TIME_LIMIT_S = 100.0
_FENCE = re.compile(r"^```(\S*)\s*$")
# The team server of the docs' PostgreSQL samples.
EXAMPLE_URL = "postgresql://audit@db.example.internal:5432/audit"


def samples(page: Path) -> list[tuple[str, int, str]]:
    """The page's runnable samples in order: (``python`` or ``sh``, first line number, text)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found = []
    number = 0
    while number < len(lines):
        match = _FENCE.match(lines[number])
        if not match:
            number += 1
            continue
        end = number + 1
        while not lines[end].startswith("```"):
            end += 1
        language = match.group(1)
        if language in ("python", "sh"):
            found.append((language, number + 2, "\n".join(lines[number + 1 : end]) + "\n"))
        number = end + 1
    return found


# Runs inside the child process: argv[1] is a JSON file of (language, line, text) samples. The
# samples run in __main__'s own namespace, as a script would: a Pool pickles a sample's function
# as __main__.<name>. The runner's own names start with an underscore and live in a function.
_RUNNER = r"""
import json as _json, shlex as _shlex, subprocess as _subprocess, sys as _sys
import traceback as _traceback


def _run_samples(spec):
    page, samples = _json.load(open(spec, encoding="utf-8"))
    namespace = _sys.modules["__main__"].__dict__
    for language, line, text in samples:
        where = f"{page}, the {language} sample at line {line}"
        if language == "python":
            try:
                exec(compile(text, where, "exec"), namespace)
            except BaseException:
                print(f"{where} failed:", file=_sys.stderr)
                _traceback.print_exc()
                _sys.exit(1)
            continue
        for command in text.replace("\\\n", " ").splitlines():
            argv = _shlex.split(command, comments=True)
            if not argv or argv[0] != "audit-engine":
                continue
            done = _subprocess.run(
                [_sys.executable, "-m", "audit_engine", *argv[1:]],
                capture_output=True, text=True, timeout=60, check=False,
            )
            if done.returncode != 0 or "Traceback" in done.stderr:
                print(f"{where}: `{command.strip()}` exited {done.returncode}:\n{done.stdout}"
                      f"{done.stderr}", file=_sys.stderr)
                _sys.exit(1)


_run_samples(_sys.argv[1])
"""


def _trail(directory: Path, name: str, count: int = 3) -> None:
    settings = AuditSettings(database=directory / name, level="all", cleanup_enabled=False)
    with AuditService(settings) as audit:
        for number in range(count):
            audit.record(action="note.save", actor="alice", resource_id=str(number))


def _trail_with_dead_letters(directory: Path) -> None:
    """notes-audit.db, and entries the writer set aside (a reused event_id) beside it."""
    _trail(directory, "notes-audit.db")
    settings = AuditSettings(database=directory / "notes-audit.db", cleanup_enabled=False)
    with AuditService(settings) as audit:
        for _ in range(2):  # the same entry twice: its replay finds it already stored
            audit.record(action="note.save", event_id="evt-1", timestamp="2026-01-01T00:00:00Z")
    assert audit.stats().dead_lettered == 1


SITUATIONS: dict[str, Callable[[Path], None]] = {
    # "What is in the dead-letter file": the page starts from one.
    "troubleshooting.md": _trail_with_dead_letters,
    # Verifying and exporting "audit.db": a trail the application already wrote.
    "integrity.md": lambda directory: _trail(directory, "audit.db"),
}


def test_every_page_is_found() -> None:
    assert {page.name for page in PAGES} >= {"README.md", "getting-started.md", "cli.md"}


def test_samples_reads_python_and_sh_blocks_in_order(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "text\n```python\nx = 1\n```\n```text\nnot run\n```\n```sh\naudit-engine init\n```\n",
        encoding="utf-8",
    )

    assert samples(page) == [("python", 3, "x = 1\n"), ("sh", 9, "audit-engine init\n")]


# Pages without a python or sh block (reference text only) have nothing to run.
SAMPLE_PAGES = [page for page in PAGES if samples(page)]


def test_the_pages_with_samples_include_the_ones_users_copy_from() -> None:
    names = {page.name for page in SAMPLE_PAGES}
    assert names >= {
        "README.md",
        "getting-started.md",
        "guarantees.md",
        "integrity.md",
        "integrations.md",
    }


@pytest.mark.parametrize("page", SAMPLE_PAGES, ids=[page.name for page in SAMPLE_PAGES])
def test_the_samples_of_a_page_run_as_written(
    page: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    found = samples(page)
    if any(EXAMPLE_URL in text for _, _, text in found):
        url = request.getfixturevalue("pg_url")
        found = [(language, line, text.replace(EXAMPLE_URL, url)) for language, line, text in found]
    workdir = tmp_path / "reader"
    workdir.mkdir()
    situation = SITUATIONS.get(page.name)
    if situation is not None:
        situation(workdir)
    spec = tmp_path / "samples.json"
    spec.write_text(json.dumps([page.name, found]), encoding="utf-8")
    # The reader's environment: no AUDIT_TRAIL_* setting of the machine running the tests.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_TRAIL_")}

    try:
        done = subprocess.run(
            [sys.executable, "-c", _RUNNER, str(spec)],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIME_LIMIT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"{page.name}: the samples ran over {TIME_LIMIT_S}s\n{expired.stderr!r}")

    assert done.returncode == 0, done.stderr
