"""keygen, verify against the signed checkpoint log, prove and verify-proof — on SQLite and
PostgreSQL, with a trail a keyed, signing service wrote."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import Cli, Trail
from test_export_targets import LOOK_ALIKES, look_alike_reason, look_alikes

from audit_engine import AuditService, AuditSettings
from audit_engine.cli import main

ENTRIES = 12
EVERY = 5  # checkpoints at 5, 10 and 12 (close)


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    """chain.key, signing.key and signing.pub, written by keygen."""
    out = tmp_path / "keys"
    result = CliRunner().invoke(main, ["keygen", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def log(trail: Trail, key_dir: Path, tmp_path: Path) -> Path:
    """The checkpoint log of a trail of ENTRIES keyed rows written by a signing service."""
    path = tmp_path / "checkpoints.jsonl"
    settings = AuditSettings(
        database=trail.database,
        level="all",
        cleanup_enabled=False,
        chain_key_file=key_dir / "chain.key",
        signing_key_file=key_dir / "signing.key",
        checkpoint_file=path,
        checkpoint_every=EVERY,
    )
    with AuditService(settings) as audit:
        for n in range(ENTRIES):
            audit.record(event_id=f"evt-{n + 1}", action="doc.save", resource_id=str(n))
            if (n + 1) % EVERY == 0:  # a checkpoint is signed as a batch commits: one per batch
                assert audit.flush(10)
    assert audit.stats().written == ENTRIES
    assert [json.loads(line)["size"] for line in path.read_text().splitlines()] == [5, 10, 12]
    return path


def _keyed(cli: Cli, key_dir: Path, *args: str, code: int = 0) -> str:
    return cli.run("--chain-key-file", str(key_dir / "chain.key"), *args, code=code).output


def _verify(cli: Cli, key_dir: Path, log: Path, code: int = 0) -> str:
    public = str(key_dir / "signing.pub")
    return _keyed(
        cli, key_dir, "verify", "--checkpoints", str(log), "--public-key", public, code=code
    )


def test_keygen_writes_owner_only_secrets_and_never_overwrites(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    runner = CliRunner()

    result = runner.invoke(main, ["keygen", "--out", str(out)])

    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for name in ("chain.key", "signing.key"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name
        assert f"{out / name}" in result.output
    assert "signing.pub" in result.output
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    again = runner.invoke(main, ["keygen", "--out", str(out)])

    assert again.exit_code == 1
    assert again.output.startswith(f"Error: {out / 'chain.key'} already exists: keygen never ")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_verify_holds_a_keyed_trail_to_its_signed_checkpoints(
    cli: Cli, trail: Trail, key_dir: Path, log: Path
) -> None:
    head = trail.head()

    output = _verify(cli, key_dir, log)

    assert output == (
        f"OK: {ENTRIES} rows verified; head {head.id}:{head.hash}; 3 checkpoints held\n"
    )


def test_verify_names_the_checkpoint_a_truncated_trail_fails(
    cli: Cli, trail: Trail, key_dir: Path, log: Path
) -> None:
    trail.execute("DELETE FROM audit_entries WHERE id > 8")
    assert _keyed(cli, key_dir, "verify").startswith("OK: 8 rows verified")  # chain alone: fine

    output = _verify(cli, key_dir, log, code=1)

    assert output == (
        "Error: the trail does not match its signed checkpoints: checkpoint line 2 (size 10): "
        "the trail ends at id 8, before its head 10: rows were deleted from the end (truncated) "
        "or the trail was rolled back to an older copy\n"
    )


def test_a_proof_round_trips_and_a_changed_byte_fails(
    cli: Cli, trail: Trail, key_dir: Path, log: Path, tmp_path: Path
) -> None:
    proof_file = tmp_path / "proof.json"
    public = str(key_dir / "signing.pub")

    written = cli.run("prove", "evt-4", "--checkpoints", str(log), "--output", str(proof_file))
    checked = cli.run("verify-proof", str(proof_file), "--public-key", public, db=False)

    assert f"Proof of evt-4 written to {proof_file}" in written.output
    assert stat.S_IMODE(proof_file.stat().st_mode) == 0o600
    proof = json.loads(proof_file.read_text())
    assert (proof["chain_version"], proof["leaf_index"], proof["tree_size"]) == ("2", 3, 12)
    assert checked.output.startswith("OK: entry evt-4 (row 4) is in audit-engine/")
    assert "as of its checkpoint of 12 entries (head row 12, signed " in checked.output

    text = proof_file.read_text()
    changed = text.replace('"doc.save"', '"doc.savE"', 1)
    assert changed != text
    proof_file.write_text(changed)
    failed = cli.run("verify-proof", str(proof_file), "--public-key", public, code=1, db=False)
    assert failed.output.startswith("Error: the proof does not hold: ")


def test_a_proof_from_the_checkpoints_kept_in_the_trail_goes_to_stdout(
    cli: Cli, trail: Trail, key_dir: Path, log: Path, tmp_path: Path
) -> None:
    proof = json.loads(cli.run("prove", "evt-11").output)
    proof_file = tmp_path / "proof.json"
    proof_file.write_text(json.dumps(proof))

    assert proof["entry"]["event_id"] == "evt-11"
    cli.run("verify-proof", str(proof_file), "--public-key", str(key_dir / "signing.pub"))
    other = tmp_path / "other"
    CliRunner().invoke(main, ["keygen", "--out", str(other)])
    failed = cli.run(
        "verify-proof", str(proof_file), "--public-key", str(other / "signing.pub"), code=1
    )
    assert failed.output.startswith("Error: the proof does not hold: ")


def test_bad_inputs_are_errors_naming_them(
    cli: Cli, trail: Trail, key_dir: Path, log: Path, tmp_path: Path
) -> None:
    public = str(key_dir / "signing.pub")
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("not a key\n")
    not_a_log = tmp_path / "notes.txt"
    not_a_log.write_text("hello\n")

    bad_key = _keyed(
        cli, key_dir, "verify", "--checkpoints", str(log), "--public-key", str(garbage), code=1
    )
    bad_log = _keyed(
        cli, key_dir, "verify", "--checkpoints", str(not_a_log), "--public-key", public, code=1
    )
    unknown = cli.run("prove", "nope", "--checkpoints", str(log), code=1)
    bad_proof = cli.run("verify-proof", str(not_a_log), "--public-key", public, code=1)
    proof_file = tmp_path / "proof.json"
    cli.run("prove", "evt-2", "--output", str(proof_file))
    bad_proof_key = cli.run("verify-proof", str(proof_file), "--public-key", str(garbage), code=1)
    alone = cli.run("verify", "--checkpoints", str(log), code=2)

    assert bad_key.startswith("Error: ")
    assert str(garbage) in bad_key
    assert bad_proof_key.output.startswith("Error: ")
    assert str(garbage) in bad_proof_key.output
    assert bad_log.startswith("Error: ")
    assert f"{not_a_log} line 1 is not a checkpoint" in bad_log
    assert unknown.output == "Error: no entry has the event id 'nope'\n"
    assert bad_proof.output.startswith("Error: the proof does not hold: ")
    assert "--checkpoints and --public-key go together" in alone.output


def _prove_refused(cli: Cli, key_dir: Path, target: Path, reason: str, *args: str) -> None:
    before = target.read_bytes()
    result = cli.run(
        "--chain-key-file", str(key_dir / "chain.key"), "prove", "evt-3", *args,
        "--output", str(target), code=2,
    )  # fmt: skip
    assert result.output.startswith("Usage: audit-engine prove [OPTIONS] EVENT_ID\n")
    assert result.output.endswith(f"\nError: Invalid value for '--output': {reason}\n")
    assert target.read_bytes() == before


def test_prove_output_refuses_the_key_files_and_the_checkpoint_log(
    cli: Cli, key_dir: Path, log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    link = tmp_path / "link.key"
    link.symlink_to(key_dir / "chain.key")
    monkeypatch.setenv("AUDIT_TRAIL_SIGNING_KEY_FILE", str(key_dir / "signing.key"))

    _prove_refused(cli, key_dir, key_dir / "chain.key", "is the chain key file")
    _prove_refused(cli, key_dir, link, "is the chain key file")
    _prove_refused(
        cli, key_dir, key_dir / "signing.key", "is the signing key file (signing_key_file)"
    )
    _prove_refused(
        cli, key_dir, log, "is the checkpoint log given to --checkpoints", "--checkpoints", str(log)
    )


@pytest.mark.parametrize("kind", LOOK_ALIKES)
def test_prove_output_refuses_a_look_alike_no_option_names(
    cli: Cli, trail: Trail, tmp_path: Path, kind: str
) -> None:
    """Neither --chain-key-file nor a setting names these files (review15b M2)."""
    trail.init()
    target = look_alikes(tmp_path)[kind]
    before = target.read_bytes()

    result = cli.run("prove", "evt-3", "--output", str(target), code=2)

    assert result.output.endswith(
        f"\nError: Invalid value for '--output': {look_alike_reason(kind)}\n"
    )
    assert target.read_bytes() == before


def test_prove_output_refuses_the_writer_s_checkpoint_log_when_not_given(
    cli: Cli, key_dir: Path, log: Path
) -> None:
    """The log a signing service appended to, though this prove reads the trail's copies."""
    _prove_refused(cli, key_dir, log, look_alike_reason("a checkpoint log"))


