"""The ``audit-engine`` command: arguments to the public API, errors to ``Error: ...``.

No SQL and no business logic here: each command builds its arguments, calls the library, and
prints. :class:`_Group` is the one place where the engine's errors (and bad input) become
``Error: <message>`` with exit code 1; click's usage errors exit 2.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from audit_engine.cli.copy import copy
from audit_engine.cli.datasette import datasette_metadata_command
from audit_engine.cli.integrity import keygen, prove, verify, verify_proof_command
from audit_engine.cli.output import (
    CountParam,
    DatabaseParam,
    DurationParam,
    SecondsParam,
    TimeParam,
    deadletter_file,
    describe_error,
    plural,
    progress,
    render_reference,
    reserved_output,
    root_chain_key,
    root_database,
    whole_file,
)
from audit_engine.cli.record import record
from audit_engine.cli.reports import bench, demo, stats
from audit_engine.errors import AuditEngineError
from audit_engine.formats import (
    FOLLOW_WIDTHS,
    FORMATS,
    Table,
    entry_object,
    json_text,
    render,
    table_cells,
)
from audit_engine.models import AuditEntry, Operation, Outcome
from audit_engine.storage.store import AuditStore

PROG = "audit-engine"


def _quiet_broken_pipe() -> None:
    # The reader went away (`audit-engine query | head`): stop quietly, as other tools do. Point
    # stdout at /dev/null so the interpreter's final flush does not complain again.
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(1)


class _Group(click.Group):
    """The one place where library errors become CLI errors."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            _quiet_broken_pipe()
        # sqlite3.Error: a safety net; the library wraps what it knows in AuditStoreError.
        except (AuditEngineError, ValueError, OSError, sqlite3.Error) as exc:
            raise click.ClickException(describe_error(exc)) from exc


@contextmanager
def _store(ctx: click.Context) -> Iterator[AuditStore]:
    with AuditStore(root_database(ctx), chain_key_file=root_chain_key(ctx)) as store:
        yield store


