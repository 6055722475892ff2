"""Checks, each in its own session. `nox` runs the default ones; `nox -s bench` runs asv."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typing", "tests", "features"]
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True

PYTHON = "3.11"


def _install(session: nox.Session) -> None:
    session.install("-e", ".[dev]")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """pytest with coverage of audit_engine; fails under 97 %."""
    _install(session)
    session.run(
        "pytest",
        "--cov=audit_engine",
        "--cov-report=term-missing:skip-covered",
        "--cov-fail-under=97",
        *session.posargs,
    )


@nox.session(python=PYTHON)
def features(session: nox.Session) -> None:
    """behave scenarios in features/: on SQLite, then on a throwaway PostgreSQL server."""
    _install(session)
    session.run("behave", "--format=progress", "--no-capture", "features", *session.posargs)
    # The same scenarios again, each on a fresh database of a throwaway cluster (@sqlite_only
    # ones are skipped there by design, with the reason in the output).
    session.run(
        "behave",
        "--format=progress",
        "--no-capture",
        "-D",
        "backend=postgres",
        "features",
        *session.posargs,
    )


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typing(session: nox.Session) -> None:
    """mypy --strict on the package."""
    _install(session)
    session.run("mypy", "--strict", "audit_engine")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """The asv suite, once, against the working tree (`asv run --python=same --quick`)."""
    _install(session)
    session.chdir("benchmarks")
    session.run("asv", "machine", "--yes")
    session.run(
        "asv",
        "run",
        "--python=same",
        "--quick",
        "--show-stderr",
        "--set-commit-hash",
        _head(session),
    )


def _head(session: nox.Session) -> str:
    out = session.run("git", "rev-parse", "HEAD", silent=True, external=True)
    return str(out).strip()
