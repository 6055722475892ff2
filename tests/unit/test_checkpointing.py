"""Signed checkpoints, the writer's side, on both backends: every checkpoint_every entries and at
close they land in the file, the callback and the trail; a failing callback loses nothing; a
restart resumes from the stored frontier; several writers' checkpoints match the tree recomputed
from scratch."""

from __future__ import annotations

import importlib
import json
import os
import resource
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trails

from audit_engine import AuditEntry, AuditService, AuditStore
from audit_engine.errors import SettingsError
from audit_engine.models import SignedCheckpoint
from audit_engine.storage import (
    backends,
    checkpoint_log,
    checkpointing,
    checkpoints,
    keys,
    merkle,
)
from audit_engine.storage.leaves import leaves

NOTE_KEY = keys.SIGNING_NOTE_KEY


@pytest.fixture
def key_files(tmp_path: Path) -> tuple[Path, Path]:
    """(signing.key, signing.pub) of a fresh pair."""
    _, private, public = keys.generate_keys(tmp_path / "keys")
    return private, public


def _service(database: Path | str, key: Path, log: Path | None, **overrides: Any) -> AuditService:
    return AuditService(
        database=database,
        signing_key_file=key,
        checkpoint_file=log,
        cleanup_enabled=False,
        **overrides,
    )


def _all_leaves(database: Path | str) -> list[bytes]:
    conn = backends.open_trail(database)
    try:
        return [data for _, data in leaves(conn, 0)]
    finally:
        conn.close()


def _file_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _check_against_trail(
    database: Path | str, found: list[dict[str, Any]], public_key: Path
) -> None:
    """Each checkpoint's note verifies, and says what the trail recomputed from scratch says."""
    tree = _all_leaves(database)
    hashes = dict(trails.query(database, "SELECT id, hash FROM audit_entries"))
    public = keys.load_public_key(public_key)
    for line in found:
        signed = checkpoints.verify(line["note"], NOTE_KEY, public)
        assert signed.size == line["size"] == line["head_id"]
        assert signed.root == merkle.root(tree[: line["size"]]) == bytes.fromhex(line["root"])
        assert signed.head == f"{line['head_id']} {hashes[line['head_id']]}"
        assert signed.origin == f"audit-engine/{line['trail_id']}"


def test_checkpoints_every_n_entries_and_at_close_land_everywhere(
    trail_db: Path | str, tmp_path: Path, key_files: tuple[Path, Path]
) -> None:
    log = tmp_path / "checkpoints.jsonl"
    got: list[SignedCheckpoint] = []
    service = _service(trail_db, key_files[0], log, checkpoint_every=5, on_checkpoint=got.append)
    for count in (5, 5, 2):
        for n in range(count):
            service.record(action="a", resource_id=str(n))
        assert service.flush(10)
    assert service.close(10)

    lines = _file_lines(log)
    assert [line["size"] for line in lines] == [5, 10, 12]
    assert [c.model_dump() for c in got] == lines
    assert list(lines[0]) == ["trail_id", "size", "head_id", "head_hash", "root", "time", "note"]
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    _check_against_trail(trail_db, lines, key_files[1])
    stored = trails.query(
        trail_db, "SELECT head_id, head_hash, tree_size, root, note FROM audit_checkpoints"
    )
    assert sorted(stored) == [
        (c["head_id"], c["head_hash"], c["size"], c["root"], c["note"]) for c in lines
    ]
    stats = service.stats()
    assert (stats.checkpoints, stats.checkpoint_failures) == (3, 0)


def test_a_callback_that_raises_loses_nothing_and_is_counted(
    trail_db: Path | str, tmp_path: Path, key_files: tuple[Path, Path]
) -> None:
    def broken(checkpoint: SignedCheckpoint) -> None:
        raise RuntimeError("the witness is down")

    log = tmp_path / "checkpoints.jsonl"
    service = _service(trail_db, key_files[0], log, checkpoint_every=3, on_checkpoint=broken)
    for n in range(7):
        service.record(action="a", resource_id=str(n))
        if n % 3 == 2:
            assert service.flush(10)
    assert service.close(10)

    stats = service.stats()
    assert stats.written == 7
    assert stats.checkpoint_callback_failures == stats.checkpoints == 3
    assert [line["size"] for line in _file_lines(log)][-1] == 7
    assert trails.query(trail_db, "SELECT count(*) FROM audit_checkpoints") == [
        (stats.checkpoints,)
    ]


