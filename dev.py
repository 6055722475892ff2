#!/usr/bin/env python3
"""Bootstrap and run the project with nothing but python3 (standard library only).

    python3 dev.py demo [ARGS]   set up .venv, then run `audit-engine demo ARGS` (the main job)
    python3 dev.py check [ARGS]  set up .venv, then run every check through nox (tests with
                                 coverage, behave, ruff, mypy); ARGS go to nox, e.g. `-s tests`

The virtual environment lives in ./.venv and is reused; it is refreshed when pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".audit-engine-installed"


def _run(*args: str | os.PathLike[str]) -> None:
    result = subprocess.run([os.fspath(a) for a in args], cwd=ROOT, check=False)
    if result.returncode != 0:
        sys.exit(result.returncode)


def ensure_venv() -> None:
    """Create .venv and install the project with its dev extra, unless already up to date."""
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not (BIN / "python").exists():
        print("dev.py: creating .venv", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    print("dev.py: installing audit-engine and its dev tools into .venv", flush=True)
    _run(
        BIN / "python",
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--upgrade",
        "pip",
    )
    _run(
        BIN / "python",
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "-e",
        ".[dev]",
    )
    STAMP.write_text(wanted)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "check"}:
        print(__doc__, file=sys.stderr)
        return 2
    ensure_venv()
    command, rest = argv[0], argv[1:]
    if command == "demo":
        return subprocess.call([os.fspath(BIN / "audit-engine"), "demo", *rest], cwd=ROOT)
    return subprocess.call([os.fspath(BIN / "nox"), *rest], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
