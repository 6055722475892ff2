"""Security: private files, filters that are values (never SQL), secrets that never hit the disk.

* Every file the engine creates (database, ``-wal``, ``-shm``, dead-letter file and its lock, a
  rewritten dead-letter file) is readable by its owner only, even under ``umask 000``.
* CLI filters holding SQL or ``LIKE`` wildcards match only entries whose field is exactly that text,
  and the table survives them.
* Redacted ``details`` keys never reach the database, its WAL, the dead-letter file or the log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from support import rows_of

from audit_engine import AuditEntry, AuditService, AuditStore
from audit_engine.cli import main
from audit_engine.pipeline.policy import REDACTED
from audit_engine.storage import deadletter
from audit_engine.storage import sqlite as store
from audit_engine.storage.sqlite import schema

MakeService = Callable[..., AuditService]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """``umask 000`` for the test: a file is private only if the engine asked for 0600."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def _cli(db_path: Path, *args: str, code: int = 0, input: str | None = None) -> Result:
    result = CliRunner().invoke(main, ["--db", str(db_path), *args], input=input)
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


# -- private files ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("open_umask")
@pytest.mark.parametrize("async_writes", [True, False], ids=["async", "sync"])
def test_database_wal_shm_and_dead_letter_files_are_created_private(
    make_service: MakeService, db_path: Path, async_writes: bool
) -> None:
    service = make_service(async_writes=async_writes, cleanup_enabled=False)
    service.record(action="file.mode", event_id="same")
    assert service.flush(10)
    files = [db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")]
    for path in files:
        assert path.exists(), path
        assert _mode(path) == 0o600, (path, oct(_mode(path)))
    if async_writes:
        service.record(action="file.mode", event_id="same")  # UNIQUE: dead-lettered
        assert service.flush(10)
        assert service.stats().dead_lettered == 1
        dead = deadletter.path_for(db_path)
        for path in (dead, Path(f"{dead}.lock")):
            assert path.exists(), path
            assert _mode(path) == 0o600, (path, oct(_mode(path)))
    assert service.close(10) is True


@pytest.mark.usefixtures("open_umask")
def test_files_made_by_the_cli_and_by_a_replay_rewrite_are_private(tmp_path: Path) -> None:
    created = tmp_path / "init.db"
    _cli(created, "init")
    assert _mode(created) == 0o600
    recorded = tmp_path / "record.db"
    _cli(recorded, "record", "--action", "cli.record", "--operation", "update")
    assert _mode(recorded) == 0o600

    # A dead-letter file with one unreadable line: a replay rewrites it (keeping that line).
    dead = deadletter.path_for(created)
    good = AuditEntry(action="replayed")
    lines = [
        json.dumps({"entry": good.model_dump(mode="json"), "error": "x", "failed_at": "t"}),
        "{not json",
    ]
    dead.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.chmod(dead, 0o600)
    with AuditStore(created) as audit_store:
        report = audit_store.replay_dead_letters()
    assert (report.replayed, report.kept) == (1, 1)
    assert dead.read_text(encoding="utf-8") == "{not json\n"
    assert _mode(dead) == 0o600


@pytest.mark.usefixtures("open_umask")
def test_wal_and_shm_of_an_existing_private_database_are_private(db_path: Path) -> None:
    store.open_connection(db_path).close()
    for leftover in (Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
        leftover.unlink(missing_ok=True)
    assert _mode(db_path) == 0o600

    conn = store.open_connection(db_path)  # SQLite gives new -wal/-shm files the db's mode
    try:
        store.write_batch(conn, rows_of([AuditEntry(action="s.wal")]))
        modes = {p.name[len(db_path.name) :]: _mode(p) for p in _trail_files(db_path)}
    finally:
        conn.close()

    assert modes == {"": 0o600, "-wal": 0o600, "-shm": 0o600}


def _trail_files(db_path: Path) -> list[Path]:
    paths = [db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")]
    return [p for p in paths if p.exists()]


def test_a_private_trail_has_no_permission_warning(db_path: Path) -> None:
    store.open_connection(db_path).close()

    assert schema.loose_permissions(db_path) is None
    assert schema.loose_permissions(db_path.with_name("missing.db")) is None


@pytest.mark.parametrize(
    ("modes", "listed"),
    [
        ({"": 0o644}, "audit.db has mode 0644"),
        ({"": 0o600, "-wal": 0o666}, "audit.db-wal has mode 0666"),
        ({"": 0o640, "-shm": 0o602}, "audit.db has mode 0640, audit.db-shm has mode 0602"),
    ],
)
def test_a_trail_readable_or_writable_by_others_is_reported(
    db_path: Path, modes: dict[str, int], listed: str
) -> None:
    # Issue 11 item 23: an existing world-readable trail kept its mode without a word.
    for suffix, mode in modes.items():
        path = Path(f"{db_path}{suffix}")
        path.touch()
        path.chmod(mode)

    assert schema.loose_permissions(db_path) == (
        f"the audit trail {db_path} can be read or written by other users ({listed}); it holds "
        f"sensitive data: chmod 600 {db_path}*"
    )


def test_a_loose_trail_is_logged_once_when_opened(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store.open_connection(db_path).close()
    db_path.chmod(0o644)

    with caplog.at_level(logging.WARNING, logger="audit_engine"):
        for _ in range(3):
            store.open_connection(db_path).close()
        with AuditStore(db_path) as reader:
            reader.count()

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    # Opened, the -wal and -shm files exist too, with the database's mode.
    assert warnings[0] == (
        f"the audit trail {db_path} can be read or written by other users (audit.db has mode "
        "0644, audit.db-wal has mode 0644, audit.db-shm has mode 0644); it holds sensitive "
        f"data: chmod 600 {db_path}*"
    )
    assert _mode(db_path) == 0o644  # reported, not changed behind the operator's back


# -- CLI filters are values, not SQL ---------------------------------------------------------------

STORED_VALUES = ["alice", "bob", "abc", "a_c", "50%", "%", "' OR 1=1 --"]
PAYLOADS = [
    "' OR 1=1 --",
    "x'; DROP TABLE audit_entries; --",
    '" OR ""="',
    "%",
    "_",
    "a_c",
    "a%",
    "*",
    "alice' --",
    "alice\\",
    "1; SELECT * FROM audit_anchors",
]
FILTERS = {
    "--actor": "actor",
    "--action": "action",
    "--resource-type": "resource_type",
    "--resource-id": "resource_id",
    "--correlation-id": "correlation_id",
}


@pytest.fixture
def filled(make_service: MakeService, db_path: Path) -> dict[str, str]:
    """One entry per stored value, with that value in every filterable field."""
    service = make_service(cleanup_enabled=False)
    ids = {
        value: service.record(
            actor=value,
            action=value,
            operation="update",
            resource_type=value,
            resource_id=value,
            correlation_id=value,
        )
        for value in STORED_VALUES
    }
    assert service.close(10) is True
    assert all(ids.values())
    return {value: str(event_id) for value, event_id in ids.items()}


@pytest.mark.parametrize("option", list(FILTERS))
def test_cli_filters_holding_sql_or_wildcards_match_only_equal_values(
    filled: dict[str, str], db_path: Path, option: str
) -> None:
    field = FILTERS[option]
    for payload in PAYLOADS:
        expected = [filled[payload]] if payload in filled else []
        result = _cli(db_path, "query", "--format", "jsonl", option, payload)
        got = [json.loads(line) for line in result.output.splitlines()]
        assert [e["event_id"] for e in got] == expected, (option, payload)
        assert all(e[field] == payload for e in got)
        exported = _cli(db_path, "export", option, payload).output.splitlines()
        assert [json.loads(line)["event_id"] for line in exported] == expected, (option, payload)
    # The table, its rows and its chain are intact.
    assert _cli(db_path, "verify").output.startswith(f"OK: {len(STORED_VALUES)} rows verified")
    with AuditStore(db_path) as audit_store:
        assert audit_store.count() == len(STORED_VALUES)


def test_sql_in_time_and_limit_options_is_refused_as_usage_error(
    filled: dict[str, str], db_path: Path
) -> None:
    for args in (
        ["--since", "1 OR 1=1"],
        ["--until", "'; DROP TABLE audit_entries; --"],
        ["--limit", "1; DROP TABLE audit_entries"],
    ):
        result = _cli(db_path, "query", *args, code=2)
        assert "Traceback" not in result.output
    with AuditStore(db_path) as audit_store:
        assert audit_store.count() == len(STORED_VALUES)


# -- redacted secrets never reach a file -----------------------------------------------------------

SECRETS = {
    "password": "pw-7c1e-SECRET",
    "API-Key": "ak-51f0-SECRET",
    "Token": "tk-9d22-SECRET",
    "authorization": "Bearer az-0b7a-SECRET",
    "client_secret": "cs-33aa-SECRET",
    "credit_card": "4111-1111-1111-1111",
}
VISIBLE = "visible-e3b0-marker"


def _details(tag: str) -> dict[str, Any]:
    """Secrets at the top level, nested in an object, inside a list, plus one visible value."""
    return {
        "password": SECRETS["password"],
        "user": {"API-Key": SECRETS["API-Key"], "name": f"{VISIBLE}-{tag}"},
        "sessions": [{"Token": SECRETS["Token"]}, {"authorization": SECRETS["authorization"]}],
        "oauth": [[{"client_secret": SECRETS["client_secret"]}]],
        "credit_card": SECRETS["credit_card"],
    }


def _raw(*paths: Path) -> bytes:
    return b"".join(p.read_bytes() for p in paths if p.exists())


def _assert_no_secret(data: bytes | str, where: str) -> None:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    for key, secret in SECRETS.items():
        assert secret.encode("utf-8") not in raw, f"{key}'s value found in {where}"


def test_redacted_values_never_reach_the_database_wal_dead_letters_or_log(
    make_service: MakeService, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = make_service(cleanup_enabled=False, buffer_max_size=4)
    sync_service = make_service(async_writes=False, cleanup_enabled=False)
    wal = Path(f"{db_path}-wal")
    with caplog.at_level(logging.DEBUG, logger="audit_engine"):
        service.record(action="s.async", operation="update", details=_details("a"))
        service.record(AuditEntry(action="s.model", operation="update", details=_details("m")))
        service.record(action="s.critical", critical=True, details=_details("c"))
        sync_service.record(action="s.sync", operation="update", details=_details("s"))
        # A real write failure (repeated event_id): this entry goes to the dead-letter file.
        first = service.record(action="s.first", operation="update", event_id="dup")
        service.record(action="s.dead", operation="update", event_id="dup", details=_details("d"))
        assert first == "dup"
        assert service.flush(10)
        assert service.stats().dead_lettered == 1

        dead = deadletter.path_for(db_path)
        on_disk = _raw(db_path, wal)
        assert VISIBLE.encode() in on_disk  # the grep does see plain text in these files
        _assert_no_secret(on_disk, "the database or its WAL")
        dead_bytes = dead.read_bytes()
        assert f"{VISIBLE}-d".encode() in dead_bytes
        assert REDACTED.encode() in dead_bytes
        _assert_no_secret(dead_bytes, "the dead-letter file")

        assert service.close(10) is True
        assert sync_service.close(10) is True
    _assert_no_secret(_raw(db_path, wal, Path(f"{db_path}-shm")), "the database after close")
    _assert_no_secret(caplog.text, "the log")
    with AuditStore(db_path) as audit_store:
        stored = {e.action: e.details for e in audit_store.query()}
    assert stored["s.async"]["password"] == REDACTED
    assert stored["s.sync"]["user"] == {"API-Key": REDACTED, "name": f"{VISIBLE}-s"}
    assert stored["s.critical"]["sessions"] == [{"Token": REDACTED}, {"authorization": REDACTED}]
    assert stored["s.model"]["oauth"] == [[{"client_secret": REDACTED}]]


def test_redacted_values_do_not_leak_when_the_dead_letter_file_is_unwritable(
    make_service: MakeService, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    deadletter.path_for(db_path).mkdir()  # appends fail: entries are logged at CRITICAL
    service = make_service(cleanup_enabled=False)
    with caplog.at_level(logging.DEBUG, logger="audit_engine"):
        service.record(action="s.first", operation="update", event_id="dup")
        service.record(action="s.lost", operation="update", event_id="dup", details=_details("l"))
        # An entry only in the log is not safe: flush and close say so (issue 11 item 8).
        assert service.flush(10) is False
        assert service.close(10) is False
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(logged) == 1
    assert f"{VISIBLE}-l" in logged[0]  # the entry is in the log ...
    _assert_no_secret(caplog.text, "the log")  # ... without its secrets
    _assert_no_secret(_raw(db_path, Path(f"{db_path}-wal")), "the database")


def test_sqlite_reads_of_the_raw_table_show_only_redacted_details(
    make_service: MakeService, db_path: Path
) -> None:
    service = make_service(cleanup_enabled=False)
    service.record(action="s.raw", operation="update", details=_details("r"))
    assert service.close(10) is True
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        (details,) = conn.execute("SELECT details FROM audit_entries").fetchone()
    _assert_no_secret(details, "the stored details")
    assert json.loads(details)["password"] == REDACTED
