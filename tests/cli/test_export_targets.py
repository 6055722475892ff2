"""``export --output`` never replaces what it must not (review D5): the database's own files and
its dead-letter files are refused, and so is an existing file that looks like a key, a checkpoint
log or an SQLite database, named by no setting (review15b M2); a symlink is written through, a
FIFO is written into. ``look_alikes`` serves the tests of prove and datasette-metadata too.

Special files are made in the test's tmp directory only (a FIFO, symlinks), never under /dev.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner

from audit_engine.cli import main
from audit_engine.storage import deadletter

if TYPE_CHECKING:
    from conftest import Cli, Trail

DEAD_LETTER_LINE = '{"entry": {"event_id": "kept"}, "error": "x", "failed_at": "now"}\n'

#: What an existing file looks like, for each kind ``look_alikes`` makes.
LOOK_ALIKES = [
    "a chain key file",  # as keygen writes it
    "a chain key file without its header",  # as load_chain_keys accepts it
    "a PEM private key",
    "a PEM public key",
    "a checkpoint log",
    "an SQLite database",
]


def look_alikes(directory: Path) -> dict[str, Path]:
    """One file of each kind of LOOK_ALIKES in ``directory``, none of them configured anywhere:
    keygen's three keys, a bare chain key file, a checkpoint log line, another SQLite file."""
    keys = directory / "keys"
    result = CliRunner().invoke(main, ["keygen", "--out", str(keys)])
    assert result.exit_code == 0, result.output
    bare = directory / "rotated.key"
    bare.write_text(f"\n{'0f' * 32}\n# the old one\n{'A1' * 32}\n")
    log = directory / "checkpoints.jsonl"
    line = {"trail_id": "t1", "size": 3, "note": "audit-engine/t1\n3\nroot\n\n— sig\n"}
    log.write_text(json.dumps(line) + "\n")
    other = directory / "other-trail.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE kept (x)")
    conn.close()
    files = [keys / "chain.key", bare, keys / "signing.key", keys / "signing.pub", log, other]
    return dict(zip(LOOK_ALIKES, files, strict=True))


def look_alike_reason(kind: str) -> str:
    """The refusal of ``--output`` naming what the file of ``kind`` looks like."""
    shown = kind.removesuffix(" without its header")
    return f"looks like {shown}, which --output never replaces (move it away first if it is not)"


def _refused(cli: Cli, target: Path | str, reason: str) -> None:
    result = cli.run("export", "--output", str(target), code=2)
    assert result.output.startswith("Usage: audit-engine export [OPTIONS]\n")
    assert result.output.endswith(f"\nError: Invalid value for '--output': {reason}\n")


@pytest.mark.parametrize(
    ("suffix", "reason"),
    [
        ("", "is the audit database's dead-letter file"),
        (".lock", "is a lock or side file of the audit database's dead-letter file"),
        (".tmp", "is a lock or side file of the audit database's dead-letter file"),
        (".4242-1.jsonl", "is a lock or side file of the audit database's dead-letter file"),
        (".4242-1.jsonl.part", "is a lock or side file of the audit database's dead-letter file"),
    ],
)
def test_export_refuses_the_dead_letter_file_and_its_lock_and_side_files(
    cli: Cli, notes: Trail, db_path: Path, suffix: str, reason: str
) -> None:
    target = Path(f"{deadletter.path_for(db_path)}{suffix}")
    target.write_text(DEAD_LETTER_LINE)

    _refused(cli, target, reason)

    assert target.read_text() == DEAD_LETTER_LINE


def test_export_refuses_a_side_file_name_that_does_not_exist_yet(
    cli: Cli, notes: Trail, db_path: Path
) -> None:
    """A replay would read an export written there as dead letters."""
    target = Path(f"{deadletter.path_for(db_path)}.4242-7.jsonl")

    _refused(cli, target, "is a lock or side file of the audit database's dead-letter file")

    assert not target.exists()


def test_export_refuses_the_rollback_journal(cli: Cli, notes: Trail, db_path: Path) -> None:
    _refused(cli, f"{db_path}-journal", "is the audit database's -journal file")

    assert not Path(f"{db_path}-journal").exists()