def test_a_checkpoint_file_that_cannot_be_written_is_counted(
    trail_db: Path | str, tmp_path: Path, key_files: tuple[Path, Path]
) -> None:
    log = tmp_path / "a-directory"
    got: list[SignedCheckpoint] = []
    service = _service(trail_db, key_files[0], log, on_checkpoint=got.append)
    log.mkdir()  # after the start, which refuses a directory
    service.record(action="a")
    assert service.close(10)
    stats = service.stats()
    assert (stats.written, stats.checkpoints, stats.checkpoint_failures) == (1, 1, 1)
    assert [c.size for c in got] == [1]


def test_a_restart_resumes_from_the_stored_frontier(
    trail_db: Path | str, tmp_path: Path, key_files: tuple[Path, Path]
) -> None:
    log = tmp_path / "checkpoints.jsonl"
    first = _service(trail_db, key_files[0], log)
    for n in range(40):
        first.record(action="a", resource_id=str(n))
    assert first.close(10)

    second = _service(trail_db, key_files[0], log)
    for n in range(3):
        second.record(action="b", resource_id=str(n))
    assert second.close(10)

    assert second.writer is not None
    assert second.writer.checkpointer is not None
    assert second.writer.checkpointer.leaves_read == 3  # not the 40 before its checkpoint
    assert [line["size"] for line in _file_lines(log)] == [40, 43]
    _check_against_trail(trail_db, _file_lines(log), key_files[1])


def test_a_stored_checkpoint_of_another_key_is_not_a_starting_point(
    trail_db: Path | str, tmp_path: Path, key_files: tuple[Path, Path]
) -> None:
    log = tmp_path / "checkpoints.jsonl"
    _, other_key, _ = keys.generate_keys(tmp_path / "other")
    first = _service(trail_db, other_key, log)
    for n in range(6):
        first.record(action="a", resource_id=str(n))
    assert first.close(10)

    second = _service(trail_db, key_files[0], log)
    second.record(action="b")
    assert second.close(10)
    assert second.writer is not None
    assert second.writer.checkpointer is not None
    assert second.writer.checkpointer.leaves_read == 7
    _check_against_trail(trail_db, _file_lines(log)[1:], key_files[1])


def test_after_a_purge_the_tree_resumes_from_the_anchor(
    trail_db: Path | str, tmp_path: Path, key_files: tuple[Path, Path]
) -> None:
    old = datetime(2000, 1, 1, tzinfo=UTC)
    trails.write(
        trail_db, [AuditEntry(action="a", event_id=f"o{n}", timestamp=old) for n in range(8)]
    )
    trails.write(trail_db, [AuditEntry(action="a", event_id=f"n{n}") for n in range(2)])
    before = _all_leaves(trail_db)
    with AuditStore(trail_db) as store:
        store.purge(timedelta(days=1))

    got: list[SignedCheckpoint] = []
    service = _service(trail_db, key_files[0], None, on_checkpoint=got.append)
    service.record(action="b", event_id="after")
    assert service.close(10)
    assert service.writer is not None
    assert service.writer.checkpointer is not None
    assert service.writer.checkpointer.leaves_read == 3  # rows 9..11: never the purged ones
    after = [data for _, data in leaves(backends.open_trail(trail_db), 10)]
    assert [c.size for c in got] == [11]
    assert got[0].root == merkle.root([*before, *after]).hex()


def test_the_interval_makes_a_checkpoint_before_the_count_does(
    trail_db: Path | str, key_files: tuple[Path, Path]
) -> None:
    trails.write(trail_db, [AuditEntry(action="a", event_id=f"e{n}") for n in range(3)])
    now = [0.0]
    got: list[SignedCheckpoint] = []
    made = checkpointing.Checkpointer(
        lambda: backends.open_trail(trail_db),
        keys.load_signing_key(key_files[0]),
        log_path=None,
        callback=got.append,
        every=100,
        interval_s=30,
        clock=lambda: now[0],
    )
    try:
        assert not made.due(3)
        now[0] = 30.0
        assert made.due(3)
        tail = trails.query(trail_db, "SELECT id, hash FROM audit_entries WHERE id = 3")[0]
        assert made.make((tail[0], tail[1])) is not None
        assert not made.due(3)  # nothing new
    finally:
        made.close()
    assert [c.size for c in got] == [3]