def _filters(func: Any) -> Any:
    """The filters of AuditStore.query, as options."""
    options = [
        click.option("--actor", help="Only entries by this actor."),
        click.option("--action", help="Only entries with this action."),
        click.option(
            "--operation",
            type=click.Choice([o.value for o in Operation]),
            help="Only entries of this operation.",
        ),
        click.option(
            "--outcome", type=click.Choice([o.value for o in Outcome]), help="Only this outcome."
        ),
        click.option("--resource-type", help="Only entries on this resource type."),
        click.option("--resource-id", help="Only entries on this resource id."),
        click.option("--correlation-id", help="Only entries with this correlation id."),
        click.option(
            "--since",
            type=TimeParam(),
            help="From this time on (inclusive): ISO-8601 (without an offset it is local time, "
            "as `date` reads it; add Z for UTC), or back from now: 15m, 24h, 7d.",
        ),
        click.option(
            "--until", type=TimeParam(), help="Before this time (exclusive); same forms as --since."
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.group(cls=_Group)
@click.option(
    "--db",
    "database",
    type=DatabaseParam(),
    envvar="AUDIT_TRAIL_DATABASE",
    show_envvar=True,
    default=Path("audit.db"),
    show_default=True,
    help="The audit trail: a SQLite file, or a postgresql://user@host:port/dbname URL "
    "(needs the postgres extra).",
)
@click.option(
    "--chain-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="AUDIT_TRAIL_CHAIN_KEY_FILE",
    show_envvar=True,
    help="The chain key file of a keyed trail (audit-engine keygen): verify checks keyed rows "
    "with its keys; commands that write (record, replay-deadletter, copy, demo, bench) key new "
    "rows with its first key.",
)
@click.version_option(package_name="audit-engine", prog_name=PROG)
def main(database: Path | str, chain_key_file: Path | None) -> None:
    """Record, read, prove and prune an audit trail kept in SQLite or PostgreSQL."""


@main.command()
@click.pass_context
def init(ctx: click.Context) -> None:
    """Create the audit database, or migrate it to the current schema."""
    with AuditStore(root_database(ctx), create=True, chain_key_file=root_chain_key(ctx)) as store:
        store.quick_check()  # "ready" is never said of a damaged file
        click.echo(f"Audit database ready at {store.path} (schema version {store.schema_version})")


@main.command()
@_filters
@click.option("--limit", type=CountParam(min=0), help="At most this many entries.")
@click.option("--newest-first", is_flag=True, help="Newest entries first.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="table for people; json (one array), jsonl or csv for programs.",
)
@click.pass_context
def query(
    ctx: click.Context, /, limit: int | None, newest_first: bool, fmt: str, **filters: Any
) -> None:
    """Print the entries that match every filter, in commit order.

    Streams: rows are read a page at a time and printed as they come, so any number of them
    fits in memory. The table's columns fit its first 1000 rows; a longer value further down
    is cut to fit, ending in "…" (json, jsonl and csv print every value whole).
    """
    with _store(ctx) as store:
        for line in render(store.query(limit=limit, newest_first=newest_first, **filters), fmt):
            click.echo(line)


@main.command()
@click.option(
    "-n",
    "--lines",
    "count",
    type=CountParam(min=1),
    default=10,
    show_default=True,
    help="How many of the newest entries to print.",
)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new entries until interrupted.")
@click.option(
    "--interval",
    # At most an hour: time.sleep() overflows on huge values (1e300, inf).
    type=SecondsParam(min=0.05, max=3600.0),
    default=1.0,
    show_default=True,
    help="Seconds between two looks for new entries with --follow.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "jsonl"]),
    default="table",
    show_default=True,
    help="table for people, jsonl for programs.",
)
@click.pass_context
def tail(ctx: click.Context, count: int, follow: bool, interval: float, fmt: str) -> None:
    """Print the newest entries (oldest of them first); -f follows new ones.

    With -f the table's columns keep the widths of its header: a longer value is cut to fit,
    ending in "…" (--format jsonl prints every value whole).
    """
    with _store(ctx) as store:
        last = store.last_id()
        rows = store.entries_after(max(0, last - count), limit=count)
        entries = [e for _, e in rows]
        # Followed rows must line up with a header printed before they were known.
        table = Table.fitting(
            [table_cells(e) for e in entries], minimum=FOLLOW_WIDTHS if follow else ()
        )
        if fmt == "table":
            click.echo(table.header())
        _print_rows(entries, fmt, table)
        last = rows[-1][0] if rows else last
        if not follow:
            return
        try:
            while True:
                time.sleep(interval)  # a CLI poll, like tail -f
                rows = store.entries_after(last)
                if rows:
                    _print_rows([e for _, e in rows], fmt, table)
                    last = rows[-1][0]
        except KeyboardInterrupt:
            return


def _print_rows(entries: list[AuditEntry], fmt: str, table: Table) -> None:
    for entry in entries:
        click.echo(
            json_text(entry_object(entry)) if fmt == "jsonl" else table.line(table_cells(entry))
        )
    sys.stdout.flush()


@main.command()
@_filters
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv"]),
    default="jsonl",
    show_default=True,
    help="jsonl keeps ids and hashes per row; csv has a header row.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write to this file instead of standard output.",
)
@click.pass_context
def export(ctx: click.Context, /, fmt: str, output: Path | None, **filters: Any) -> None:
    """Export entries with their hashes, streamed: JSON lines (verifiable offline) or CSV.

    With --output the file is readable by its owner only, and appears only once the export is
    complete: a failed export leaves no partial file, and an earlier file as it was. A symlink
    is written through (the link stays); a FIFO or a terminal is written into, never replaced.
    The database's own files and its dead-letter files are refused, and so is any existing file
    that looks like a key, a checkpoint log or an SQLite database.
    """
    reserved = None if output is None else reserved_output(output, root_database(ctx))
    if reserved is not None:
        raise click.BadParameter(reserved, param_hint="'--output'")
    with _store(ctx) as store:
        if output is None:
            for line in store.export(fmt, **filters):
                click.echo(line, nl=False)
            return
        total = store.count(**filters)
        written = 0
        with whole_file(output) as out, progress(total, "exporting") as bar:
            for line in store.export(fmt, **filters):
                out.write(line)
                if not (fmt == "csv" and written == 0 and line.startswith("id,")):
                    bar.update(1)
                written += 1
    count = written - 1 if fmt == "csv" else written
    click.echo(f"Exported {plural(count, 'entry', 'entries')} to {output}")


@main.command()
@click.option(
    "--older-than",
    type=DurationParam(),
    required=True,
    help="Delete entries older than this age, e.g. 90d, 12w, 24h.",
)
@click.option(
    "--batch-size",
    type=CountParam(min=1),
    default=10000,
    show_default=True,
    help="Rows deleted per transaction.",
)
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@click.pass_context
def purge(ctx: click.Context, older_than: timedelta, batch_size: int, dry_run: bool) -> None:
    """Delete old entries in batches, keeping the rest of the chain provable."""
    with _store(ctx) as store:
        planned = store.purge(older_than, batch_size=batch_size, dry_run=True)
        if dry_run:
            click.echo(
                f"Would purge {plural(planned.rows_deleted, 'entry', 'entries')} older than "
                f"{_utc(planned.cutoff)}"
            )
            return
        with progress(planned.rows_deleted, "purging") as bar:
            report = store.purge(older_than, batch_size=batch_size, on_batch=bar.update)
    click.echo(
        f"Purged {plural(report.rows_deleted, 'entry', 'entries')} older than "
        f"{_utc(report.cutoff)} in {plural(report.batches, 'batch', 'batches')} "
        f"({report.duration_s:.2f}s)"
    )


def _utc(moment: datetime) -> str:
    # isoformat pads the year (strftime's %Y does not below 1000).
    return (
        moment.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="seconds") + " UTC"
    )


