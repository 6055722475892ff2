"""Steps for features/keyed_chain.feature: a trail whose links are HMACs under the team's key.

The team's keys are made by ``generate_keys`` (what ``audit-engine keygen`` runs) in the
scenario's directory. The forger below can write the database and knows the documented
algorithm, but not the key: the best it can do is recompute the chain under a key of its own.
"""

from __future__ import annotations

import hmac
import os
import stat
from pathlib import Path
from typing import Any

from behave import given, then, when
from behave.runner import Context
from forgery import FIELDS, forger_connection, relink
from trail_backend import query

from audit_engine import AuditService, AuditStore
from audit_engine.storage.chain import content_digest, row_hash
from audit_engine.storage.keys import chain_key_id, generate_keys, load_chain_keys

WAIT_S = 10.0
KEYED = "2"


def _team_key_file(context: Context) -> Path:
    """The team's chain key file, made once per scenario (with the signing pair beside it)."""
    world = context.world
    if getattr(world, "chain_key_file", None) is None:
        chain_key, world.signing_key, world.public_key = generate_keys(world.root / "team-keys")
        world.chain_key_file = chain_key
    path: Path = world.chain_key_file
    return path


def _record_with(context: Context, count: int, key_file: Path | None) -> None:
    world = context.world
    service = world.open_service(world.settings(chain_key_file=key_file))
    world.record_notes(count)
    assert service.close(timeout=WAIT_S), f"close() did not drain: {service.stats()}"


def _verify(context: Context, key_file: Path | None) -> None:
    with AuditStore(context.world.database, chain_key_file=key_file) as store:
        context.world.report = store.verify()


def _versions(context: Context) -> list[tuple[Any, ...]]:
    sql = "SELECT first_id, version, key_id FROM audit_chain_versions ORDER BY first_id"
    return query(context.world.database, sql)


# -- the keyed trail --------------------------------------------------------------------------


@given("a trail keyed with the team's chain key, holding {count:d} entries")
def given_keyed_trail(context: Context, count: int) -> None:
    _record_with(context, count, _team_key_file(context))


@given("a tool that has recorded {count:d} entries without a chain key")
def given_unkeyed_trail(context: Context, count: int) -> None:
    _record_with(context, count, None)


@when("the tool is restarted with the team's chain key and records {count:d} entries")
def when_restart_keyed(context: Context, count: int) -> None:
    _record_with(context, count, _team_key_file(context))