_WRITER = """
import sys
from audit_engine import AuditService
database, key, log, name = sys.argv[1:]
service = AuditService(database=database, signing_key_file=key, checkpoint_file=log,
                       checkpoint_every=7, buffer_max_size=5, cleanup_enabled=False)
for n in range(60):
    service.record(action="a", actor=name, resource_id=str(n))
sys.exit(0 if service.close(30) else 1)
"""


def test_two_writer_processes_sign_roots_of_the_whole_trail(
    trail_db: Path | str, tmp_path: Path, key_files: tuple[Path, Path]
) -> None:
    log = tmp_path / "checkpoints.jsonl"
    trails.create(trail_db)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(trail_db), str(key_files[0]), str(log), name],
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        for name in ("one", "two")
    ]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    lines = _file_lines(log)
    assert max(line["size"] for line in lines) == 120
    # Each writer counts the trail's growth (both writers' rows) and signs at its close.
    assert len(lines) >= 2
    _check_against_trail(trail_db, lines, key_files[1])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"signing": True}, "signing_key_file is set but neither checkpoint_file nor"),
        ({"callback": True}, "on_checkpoint needs signing_key_file"),
        ({"log": True}, "is set but signing_key_file is not"),
        ({"signing": True, "log": True, "async_writes": False}, "async_writes=False makes no"),
        ({"signing": True, "log": "missing/x.jsonl"}, "its directory does not exist"),
    ],
)
def test_checkpoint_settings_that_cannot_work_are_refused(
    db_path: Path,
    tmp_path: Path,
    key_files: tuple[Path, Path],
    overrides: dict[str, Any],
    message: str,
) -> None:
    log = overrides.get("log")
    values: dict[str, Any] = {"database": db_path, "cleanup_enabled": False}
    if overrides.get("signing"):
        values["signing_key_file"] = key_files[0]
    if log:
        values["checkpoint_file"] = tmp_path / (log if isinstance(log, str) else "c.jsonl")
    if "async_writes" in overrides:
        values["async_writes"] = overrides["async_writes"]
    callback: Callable[[SignedCheckpoint], None] | None = (
        (lambda c: None) if overrides.get("callback") else None
    )
    with pytest.raises(SettingsError, match=message):
        AuditService(on_checkpoint=callback, **values)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("keys", "is a directory: name a file in it"),
        ("audit.db", "is the database: it must be a file of its own"),
        ("audit.db-wal", "is the database's -wal file"),
        ("audit.db-journal", "is the database's -journal file"),
        ("audit.db.deadletter.jsonl", "is the dead-letter file"),
        ("keys/chain.key", "is the chain key file \\(chain_key_file\\)"),
        ("keys/signing.key", "is the signing key file \\(signing_key_file\\)"),
        ("link-to-db", "is the database: it"),
        ("hard-link-to-key", "is the chain key file"),
        ("notes.txt", "is not a checkpoint log: its first line is not a JSON object with a"),
        ("list.jsonl", "is not a checkpoint log"),
    ],
)
def test_a_checkpoint_file_that_is_another_file_is_refused_untouched(
    db_path: Path, tmp_path: Path, key_files: tuple[Path, Path], target: str, message: str
) -> None:
    # The database exists (the link's target), a log of someone else, keys from keygen.
    AuditService(database=db_path, cleanup_enabled=False).close()
    (tmp_path / "link-to-db").symlink_to(db_path)
    os.link(tmp_path / "keys" / "chain.key", tmp_path / "hard-link-to-key")
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "list.jsonl").write_text('[{"note": "x"}]\n')
    path = tmp_path / target
    before = path.read_bytes() if path.is_file() else None

    with pytest.raises(SettingsError, match=f"^checkpoint_file {path} {message}"):
        _service(db_path, key_files[0], path, chain_key_file=tmp_path / "keys" / "chain.key")

    assert (path.read_bytes() if path.is_file() else None) == before


def test_a_checkpoint_file_that_is_a_log_already_or_a_link_to_a_new_file_is_accepted(
    db_path: Path, tmp_path: Path, key_files: tuple[Path, Path]
) -> None:
    log = tmp_path / "c.jsonl"
    link = tmp_path / "link.jsonl"
    link.symlink_to(log)  # followed, as export --output follows one
    for path in (link, log):  # a new file through the link, then the log it holds
        service = _service(db_path, key_files[0], path)
        service.record(action="a")
        assert service.close(10)
    assert [line["size"] for line in _file_lines(log)] == [1, 2]


# -- failures and edges, on SQLite: the checkpointer's own logic, not the backend's -------------