def test_export_refuses_the_dead_letter_file_through_a_symlink_or_a_hard_link(
    cli: Cli, notes: Trail, db_path: Path, tmp_path: Path
) -> None:
    dead = deadletter.path_for(db_path)
    dead.write_text(DEAD_LETTER_LINE)
    (tmp_path / "looks-harmless.jsonl").symlink_to(dead.name)
    os.link(dead, tmp_path / "hard.jsonl")

    for name in ("looks-harmless.jsonl", "hard.jsonl"):
        _refused(cli, tmp_path / name, "is the audit database's dead-letter file")

    assert dead.read_text() == DEAD_LETTER_LINE
    assert (tmp_path / "looks-harmless.jsonl").is_symlink()


def test_export_refuses_the_files_of_a_database_opened_through_a_symlink(
    cli: Cli, notes: Trail, db_path: Path, tmp_path: Path
) -> None:
    """``--db link.db``: its dead-letter file is ``link.db.deadletter.jsonl`` (beside the link),
    and the real file's names are the database's too."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = elsewhere / "link.db"
    link.symlink_to(db_path)
    dead = deadletter.path_for(link)
    dead.write_text(DEAD_LETTER_LINE)

    for target, reason in [
        (dead, "is the audit database's dead-letter file"),
        (link, "is the audit database itself"),
        (db_path, "is the audit database itself"),
        (Path(f"{db_path}-wal"), "is the audit database's -wal file"),
    ]:
        result = cli.run("--db", str(link), "export", "--output", str(target), code=2, db=False)
        assert result.output.endswith(f"\nError: Invalid value for '--output': {reason}\n")

    assert dead.read_text() == DEAD_LETTER_LINE
    assert link.is_symlink()


def test_export_writes_through_a_symlink_and_keeps_the_link(
    cli: Cli, notes: Trail, tmp_path: Path
) -> None:
    target = tmp_path / "archive" / "trail.jsonl"
    target.parent.mkdir()
    target.write_text("last month\n")
    link = tmp_path / "latest.jsonl"
    link.symlink_to(target)

    result = cli.run("export", "--output", str(link))

    assert result.output == f"Exported 4 entries to {link}\n"
    assert link.is_symlink()
    assert os.readlink(link) == str(target)
    assert target.read_text(encoding="utf-8") == cli.run("export").output
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    # The temporary file was made beside the target, and is gone.
    assert [p.name for p in target.parent.iterdir()] == ["trail.jsonl"]


def test_export_through_a_dangling_symlink_creates_its_target(
    cli: Cli, notes: Trail, tmp_path: Path
) -> None:
    link = tmp_path / "latest.jsonl"
    link.symlink_to("new.jsonl")

    cli.run("export", "--output", str(link))

    assert link.is_symlink()
    assert (tmp_path / "new.jsonl").read_text(encoding="utf-8") == cli.run("export").output


def test_export_writes_into_a_fifo_and_keeps_it(cli: Cli, notes: Trail, tmp_path: Path) -> None:
    """The FIFO was replaced by a regular file: its reader got nothing, yet exit 0."""
    fifo = tmp_path / "trail.fifo"
    os.mkfifo(fifo)
    # A reader that is already there, so the export's open() does not wait; the export (four
    # entries) fits in the pipe's buffer.
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        result = cli.run("export", "--output", str(fifo))
        received = b""
        while chunk := os.read(reader, 65536):
            received += chunk
    finally:
        os.close(reader)

    assert result.output == f"Exported 4 entries to {fifo}\n"
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert received.decode("utf-8") == cli.run("export").output
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("audit.db")] == [
        "trail.fifo"
    ]


def test_export_into_a_symlink_to_a_fifo_writes_the_fifo(
    cli: Cli, notes: Trail, tmp_path: Path
) -> None:
    """The way ``--output /dev/stdout`` is a symlink to a pipe, made in tmp."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "stdout"
    link.symlink_to(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        cli.run("export", "--format", "csv", "--output", str(link))
        received = os.read(reader, 65536)
    finally:
        os.close(reader)

    assert link.is_symlink()
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert received.decode("utf-8") == cli.run("export", "--format", "csv").output


def test_export_into_a_fifo_whose_reader_leaves_is_an_error(
    cli: Cli, trail: Trail, tmp_path: Path
) -> None:
    """Exit 1 naming the output, not a silent exit (as for a closed stdout)."""
    trail.record(*({"action": "bulk", "details": {"pad": "x" * 1000}} for _ in range(300)))
    fifo = tmp_path / "trail.fifo"
    os.mkfifo(fifo)
    # Reads 10 bytes and exits: the export (300 kB) cannot fit in the pipe's buffer.
    reader = subprocess.Popen(
        [sys.executable, "-c", f"open({str(fifo)!r}, 'rb').read(10)"],
    )
    try:
        result = cli.run("export", "--output", str(fifo), code=1)
        assert reader.wait(timeout=30) == 0
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait(timeout=30)

    assert result.output == f"Error: the reader of {fifo} went away before the export ended\n"


def test_export_under_a_file_that_is_not_a_directory_is_an_error(
    cli: Cli, notes: Trail, tmp_path: Path
) -> None:
    (tmp_path / "plain.txt").write_text("text\n")
    target = tmp_path / "plain.txt" / "trail.jsonl"

    result = cli.run("export", "--output", str(target), code=1)

    assert result.output == f"Error: Not a directory: {target}\n"
    assert (tmp_path / "plain.txt").read_text() == "text\n"


def test_export_over_a_regular_file_still_replaces_it_whole(
    cli: Cli, notes: Trail, tmp_path: Path
) -> None:
    target = tmp_path / "trail.jsonl"
    target.write_text("old\n")
    inode = target.stat().st_ino

    cli.run("export", "--output", str(target))

    assert target.stat().st_ino != inode  # a new file renamed into place
    assert [json.loads(line)["id"] for line in target.read_text().splitlines()] == [1, 2, 3, 4]


@pytest.mark.parametrize("kind", LOOK_ALIKES)
def test_export_refuses_a_file_that_looks_like_a_key_a_log_or_a_database(
    cli: Cli, notes: Trail, tmp_path: Path, kind: str
) -> None:
    """No setting names these files: export is given no key, yet one typo must not replace it."""
    target = look_alikes(tmp_path)[kind]
    before = target.read_bytes()

    _refused(cli, target, look_alike_reason(kind))

    assert target.read_bytes() == before


def test_export_refuses_a_look_alike_through_a_symlink(
    cli: Cli, notes: Trail, tmp_path: Path
) -> None:
    link = tmp_path / "latest.jsonl"
    link.symlink_to(look_alikes(tmp_path)["a chain key file"])

    _refused(cli, link, look_alike_reason("a chain key file"))


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_an_earlier_export_is_replaced(cli: Cli, notes: Trail, tmp_path: Path, fmt: str) -> None:
    target = tmp_path / f"trail.{fmt}"
    cli.run("export", "--format", fmt, "--output", str(target))
    target.write_text(target.read_text() + "a line of an older export\n")

    cli.run("export", "--format", fmt, "--output", str(target))

    assert target.read_text(encoding="utf-8") == cli.run("export", "--format", fmt).output


def test_export_refuses_a_file_it_cannot_read_to_check(
    cli: Cli, notes: Trail, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "unknown"
    target.write_text("?\n")
    # A mode of 0 stops no one running as root (as CI does): refuse the read itself instead.
    real_open = os.open

    def refusing_open(path: Any, *args: Any, **kwargs: Any) -> int:
        if os.fspath(path) == str(target):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)

    _refused(
        cli, target, "cannot be read (Permission denied) to check that it is no key or database"
    )


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        (
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            "a PEM key or certificate",
        ),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0 alice@laptop\n", "an SSH public key"),
        ('from="10.0.0.1" ssh-rsa AAAAB3NzaC1yc2E= bob\n', "an SSH public key"),
    ],
)
def test_export_refuses_other_keys_and_certificates(
    cli: Cli, notes: Trail, tmp_path: Path, content: str, kind: str
) -> None:
    target = tmp_path / "id"
    target.write_text(content)
    _refused(
        cli,
        target,
        f"looks like {kind}, which --output never replaces (move it away first if it is not)",
    )
    assert target.read_text() == content


def test_an_apps_own_json_lines_with_a_note_are_replaced(
    cli: Cli, notes: Trail, tmp_path: Path
) -> None:
    # Only the engine's checkpoint lines (a note whose origin names the engine) are refused.
    target = tmp_path / "notes.jsonl"
    target.write_text('{"note": "buy milk", "id": 1}\n')
    cli.run("export", "--output", str(target))
    assert target.read_text(encoding="utf-8") == cli.run("export").output
