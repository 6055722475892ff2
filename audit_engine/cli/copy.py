"""The ``copy`` command: one trail into another, across backends (:func:`copy_trail`).

It names both trails itself, so the global ``--db`` plays no part. Library errors become
``Error: ...`` in the group, as for every command.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import click

from audit_engine.cli.output import (
    CountParam,
    DatabaseParam,
    DurationParam,
    plural,
    progress,
    root_chain_key,
)
from audit_engine.storage.copying import DEFAULT_COPY_BATCH_SIZE, copy_trail
from audit_engine.storage.store import AuditStore


@click.command()
@click.argument("source", type=DatabaseParam())
@click.argument("dest", type=DatabaseParam())
@click.option(
    "--batch-size",
    type=CountParam(min=1),
    default=DEFAULT_COPY_BATCH_SIZE,
    show_default=True,
    help="Entries read and appended per transaction.",
)
@click.option(
    "--min-retention",
    type=DurationParam(),
    metavar="DURATION",
    help="As for verify, for both trails [default: the retention setting, "
    "AUDIT_TRAIL_RETENTION_DAYS].",
)
@click.pass_context
def copy(
    ctx: click.Context,
    source: Path | str,
    dest: Path | str,
    batch_size: int,
    min_retention: timedelta | None,
) -> None:
    """Copy the trail SOURCE into DEST (each a SQLite file or a postgresql:// URL).

    SOURCE must verify first, else nothing is copied. DEST is created if needed; the entries
    it lacks are appended to its own chain (new ids and hashes, the same event_id, timestamp
    and fields), so running the copy again copies nothing twice. DEST is verified afterwards.
    Keep the printed source head with the destination head: together they tie the two chains.
    The global --db is not used; the global --chain-key-file verifies keyed rows of either
    trail and keys the rows appended to DEST.
    """
    key_file = root_chain_key(ctx)
    with AuditStore(source, chain_key_file=key_file) as store:
        total = store.count()  # only the bar's length: entries recorded meanwhile may add some
    with progress(total, "copying") as bar:
        report = copy_trail(
            source,
            dest,
            batch_size=batch_size,
            on_batch=bar.update,
            min_retention=min_retention,
            chain_key_file=key_file,
        )
    source_head = (
        f"{report.source_head.id}:{report.source_head.hash}" if report.source_head else "empty"
    )
    dest_head = f"{report.dest_head.id}:{report.dest_head.hash}" if report.dest_head else "empty"
    click.echo(
        f"Copied {plural(report.copied, 'entry', 'entries')} from {report.source} to "
        f"{report.destination} ({report.already_present} already present) in "
        f"{plural(report.batches, 'batch', 'batches')}; source head {source_head}; "
        f"destination head {dest_head}; destination verified "
        f"({plural(report.dest_rows_verified, 'row')})"
    )