def _checkpointer(
    connect: Callable[[], Any], key: Path, got: list[SignedCheckpoint] | None = None
) -> checkpointing.Checkpointer:
    return checkpointing.Checkpointer(
        connect,
        keys.load_signing_key(key),
        log_path=None,
        callback=None if got is None else got.append,
        every=1,
        interval_s=3600,
    )


def _tail(database: Path, row_id: int) -> tuple[int, str]:
    [(ident, digest)] = trails.query(
        database, "SELECT id, hash FROM audit_entries WHERE id = ?", (row_id,)
    )
    return int(ident), str(digest)


def test_without_cryptography_the_checkpointer_names_the_extra(
    key_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = keys.load_signing_key(key_files[0])
    real = importlib.import_module

    def import_module(name: str, package: str | None = None) -> ModuleType:
        if name == "audit_engine.storage.checkpoints":
            raise ModuleNotFoundError("No module named 'cryptography'", name="cryptography")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", import_module)
    with pytest.raises(SettingsError) as caught:
        checkpointing.Checkpointer(
            lambda: None, key, log_path=None, callback=None, every=1, interval_s=1
        )
    assert str(caught.value) == (
        "signing_key_file needs the cryptography package: pip install 'audit-engine[signing]'"
    )


@pytest.mark.skipif(os.name == "nt", reason="POSIX resource limits")
def test_a_short_write_of_a_checkpoint_line_is_an_error_and_cut_back(tmp_path: Path) -> None:
    log = tmp_path / "c.jsonl"
    log.write_bytes(b"x" * 9 + b"\n")
    checkpoint = SignedCheckpoint(
        trail_id="t", size=1, head_id=1, head_hash="a" * 64, root="b" * 64, time="t", note="n"
    )
    length = len(checkpoint.model_dump_json()) + 1
    # A full disk as the kernel reports it: the file may grow by 5 bytes only (Python ignores
    # SIGXFSZ, so write() returns the short count).
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (15, hard))
    try:
        with pytest.raises(OSError, match=rf"^only 5 of {length} bytes of the checkpoint were"):
            checkpoint_log.append_line(log, checkpoint)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert log.read_bytes() == b"x" * 9 + b"\n"  # no half line left for the next one to follow


def test_a_line_after_a_torn_one_starts_on_a_line_of_its_own(tmp_path: Path) -> None:
    log = tmp_path / "c.jsonl"
    log.write_bytes(b'{"torn": tr')  # a crash in the middle of a write
    checkpoint = SignedCheckpoint(
        trail_id="t", size=1, head_id=1, head_hash="a" * 64, root="b" * 64, time="t", note="n"
    )

    checkpoint_log.append_line(log, checkpoint)

    assert log.read_text().splitlines() == ['{"torn": tr', checkpoint.model_dump_json()]


def test_a_database_that_is_not_a_trail_is_counted_not_raised(
    tmp_path: Path, key_files: tuple[Path, Path]
) -> None:
    other = tmp_path / "other.db"
    trails.query(other, "CREATE TABLE t (x)")  # a SQLite file, but no audit tables
    opened: list[sqlite3.Connection] = []

    def connect() -> sqlite3.Connection:
        opened.append(sqlite3.connect(other))
        return opened[-1]

    made = _checkpointer(connect, key_files[0])
    made.start()
    assert made.failures == 1
    assert str(made.last_error).startswith("could not read the trail's checkpoints: ")
    assert made.make((1, "a" * 64)) is None  # tries again, fails again, never raises
    assert (made.failures, made.made) == (2, 0)
    assert str(made.last_error).startswith("could not make a checkpoint: ")
    assert len(opened) == 2  # a database error drops the connection: the next try reconnects
    made.close()


def test_a_tail_behind_another_writers_checkpoint_makes_none(
    db_path: Path, key_files: tuple[Path, Path]
) -> None:
    trails.write(db_path, [AuditEntry(action="a", event_id=f"e{n}") for n in range(5)])
    ahead = _checkpointer(lambda: backends.open_trail(db_path), key_files[0])
    assert ahead.make(_tail(db_path, 5)) is not None
    ahead.close()

    got: list[SignedCheckpoint] = []
    behind = _checkpointer(lambda: backends.open_trail(db_path), key_files[0], got)
    behind.start()  # resumes from the checkpoint at row 5
    assert behind.make(_tail(db_path, 3)) is None  # its own last commit was row 3
    behind.close()
    assert (got, behind.made, behind.failures) == ([], 0, 0)
    assert trails.query(db_path, "SELECT count(*) FROM audit_checkpoints") == [(1,)]


