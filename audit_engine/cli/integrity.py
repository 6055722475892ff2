"""The integrity commands: ``verify`` (the chain, the purge records, and against signed
checkpoints), ``prove`` and ``verify-proof`` (one entry's inclusion proof), ``keygen``.

Each builds its arguments, calls the library once and prints; errors become ``Error: ...`` in
the group (commands.py). What a check found wrong is an error too (exit 1), naming it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import click

from audit_engine.cli.output import (
    DurationParam,
    plural,
    refuse_output,
    root_chain_key,
    root_database,
    whole_file,
)
from audit_engine.formats import json_text
from audit_engine.settings import AuditSettings
from audit_engine.storage.chain import ChainHead, VerifyReport
from audit_engine.storage.keys import generate_keys
from audit_engine.storage.proofs import load_proof, verify_proof
from audit_engine.storage.store import AuditStore

_EXISTING = click.Path(exists=True, dir_okay=False, path_type=Path)


@contextmanager
def _store(ctx: click.Context) -> Iterator[AuditStore]:
    # The global --chain-key-file: keyed rows are checked (verify) with its keys.
    with AuditStore(root_database(ctx), chain_key_file=root_chain_key(ctx)) as store:
        yield store


def _head(value: str | None) -> ChainHead | None:
    if value is None:
        return None
    ident, sep, digest = value.partition(":")
    if not sep or not ident.isdigit() or len(digest) != 64:
        raise click.BadParameter("use ID:HASH as printed by verify", param_hint="'--expected-head'")
    return ChainHead(id=int(ident), hash=digest)


@click.command()
@click.option(
    "--expected-head",
    metavar="ID:HASH",
    help="A head published earlier: the chain must still reach it (detects truncation).",
)
@click.option(
    "--min-retention",
    type=DurationParam(),
    metavar="DURATION",
    help=(
        "Refuse a purge anchor whose cutoff is less than this before its purge, e.g. 90d "
        "[default: the retention setting, AUDIT_TRAIL_RETENTION_DAYS]."
    ),
)
@click.option(
    "--checkpoints",
    type=_EXISTING,
    metavar="FILE",
    help="The signed checkpoint log (checkpoint_file): the trail must still hold what each "
    "checkpoint committed to, and reach the newest. Needs --public-key.",
)
@click.option(
    "--public-key",
    type=_EXISTING,
    metavar="FILE",
    help="The checkpoints' signing public key (signing.pub of keygen).",
)
@click.pass_context
def verify(
    ctx: click.Context,
    expected_head: str | None,
    min_retention: timedelta | None,
    checkpoints: Path | None,
    public_key: Path | None,
) -> None:
    """Check the hash chain and the purge records (and the trail against its signed
    checkpoints); exit 1 naming what is wrong and why."""
    head = _head(expected_head)
    if (checkpoints is None) != (public_key is None):
        raise click.UsageError("--checkpoints and --public-key go together")
    if min_retention is None:
        min_retention = timedelta(days=AuditSettings().retention_days)
    with _store(ctx) as store:
        report = store.verify(
            expected_head=head,
            min_retention=min_retention,
            checkpoints=checkpoints,
            public_key=public_key,
        )
    for warning in report.warnings:
        click.echo(f"Warning: {warning}", err=True)
    if not report.ok:
        raise click.ClickException(_failure(report))
    tip = f"; head {report.head.id}:{report.head.hash}" if report.head else ""
    held = ""
    if checkpoints is not None:
        held = f"; {plural(report.checkpoints_checked, 'checkpoint')} held"
        if report.checkpoints_purged:
            held += f" ({report.checkpoints_purged} older, purged: signature only)"
    click.echo(f"OK: {plural(report.rows_checked, 'row')} verified{tip}{held}")


def _failure(report: VerifyReport) -> str:
    signed = report.checkpoint_problem
    if signed is not None and report.reason == signed:  # the chain itself held
        return f"the trail does not match its signed checkpoints: {signed}"
    if report.unchecked_from is not None:  # keyed rows, and no key (or not theirs)
        held = (
            f"; {plural(report.checkpoints_checked, 'signed checkpoint')} held"
            if signed is None and report.checkpoints_checked
            else ""
        )
        message = (
            f"not verified: {report.reason} "
            f"({plural(report.rows_checked, 'other row')} verified{held})"
        )
    elif report.first_bad_id is None and report.head is not None:  # e.g. a key, no keyed row
        message = f"not verified: {report.reason}"
    elif report.first_bad_id is None:  # a purge anchor or cleanup run, before any row
        hint = (
            "; --min-retention defaults to the retention setting (AUDIT_TRAIL_RETENTION_DAYS)"
            if report.reason is not None and "minimum retention" in report.reason
            else ""
        )
        message = f"purge records refused: {report.reason}{hint}"
    else:
        message = (
            f"chain broken at row {report.first_bad_id}: {report.reason} "
            f"({plural(report.rows_checked, 'row')} verified before it)"
        )
    # Both are said: the chain's finding first (the earlier), then the checkpoints'.
    return (
        message
        if signed is None
        else f"{message}; nor does it match its signed checkpoints: {signed}"
    )


@click.command()
@click.argument("event_id")
@click.option(
    "--checkpoints",
    type=_EXISTING,
    metavar="FILE",
    help="Prove against the newest checkpoint of this log that covers the entry "
    "[default: the copies the writer keeps in the trail].",
)
@click.option(
    "--public-key",
    type=_EXISTING,
    metavar="FILE",
    help="Use only checkpoints whose signature verifies with this public key (signing.pub).",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the proof to this file (readable by its owner only) instead of standard output.",
)
@click.pass_context
def prove(
    ctx: click.Context,
    event_id: str,
    checkpoints: Path | None,
    public_key: Path | None,
    output: Path | None,
) -> None:
    """Print the inclusion proof of the entry EVENT_ID: the entry, its place in the Merkle tree,
    the audit path and the signed checkpoint it leads to (JSON). Anyone with the public key
    checks it with verify-proof, without the database.

    --output refuses what export --output refuses (the database's own files, its dead-letter
    files, any file that looks like a key, a checkpoint log or an SQLite database), the key files
    in use and the checkpoint log."""
    if output is not None:
        refuse_output(ctx, output, checkpoints, public_key)
    with _store(ctx) as store:
        proof = store.prove(event_id, checkpoints=checkpoints, public_key=public_key)
    text = json_text(proof, indent=2) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    with whole_file(output) as out:
        out.write(text)
    click.echo(f"Proof of {event_id} written to {output}", err=True)


@click.command("verify-proof")
@click.argument("proof_file", metavar="FILE", type=_EXISTING)
@click.option(
    "--public-key",
    type=_EXISTING,
    metavar="FILE",
    required=True,
    help="The checkpoints' signing public key (signing.pub of keygen).",
)
def verify_proof_command(proof_file: Path, public_key: Path) -> None:
    """Check an inclusion proof (from prove) offline: the checkpoint's signature, the entry's
    hash and its audit path to the signed root. No database is opened."""
    report = verify_proof(load_proof(proof_file), public_key)
    if not report.ok:
        raise click.ClickException(f"the proof does not hold: {report.reason}")
    click.echo(
        f"OK: entry {report.event_id} (row {report.entry_id}) is in {report.origin} "
        f"as of its checkpoint of {plural(report.tree_size or 0, 'entry', 'entries')} "
        f"(head row {report.head_id}, signed {report.checkpoint_time})"
    )


@click.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The directory to write into (created 0700 when missing).",
)
def keygen(out_dir: Path) -> None:
    """Write a new chain key (chain.key) and Ed25519 signing pair (signing.key, signing.pub)
    into a directory; the secrets readable by their owner only. Never overwrites a key."""
    chain_key, signing_key, signing_pub = generate_keys(out_dir)
    click.echo(f"Chain key:          {chain_key}  (AUDIT_TRAIL_CHAIN_KEY_FILE; keep it secret)")
    click.echo(f"Signing key:        {signing_key}  (AUDIT_TRAIL_SIGNING_KEY_FILE; keep it secret)")
    click.echo(f"Signing public key: {signing_pub}  (give it to whoever verifies)")