@when(
    "the operator rotates the chain key, putting a new key first in the key file "
    "and keeping the old one"
)
def when_rotate(context: Context) -> None:
    world = context.world
    old = _team_key_file(context)
    new_key = os.urandom(32).hex()
    rotated = world.root / "rotated.key"
    fd = os.open(rotated, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(f"# rotated: the new key writes\n{new_key}\n{old.read_text(encoding='utf-8')}")
    world.rotated_key_file = rotated
    world.old_key_id = load_chain_keys(old).writer.id
    world.new_key_id = chain_key_id(bytes.fromhex(new_key))


@when("the tool is restarted with the rotated key file and records {count:d} entries")
def when_restart_rotated(context: Context, count: int) -> None:
    _record_with(context, count, context.world.rotated_key_file)


# -- forging without the key ------------------------------------------------------------------


@when(
    "someone who can write the database but has no key changes the actor of entry {entry:d} to "
    '"{actor}" and recomputes the chain after it'
)
def when_forge_without_key(context: Context, entry: int, actor: str) -> None:
    # The forger's own key: the documented HMAC, done right, with the wrong secret.
    guess = os.urandom(32)
    with forger_connection(context.world.database) as conn:
        conn.execute("UPDATE audit_entries SET actor = ? WHERE id = ?", (actor, entry))
        (prev_hash,) = conn.execute(
            "SELECT prev_hash FROM audit_entries WHERE id = ?", (entry,)
        ).fetchone()
        relink(
            conn,
            entry,
            prev_hash,
            lambda body: hmac.digest(guess, content_digest(body, KEYED), "sha256").hex(),
        )


@given(
    "a trail keyed with the team's chain key and signing a checkpoint every {every:d} entries, "
    "holding {count:d} entries"
)
def given_keyed_signed_trail(context: Context, every: int, count: int) -> None:
    world = context.world
    key_file = _team_key_file(context)
    # The checkpoint log the checkpoint steps read: checkpoints.jsonl beside the trail.
    world.settings_values.update(
        chain_key_file=key_file,
        signing_key_file=world.signing_key,
        checkpoint_file=world.root / "checkpoints.jsonl",
        checkpoint_every=every,
        checkpoint_interval=3600,
    )
    service = world.open_service()
    for _ in range(count // every):
        world.record_notes(every)
        assert service.flush(timeout=WAIT_S), f"flush() timed out: {service.stats()}"
    world.record_notes(count % every)
    assert service.close(timeout=WAIT_S), f"close() did not drain: {service.stats()}"


@when(
    "someone who can write the database but has no key rewrites the trail as an unkeyed one, "
    "recomputing every hash"
)
def when_downgrade(context: Context) -> None:
    # What a forger without the key can make that links: the documented unkeyed chain.
    with forger_connection(context.world.database) as conn:
        conn.execute("DELETE FROM audit_chain_versions WHERE first_id > 1")
        conn.execute("UPDATE audit_chain_versions SET version = '1', key_id = NULL")
        rows = conn.execute(f"SELECT id, {FIELDS} FROM audit_entries ORDER BY id").fetchall()
        prev_hash = "0" * 64
        for row in rows:
            digest = row_hash((*row, prev_hash))
            conn.execute(
                "UPDATE audit_entries SET prev_hash = ?, hash = ? WHERE id = ?",
                (prev_hash, digest, row[0]),
            )
            prev_hash = digest


# -- verifying --------------------------------------------------------------------------------


@when("the reviewer verifies the trail with the chain key")
def when_verify_keyed(context: Context) -> None:
    _verify(context, _team_key_file(context))


@when("the reviewer verifies the trail without the chain key")
def when_verify_unkeyed(context: Context) -> None:
    _verify(context, None)


@when("the reviewer verifies the trail with the rotated key file")
def when_verify_rotated(context: Context) -> None:
    _verify(context, context.world.rotated_key_file)


@then(
    "verification does not call the trail ok: its {count:d} entries link, but none of them is "
    "keyed although a chain key was given"
)
def then_downgrade_caught(context: Context, count: int) -> None:
    # All a forger without the key can make is an unkeyed chain: with the key given, that
    # is not taken for the team's trail (docs/integrity.md).
    report = context.world.report
    assert not report.ok, f"a keyed trail rewritten unkeyed was called ok: {report}"
    assert report.rows_checked == count, report
    assert report.first_bad_id is None, report
    assert (report.reason or "").startswith(
        "a chain key was given but no row of this trail is keyed"
    ), report.reason


@then("verification fails at entry {entry:d}, reporting the row as modified")
def then_modified(context: Context, entry: int) -> None:
    report = context.world.report
    assert not report.ok, f"the forgery went unnoticed: {report}"
    assert report.first_bad_id == entry, f"expected entry {entry} to be named: {report}"
    assert report.reason == (f"row {entry} was modified (its hash does not match its contents)"), (
        report.reason
    )


@then(
    "verification does not call the trail ok: the entries from {first:d} on cannot be checked "
    "without the chain key"
)
def then_unchecked(context: Context, first: int) -> None:
    report = context.world.report
    assert not report.ok, f"a keyed trail was called ok without its key: {report}"
    assert report.unchecked_from == first, report
    assert report.reason is not None
    assert report.reason.startswith(f"rows from id {first} on are keyed (key "), report.reason


@then("the report names the chain key's id and how to pass the key, but never the key itself")
def then_names_key_id(context: Context) -> None:
    keys = load_chain_keys(_team_key_file(context))
    reason = context.world.report.reason
    assert f"(key {keys.writer.id})" in reason, reason
    assert "set AUDIT_TRAIL_CHAIN_KEY_FILE or pass --chain-key-file" in reason, reason
    assert keys.writer.secret.hex() not in str(context.world.report), "the key leaked"


@then("the trail is keyed from entry {entry:d} on")
def then_keyed_from(context: Context, entry: int) -> None:
    key_id = load_chain_keys(_team_key_file(context)).writer.id
    versions = [tuple(v) for v in _versions(context)]
    assert versions[-1] == (entry, KEYED, key_id), versions
    assert all(v[1] == "1" and v[2] is None for v in versions[:-1]), versions


@then(
    "entries {a:d} to {b:d} are keyed with the old key and entries {c:d} to {d:d} with the new one"
)
def then_rotated(context: Context, a: int, b: int, c: int, d: int) -> None:
    world = context.world
    versions = [tuple(v) for v in _versions(context)]
    assert versions == [(a, KEYED, world.old_key_id), (c, KEYED, world.new_key_id)], versions
    assert [row["id"] for row in world.audit_rows()] == list(range(a, d + 1))


# -- a tool without the key -------------------------------------------------------------------


@when("the tool tries to start its audit service without the chain key")
def when_start_unkeyed(context: Context) -> None:
    world = context.world

    def start() -> AuditService:
        return world.open_service(world.settings(chain_key_file=None))

    world.attempt(start)


@then(
    "the audit service refuses to start, saying the trail is keyed from entry {entry:d} on "
    "and to set chain_key_file"
)
def then_refused_start(context: Context, entry: int) -> None:
    error = context.world.error
    assert error is not None, "the service started and would have written unkeyed entries"
    key_id = load_chain_keys(_team_key_file(context)).writer.id
    expected = f"this trail is keyed from id {entry} on (key {key_id}): set chain_key_file"
    assert expected in str(error), str(error)
    assert context.world.audit_rows()[-1]["id"] == 3


# -- the operator's shell ---------------------------------------------------------------------


@then(
    "the operator's key directory holds chain.key and signing.key readable by the owner only, "
    "and signing.pub"
)
def then_key_files(context: Context) -> None:
    keys = context.operator_shell.root / "keys"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in keys.iterdir()}
    assert modes == {"chain.key": 0o600, "signing.key": 0o600, "signing.pub": 0o644}, modes
    context.operator_keys = {p.name: p.read_bytes() for p in keys.iterdir()}


@when('the application records {count:d} entries with the chain key "{key_file}"')
def when_app_records_keyed(context: Context, count: int, key_file: str) -> None:
    shell = context.operator_shell
    path = shell.root / key_file
    settings = context.world.settings(
        database=shell.database, level="all", cleanup_enabled=False, chain_key_file=path
    )
    with AuditService(settings) as audit:
        for n in range(count):
            assert audit.record(action="note.save", actor="alice", resource_id=f"n-{n}")
    assert audit.stats().written == count, audit.stats()


@then(
    "audit-engine's error says the rows from id {first:d} on cannot be checked "
    "without the chain key"
)
def then_cli_unchecked(context: Context, first: int) -> None:
    stderr = context.operator_shell.result.stderr
    assert stderr.startswith("Error: "), stderr
    assert f"rows from id {first} on are keyed (key " in stderr, stderr
    assert "they cannot be checked without the chain key" in stderr, stderr


@then('audit-engine\'s error names the existing key file "{name}" and leaves the keys unchanged')
def then_keygen_refused(context: Context, name: str) -> None:
    shell = context.operator_shell
    stderr = shell.result.stderr
    assert stderr.startswith("Error: "), stderr
    assert name in stderr, stderr
    assert "already exists" in stderr, stderr
    keys = shell.root / "keys"
    assert {p.name: p.read_bytes() for p in keys.iterdir()} == context.operator_keys