def test_a_purge_after_the_start_moves_the_tree_to_the_anchor(
    db_path: Path, key_files: tuple[Path, Path]
) -> None:
    old = datetime(2000, 1, 1, tzinfo=UTC)
    trails.write(
        db_path, [AuditEntry(action="a", event_id=f"o{n}", timestamp=old) for n in range(8)]
    )
    trails.write(db_path, [AuditEntry(action="a", event_id=f"n{n}") for n in range(2)])
    tree = _all_leaves(db_path)
    made = _checkpointer(lambda: backends.open_trail(db_path), key_files[0])
    made.start()  # no checkpoint, no anchor yet: the tree starts empty
    with AuditStore(db_path) as store:
        store.purge(timedelta(days=1))

    checkpoint = made.make(_tail(db_path, 10))
    made.close()

    assert checkpoint is not None
    assert made.leaves_read == 2  # rows 9 and 10: the anchor vouches for 1..8
    assert checkpoint.root == merkle.root(tree).hex()


def test_a_checkpoint_the_trail_cannot_keep_is_counted_and_delivered(
    db_path: Path, tmp_path: Path, key_files: tuple[Path, Path]
) -> None:
    trails.write(db_path, [AuditEntry(action="a", event_id="e")])
    opened: list[sqlite3.Connection] = []

    def read_only() -> sqlite3.Connection:
        conn = backends.open_trail(db_path)
        conn.execute("PRAGMA query_only = ON")  # a database this writer may not write to
        opened.append(conn)
        return conn

    got: list[SignedCheckpoint] = []
    made = _checkpointer(read_only, key_files[0], got)
    checkpoint = made.make(_tail(db_path, 1))

    assert checkpoint is not None
    assert got == [checkpoint]  # the callback had it: the copy outside the database
    assert (made.made, made.failures) == (1, 1)
    assert made.last_error == (
        "could not keep a checkpoint in the trail: attempt to write a readonly database"
    )
    assert trails.query(db_path, "SELECT count(*) FROM audit_checkpoints") == [(0,)]
    # The connection is dropped (a database error): the next checkpoint opens a new one.
    trails.write(db_path, [AuditEntry(action="a", event_id="f")])
    with pytest.raises(sqlite3.ProgrammingError, match="closed database"):
        opened[0].execute("SELECT 1")
    assert made.make(_tail(db_path, 2)) is not None
    made.close()
    assert (len(opened), made.failures) == (2, 2)


def test_after_a_fork_the_child_resumes_on_a_connection_of_its_own(
    db_path: Path, key_files: tuple[Path, Path]
) -> None:
    trails.write(db_path, [AuditEntry(action="a", event_id=f"e{n}") for n in range(4)])
    opened: list[Any] = []

    def connect() -> Any:
        opened.append(backends.open_trail(db_path))
        return opened[-1]

    made = _checkpointer(connect, key_files[0])
    assert made.make(_tail(db_path, 4)) is not None
    trails.write(db_path, [AuditEntry(action="a", event_id=f"f{n}") for n in range(2)])

    made.reset_after_fork()  # as the fork hook calls it in the child
    checkpoint = made.make(_tail(db_path, 6))
    made.close()

    assert checkpoint is not None
    assert checkpoint.size == 6
    assert len(opened) == 2  # the parent's connection is never used by the child
    assert made.leaves_read == 4 + 2  # resumed from the stored checkpoint at row 4
    assert opened[0].execute("SELECT count(*) FROM audit_entries").fetchone() == (6,)  # open


def test_a_checkpoint_file_that_cannot_be_looked_at_or_is_empty(
    db_path: Path, tmp_path: Path, key_files: tuple[Path, Path]
) -> None:
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop)
    with pytest.raises(SettingsError) as caught:
        _service(db_path, key_files[0], loop)
    assert str(caught.value) == (
        f"checkpoint_file {loop} cannot be read: [Errno 40] Too many levels of symbolic links: "
        f"'{loop}'"
    )

    empty = tmp_path / "empty.jsonl"
    empty.touch()  # created ahead by the operator (with its mode): the log starts in it
    service = _service(db_path, key_files[0], empty)
    service.record(action="a")
    assert service.close(10)
    assert [line["size"] for line in _file_lines(empty)] == [1]