def test_prove_output_replaces_an_earlier_proof(
    cli: Cli, key_dir: Path, log: Path, tmp_path: Path
) -> None:
    proof_file = tmp_path / "proof.json"
    cli.run("prove", "evt-2", "--output", str(proof_file))
    earlier = proof_file.read_text()

    cli.run("prove", "evt-7", "--output", str(proof_file))

    assert json.loads(earlier)["entry"]["event_id"] == "evt-2"
    assert json.loads(proof_file.read_text())["entry"]["event_id"] == "evt-7"


@pytest.mark.sqlite_only  # a PostgreSQL trail has no local database file
@pytest.mark.parametrize(
    ("suffix", "reason"),
    [("", "is the audit database itself"), ("-wal", "is the audit database's -wal file")],
)
def test_prove_output_refuses_the_database_and_its_wal(
    cli: Cli, trail: Trail, key_dir: Path, log: Path, suffix: str, reason: str
) -> None:
    target = Path(f"{trail.database}{suffix}")
    if not target.exists():
        target.write_bytes(b"")  # a -wal the last close removed: still never written
    _prove_refused(cli, key_dir, target, reason)
    assert _keyed(cli, key_dir, "verify").startswith(f"OK: {ENTRIES} rows verified")


def test_prove_refuses_a_checkpoint_that_is_not_well_formed(
    cli: Cli, key_dir: Path, log: Path, tmp_path: Path
) -> None:
    first = json.loads(log.read_text().splitlines()[0])
    negative = tmp_path / "negative.jsonl"
    negative.write_text(json.dumps({**first, "note": first["note"].replace("\n5\n", "\n-5\n")}))
    hello = tmp_path / "hello.jsonl"
    hello.write_text(json.dumps({**first, "note": "hello"}) + "\n")

    bad_size = cli.run("prove", "evt-3", "--checkpoints", str(negative), code=1)
    not_signed = cli.run("prove", "evt-3", "--checkpoints", str(hello), code=1)

    assert bad_size.output == (
        "Error: checkpoint line 1 is not a signed checkpoint of this trail: a checkpoint's "
        "size must be a decimal number (got '-5')\n"
    )
    assert not_signed.output == (
        "Error: checkpoint line 1 is not a signed checkpoint of this trail: not a signed note: "
        "no blank line between the text and signatures\n"
    )


def test_prove_with_a_public_key_uses_only_checkpoints_it_verifies(
    cli: Cli, key_dir: Path, log: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    CliRunner().invoke(main, ["keygen", "--out", str(other)])
    args = ("prove", "evt-3", "--checkpoints", str(log), "--public-key")

    proof = json.loads(cli.run(*args, str(key_dir / "signing.pub")).output)
    refused = cli.run(*args, str(other / "signing.pub"), code=1)

    assert proof["tree_size"] == ENTRIES
    assert refused.output.startswith(
        "Error: no checkpoint signed with that public key in the checkpoint log covers row 3 yet"
    )
