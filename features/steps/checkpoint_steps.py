"""Steps for features/signed_checkpoints.feature: checkpoints signed into a log outside the trail.

The tool signs with the team's Ed25519 key (made by ``generate_keys``, what ``audit-engine
keygen`` runs) into ``checkpoints.jsonl`` in the scenario's directory; the reviewer verifies
the trail against that file with the public key, the auditor checks a proof with nothing but
the proof and the public key. The trail is changed behind the engine's back by a forger who
takes the append-only guard out of the way (features/forgery.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from behave import given, then, when
from behave.runner import Context
from forgery import forger_connection, relink
from trail_backend import append_rows, query

from audit_engine import AuditEntry, AuditStore
from audit_engine.rows import entry_row
from audit_engine.storage.chain import row_hash
from audit_engine.storage.keys import generate_keys

WAIT_S = 10.0
COMMAND_TIMEOUT_S = 60.0
LOG = "checkpoints.jsonl"


def _log(context: Context) -> Path:
    path: Path = context.world.root / LOG
    return path


def _log_lines(context: Context) -> list[dict[str, Any]]:
    lines = _log(context).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _flip(text: str, at: int) -> str:
    replacement = "A" if text[at] != "A" else "B"
    return text[:at] + replacement + text[at + 1 :]


# -- keys and the signing tool ----------------------------------------------------------------


@given("the team's signing key pair")
def given_signing_pair(context: Context) -> None:
    world = context.world
    _, world.signing_key, world.public_key = generate_keys(world.root / "keys")


@given(
    "a tool that signs a checkpoint every {every:d} entries into the checkpoint log, "
    "having recorded {count:d} entries and closed"
)
def given_signing_tool(context: Context, every: int, count: int) -> None:
    world = context.world
    world.settings_values.update(
        signing_key_file=world.signing_key,
        checkpoint_file=_log(context),
        checkpoint_every=every,
        # Only the count and close() make checkpoints here: the sizes are then known.
        checkpoint_interval=3600,
        cleanup_enabled=False,
    )
    service = world.open_service()
    recorded = 0
    while recorded < count:
        # One flush per checkpoint's worth, so a batch never straddles a checkpoint's size.
        chunk = min(every, count - recorded)
        world.record_notes(chunk)
        assert service.flush(timeout=WAIT_S), f"flush() timed out: {service.stats()}"
        recorded += chunk
    assert service.close(timeout=WAIT_S), f"close() did not drain: {service.stats()}"


@when("the tool records {count:d} more entries with the same settings")
def when_records_more(context: Context, count: int) -> None:
    service = context.world.open_service()
    context.world.record_notes(count)
    assert service.close(timeout=WAIT_S), f"close() did not drain: {service.stats()}"


@then("the checkpoint log holds {count:d} checkpoints, at sizes {sizes}")
def then_log_sizes(context: Context, count: int, sizes: str) -> None:
    expected = [int(s) for s in sizes.replace(" and ", ", ").split(", ")]
    found = [line["size"] for line in _log_lines(context)]
    assert len(found) == count, found
    assert found == expected, found
    heads = [line["head_id"] for line in _log_lines(context)]
    assert heads == expected, heads  # no purge: the size is the newest id


@then("the trail keeps the same {count:d} checkpoints for convenience")
def then_trail_keeps(context: Context, count: int) -> None:
    stored = query(
        context.world.database, "SELECT tree_size, head_id, root FROM audit_checkpoints ORDER BY id"
    )
    logged = [(line["size"], line["head_id"], line["root"]) for line in _log_lines(context)]
    assert len(stored) == count, stored
    assert [tuple(row) for row in stored] == logged, (stored, logged)


# -- verifying against the log ----------------------------------------------------------------


@when("the reviewer verifies the trail against the checkpoint log")
def when_verify_checkpoints(context: Context) -> None:
    world = context.world
    with AuditStore(world.database) as store:
        world.report = store.verify(checkpoints=_log(context), public_key=world.public_key)


@then("verification succeeds, checking {rows:d} entries and {checkpoints:d} checkpoints")
def then_ok_with_checkpoints(context: Context, rows: int, checkpoints: int) -> None:
    report = context.world.report
    assert report.ok, f"verification failed: {report}"
    assert report.rows_checked == rows, report
    assert report.checkpoints_checked == checkpoints, report


@then("the trail alone, without the checkpoint log, still verifies")
def then_chain_alone_ok(context: Context) -> None:
    # Each of these changes keeps the chain linked: only the external log can tell.
    report = context.world.verify_trail()
    assert report.ok, f"the chain alone already caught it: {report}"


@then("verification fails, naming checkpoint {line:d} of the log, at size {size:d}")
def then_fails_at_checkpoint(context: Context, line: int, size: int) -> None:
    report = context.world.report
    assert not report.ok, f"the tampering went unnoticed: {report}"
    assert report.checkpoint_line == line, report
    assert report.reason is not None, report
    assert report.reason.startswith(f"checkpoint line {line} (size {size}): "), report.reason


@then(
    "the reason says rows were deleted from the end or the trail was rolled back to an older copy"
)
def then_rolled_back(context: Context) -> None:
    reason = context.world.report.reason
    assert "rows were deleted from the end (truncated)" in reason, reason
    assert "the trail was rolled back to an older copy" in reason, reason


# -- what happens to the trail ----------------------------------------------------------------


@when("someone who can write the database deletes its newest {count:d} entries")
def when_truncated(context: Context, count: int) -> None:
    with forger_connection(context.world.database) as conn:
        (tail,) = conn.execute("SELECT max(id) FROM audit_entries").fetchone()
        conn.execute("DELETE FROM audit_entries WHERE id > ?", (tail - count,))


@when(
    "someone who can write the database changes the actor of entry {entry:d} "
    "and recomputes every hash after it"
)
def when_rewritten(context: Context, entry: int) -> None:
    # The unkeyed chain, recomputed as its documented algorithm says: it links again.
    with forger_connection(context.world.database) as conn:
        conn.execute("UPDATE audit_entries SET actor = 'mallory' WHERE id = ?", (entry,))
        (prev_hash,) = conn.execute(
            "SELECT prev_hash FROM audit_entries WHERE id = ?", (entry,)
        ).fetchone()
        relink(conn, entry, prev_hash, row_hash)


def _restore(context: Context, tail: int) -> None:
    # A restored backup holds the trail as it was at the backup: to the verifier, the trail cut
    # at the backup's tail, with the checkpoints stored by then.
    with forger_connection(context.world.database) as conn:
        conn.execute("DELETE FROM audit_entries WHERE id > ?", (tail,))
        conn.execute("DELETE FROM audit_checkpoints WHERE head_id > ?", (tail,))


@when("the trail is restored from a backup taken after entry {tail:d}")
def when_restored(context: Context, tail: int) -> None:
    _restore(context, tail)


@when(
    "the trail is restored from a backup taken after entry {tail:d}, "
    "and the tool records {count:d} more entries"
)
def when_restored_and_written(context: Context, tail: int, count: int) -> None:
    _restore(context, tail)
    when_records_more(context, count)


@when("the trail is swapped for another team's trail of {count:d} entries")
def when_swapped(context: Context, count: int) -> None:
    world = context.world
    other: Path | str
    if isinstance(world.database, str):
        cluster = context.pg_cluster
        other = cluster.create_database()
        mine = world.database.rsplit("/", 1)[1]
        world.cleanups.append(lambda: cluster.drop_database(mine))
    else:
        other = world.root / "other-team.db"
    entries = [
        AuditEntry(action="note.save", actor="bob", resource_id=f"other-{n}") for n in range(count)
    ]
    append_rows(other, [entry_row(entry) for entry in entries])
    if isinstance(other, str):
        world.database = other
    else:
        for suffix in ("-wal", "-shm"):
            Path(f"{world.database}{suffix}").unlink(missing_ok=True)
        os.replace(other, world.database)


@when("someone changes the signed root of checkpoint {line:d} in the checkpoint log")
def when_edit_log(context: Context, line: int) -> None:
    # Only the signed note is trusted (the line's other fields are a convenience): edit its
    # root, the third line of the note, as someone hiding a rewrite would.
    lines = _log(context).read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[line - 1])
    note = record["note"].split("\n")
    note[2] = _flip(note[2], 0)
    record["note"] = "\n".join(note)
    lines[line - 1] = json.dumps(record)
    _log(context).write_text("\n".join(lines) + "\n", encoding="utf-8")


# -- the operator's shell, proofs and the auditor ---------------------------------------------


@given("an operator's shell in the trail's directory")
def given_shell_here(context: Context) -> None:
    # The operator's shell of cli_steps.py, pointed at this scenario's trail and keys.
    context.execute_steps("Given an operator's shell in an empty directory")
    shell = context.operator_shell
    shell.root = context.world.root
    shell.database = context.world.database


@when('the operator proves entry {entry:d} against the checkpoint log into "{output}"')
def when_prove(context: Context, entry: int, output: str) -> None:
    (event_id,) = query(
        context.world.database, "SELECT event_id FROM audit_entries WHERE id = ?", (entry,)
    )[0]
    command = f"audit-engine prove {event_id} --checkpoints {LOG} --output {output}"
    context.operator_shell.run(command)
    context.proved_event = event_id


_PARTS = {
    "the entry's actor": ("entry", "actor"),
    "the first path hash": ("path", 0),
    "the checkpoint's root": ("checkpoint", None),
}


@when('someone changes one byte of {part} in "{name}"')
def when_edit_proof(context: Context, part: str, name: str) -> None:
    path = context.operator_shell.root / name
    proof = json.loads(path.read_text(encoding="utf-8"))
    section, key = _PARTS[part]
    if section == "entry":
        proof["entry"][key] = _flip(proof["entry"][key], 0)
    elif section == "path":
        assert proof["path"], f"entry's proof has no path: {proof}"
        digit = proof["path"][key][0]
        proof["path"][key] = ("1" if digit == "0" else "0") + proof["path"][key][1:]
    else:
        # The signed note: origin, size, then the root (base64) on the third line.
        note = proof["checkpoint"].split("\n")
        note[2] = _flip(note[2], 0)
        proof["checkpoint"] = "\n".join(note)
    path.write_text(json.dumps(proof), encoding="utf-8")


@when('the auditor runs "{command}" without the database')
def when_auditor_runs(context: Context, command: str) -> None:
    # The auditor's own directory: the proof and the public key, no trail, no AUDIT_TRAIL_*.
    shell = context.operator_shell
    desk = shell.root / "auditor"
    (desk / "keys").mkdir(parents=True, exist_ok=True)
    for name in ("proof.json", "keys/signing.pub"):
        (desk / name).write_bytes((shell.root / name).read_bytes())
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIT_TRAIL_")}
    argv = command.split()
    assert argv[0] == "audit-engine", command
    shell.last = subprocess.run(
        [sys.executable, "-m", "audit_engine", *argv[1:]],
        capture_output=True,
        text=True,
        cwd=desk,
        env=env,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    assert "Traceback" not in shell.last.stderr, shell.last.stderr
    assert sorted(p.name for p in desk.iterdir()) == ["keys", "proof.json"], "a trail appeared"


@then('audit-engine reports an error saying "{words}"')
def then_reports_error(context: Context, words: str) -> None:
    stderr = context.operator_shell.result.stderr
    assert stderr.startswith("Error: "), stderr
    assert words in stderr, stderr


@then("audit-engine's report says {rows:d} rows and {checkpoints:d} checkpoints were verified")
def then_cli_checkpoints(context: Context, rows: int, checkpoints: int) -> None:
    out = context.operator_shell.result.stdout
    assert out.startswith(f"OK: {rows} rows verified"), out
    assert f"{checkpoints} checkpoints" in out, out


@then(
    "audit-engine says the entry is row {entry:d} of the trail, "
    "as of its checkpoint of {size:d} entries"
)
def then_proof_holds(context: Context, entry: int, size: int) -> None:
    out = context.operator_shell.result.stdout
    (trail,) = query(
        context.world.database, "SELECT value FROM audit_engine_meta WHERE key = 'trail_id'"
    )[0]
    assert out.startswith(
        f"OK: entry {context.proved_event} (row {entry}) is in audit-engine/{trail} "
        f"as of its checkpoint of {size} entries"
    ), out