@main.command("replay-deadletter")
@click.option(
    "--file",
    "path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The dead-letter file [default: AUDIT_TRAIL_DEADLETTER_PATH, else "
    "<db>.deadletter.jsonl beside a SQLite file, or ~/.local/share/audit-engine/"
    "<host>-<port>-<dbname>-<digest>.deadletter.jsonl for a URL]; its side files "
    "(<file>.<pid>-<n>.jsonl) are read too.",
)
@click.option(
    "--from",
    "log",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Instead, a saved log file: re-import the entries logged as 'audit entry LOST to "
    "disk, logged instead: {...}'. The log is not changed.",
)
@click.pass_context
def replay_deadletter(ctx: click.Context, path: Path | None, log: Path | None) -> None:
    """Re-import entries the writer could not commit, then remove the replayed lines.

    Nothing to replay (no dead-letter file) is not an error: it says so and exits 0.
    """
    if path is not None and log is not None:
        raise click.UsageError("--file and --from cannot be used together")
    target = path if path is not None else deadletter_file(root_database(ctx))
    with _store(ctx) as store:
        report = store.replay_dead_letters(target if log is None else None, from_log=log)
    if not report.files:
        click.echo(f"Nothing to replay: no dead-letter file at {target}")
        return
    replayed = (
        f"Replayed {plural(report.replayed, 'entry', 'entries')} "
        f"({report.already_present} already stored)"
    )
    if log is not None:
        click.echo(f"{replayed} from {log}; {plural(report.kept, 'line')} could not be read")
    else:
        files = f" from {len(report.files)} files" if len(report.files) > 1 else ""
        click.echo(f"{replayed}{files}; {plural(report.kept, 'line')} kept")
    if report.errors:
        for problem in report.errors:
            click.echo(f"Error: {problem}", err=True)
        ctx.exit(1)


main.add_command(record)
main.add_command(verify)
main.add_command(prove)
main.add_command(verify_proof_command)
main.add_command(keygen)
main.add_command(stats)
main.add_command(demo)
main.add_command(bench)
main.add_command(copy)
main.add_command(datasette_metadata_command)


@main.command("cli-docs", hidden=True)
def cli_docs() -> None:
    """Print docs/cli.md (the reference generated from every command's --help)."""
    click.echo(render_reference(main, PROG), nl=False)
