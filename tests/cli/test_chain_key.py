"""The global --chain-key-file (AUDIT_TRAIL_CHAIN_KEY_FILE) on the commands that open a trail."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from audit_engine import AuditService
from audit_engine.cli import main
from audit_engine.storage.keys import chain_key_id

KEY = "c3" * 32
KEY_ID = chain_key_id(bytes.fromhex(KEY))


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "chain.key"
    path.write_text(f"{KEY}\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.delenv("AUDIT_TRAIL_CHAIN_KEY_FILE", raising=False)
    return CliRunner()


def _keyed_trail(runner: CliRunner, db: Path, key_file: Path) -> None:
    for action in ("doc.create", "doc.delete"):
        result = runner.invoke(
            main, ["--db", str(db), "--chain-key-file", str(key_file), "record", "--action", action]
        )
        assert result.exit_code == 0, result.output


def test_record_and_verify_with_the_key(runner: CliRunner, db_path: Path, key_file: Path) -> None:
    _keyed_trail(runner, db_path, key_file)
    result = runner.invoke(
        main, ["--db", str(db_path), "--chain-key-file", str(key_file), "verify"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("OK: 2 rows verified; head 2:")
    # The environment variable does the same.
    by_env = runner.invoke(
        main, ["--db", str(db_path), "verify"], env={"AUDIT_TRAIL_CHAIN_KEY_FILE": str(key_file)}
    )
    assert by_env.exit_code == 0, by_env.output


def test_verify_without_the_key_is_not_ok_and_says_why(
    runner: CliRunner, db_path: Path, key_file: Path
) -> None:
    _keyed_trail(runner, db_path, key_file)
    result = runner.invoke(main, ["--db", str(db_path), "verify"])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: not verified: rows from id 1 on are keyed (key {KEY_ID}): they cannot be "
        "checked without the chain key (set AUDIT_TRAIL_CHAIN_KEY_FILE or pass "
        "--chain-key-file) (0 other rows verified)\n"
    )
    stats = runner.invoke(main, ["--db", str(db_path), "stats"])
    assert "Chain:      NOT VERIFIED: rows from id 1 on are keyed" in stats.output


def test_record_without_the_key_on_a_keyed_trail_fails(
    runner: CliRunner, db_path: Path, key_file: Path
) -> None:
    _keyed_trail(runner, db_path, key_file)
    result = runner.invoke(main, ["--db", str(db_path), "record", "--action", "doc.read"])
    assert result.exit_code == 1
    assert result.output.startswith(
        f"Error: this trail is keyed from id 1 on (key {KEY_ID}): set chain_key_file"
    )
    assert KEY not in result.output


def test_a_key_file_open_to_others_is_refused(
    runner: CliRunner, db_path: Path, key_file: Path
) -> None:
    key_file.chmod(0o644)
    result = runner.invoke(
        main, ["--db", str(db_path), "--chain-key-file", str(key_file), "verify"]
    )
    assert result.exit_code == 1
    assert result.output == (
        f"Error: chain_key_file {key_file} is readable by other users (mode 0644): "
        f"chmod 600 {key_file}\n"
    )


def test_copy_keys_the_destination(
    runner: CliRunner, db_path: Path, key_file: Path, tmp_path: Path
) -> None:
    _keyed_trail(runner, db_path, key_file)
    dest = tmp_path / "copy.db"
    key = ["--chain-key-file", str(key_file)]
    result = runner.invoke(main, [*key, "copy", str(db_path), str(dest)])
    assert result.exit_code == 0, result.output
    assert runner.invoke(main, ["--db", str(dest), *key, "verify"]).exit_code == 0
    assert runner.invoke(main, ["--db", str(dest), "verify"]).exit_code == 1  # keyed


def test_purge_of_a_keyed_trail_needs_the_key(
    runner: CliRunner, db_path: Path, key_file: Path
) -> None:
    with AuditService(db_path, chain_key_file=key_file, cleanup_enabled=False) as audit:
        for number in range(3):
            audit.record(action="doc.save", timestamp=f"2020-01-0{number + 1}T00:00:00Z")

    refused = runner.invoke(main, ["--db", str(db_path), "purge", "--older-than", "100d"])
    purged = runner.invoke(
        main,
        ["--db", str(db_path), "--chain-key-file", str(key_file), "purge", "--older-than", "100d"],
    )
    verified = runner.invoke(
        main, ["--db", str(db_path), "--chain-key-file", str(key_file), "verify"]
    )

    assert refused.exit_code == 1
    assert refused.output.startswith(
        "Error: this trail is keyed from id 1 on: purging its keyed rows needs the chain key"
    )
    assert purged.exit_code == 0, purged.output
    assert purged.output.startswith("Purged 3 ")
    assert verified.exit_code == 0, verified.output


def test_verify_with_a_key_of_a_never_keyed_trail_says_so(
    runner: CliRunner, db_path: Path, key_file: Path
) -> None:
    assert runner.invoke(main, ["--db", str(db_path), "record", "--action", "a.b"]).exit_code == 0

    result = runner.invoke(
        main, ["--db", str(db_path), "--chain-key-file", str(key_file), "verify"]
    )

    assert result.exit_code == 1
    assert result.output.startswith(
        "Error: not verified: a chain key was given but no row of this trail is keyed: if no "
        "writer of this trail ever had the key, verify it without the key"
    )
