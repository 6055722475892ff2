"""The report-style commands: ``stats``, ``demo`` and ``bench`` (added to the group in cli).

Each is one call into the library and a few lines of printing.
"""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from audit_engine.cli.bench import SYNC_DEFAULT_MAX_EVENTS, BenchReport, run_bench, total_events
from audit_engine.cli.bench_postgres import (
    INSERT_COMMIT_MAX_EVENTS,
    PgBenchReport,
    run_pg_bench,
    total_pg_events,
)
from audit_engine.cli.demo import DEFAULT_DATABASE, DEFAULT_EVENTS, run_demo
from audit_engine.cli.output import DatabaseParam, progress, root_chain_key, root_database
from audit_engine.settings import is_database_url
from audit_engine.storage.store import AuditStore


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.pass_context
def stats(ctx: click.Context, as_json: bool) -> None:
    """Totals by action, operation, outcome and day; file size; chain status; last cleanup."""
    with AuditStore(root_database(ctx), chain_key_file=root_chain_key(ctx)) as store:
        summary = store.summary()
    if as_json:
        click.echo(summary.model_dump_json(indent=2))
        return
    chain = summary.chain
    run = summary.last_cleanup
    size = f"{summary.file_bytes:,} bytes, schema v{summary.schema_version}"
    span = f"{summary.first_timestamp or '-'} .. {summary.last_timestamp or '-'}"
    if chain.ok:
        status = f"ok ({chain.rows_checked:,} rows)"
    elif chain.unchecked_from is not None:  # keyed rows, and no key (or not theirs)
        status = f"NOT VERIFIED: {chain.reason}"
    elif chain.first_bad_id is None:  # the purge records were refused, before any row
        status = f"BROKEN: purge records refused: {chain.reason}"
    else:
        status = f"BROKEN at row {chain.first_bad_id}: {chain.reason}"
    cleanup = (
        f"{run.finished_at}: {run.rows_deleted:,} rows in {run.batches} batches" if run else "never"
    )
    click.echo(f"Database:   {summary.path} ({size})")
    click.echo(f"Entries:    {summary.entries:,} ({span})")
    click.echo(f"Chain:      {status}")
    click.echo(f"Cleanup:    {cleanup}")
    for title, counts in (
        ("By operation", summary.by_operation),
        ("By outcome", summary.by_outcome),
        ("By action", summary.by_action),
        ("By day", summary.by_day),
    ):
        click.echo(f"{title}:")
        for key, value in counts.items():
            click.echo(f"  {key:<30} {value:>10,}")


@click.command()
@click.option(
    "--db",
    "database",
    type=DatabaseParam(),
    default=None,
    help="SQLite file or postgresql:// URL for the demo's trail: a new file (a database without "
    "an audit trail), or one an earlier demo made (anything else is refused, untouched) "
    f"[default: the global --db if given, else {DEFAULT_DATABASE}]",
)
@click.option(
    "--events",
    type=click.IntRange(min=1),
    default=DEFAULT_EVENTS,
    show_default=True,
    help="How many domain events the simulated tool emits.",
)
@click.pass_context
def demo(ctx: click.Context, database: Path | str | None, events: int) -> None:
    """Run a simulated desktop tool whose events are audited, then show what was written.

    The simulated entries go only to a new file, which the demo marks as its own, or to a file an
    earlier demo made: a real trail (from --db or AUDIT_TRAIL_DATABASE) is refused, untouched.
    On PostgreSQL the demo creates the trail in a database that has none, marked as the demo's
    (in audit_engine_meta); running it again appends to that trail; a database holding any other
    audit trail is refused, untouched.
    """
    root = ctx.find_root()
    explicit = root.get_parameter_source("database") != click.core.ParameterSource.DEFAULT
    target = database or (root_database(ctx) if explicit else DEFAULT_DATABASE)
    with progress(events, "auditing") as bar:
        report = run_demo(
            target, events, on_progress=bar.update, chain_key_file=root_chain_key(ctx)
        )
    click.echo(f"Audited {report.events_emitted} events into {report.database}")
    click.echo(
        f"  accepted {report.accepted}, filtered {report.filtered}, "
        f"written {report.written} in {report.batches} batches, "
        f"dead-lettered {report.dead_lettered}"
    )
    click.echo(
        f"  record() caller cost: p50 {report.record_p50_us:.1f} us, "
        f"p99 {report.record_p99_us:.1f} us; "
        f"{report.events_per_s:,.0f} events/s end to end"
    )
    by_op = ", ".join(f"{op} {n}" for op, n in sorted(report.by_operation.items()))
    click.echo(f"  rows in the trail: {report.rows_in_file} ({by_op})")
    click.echo(f"  verify: {report.verify}")
    click.echo("  latest entries:")
    for entry in report.latest:
        click.echo(
            f"    {entry.timestamp:%Y-%m-%d %H:%M:%S} {entry.actor or '-':<6} {entry.action:<20} "
            f"{entry.operation.value:<7} {entry.outcome.value:<8} "
            f"{entry.resource_type}/{entry.resource_id}{'  [critical]' if entry.critical else ''}"
        )


# The bench builds every event's fields before timing and starts one thread per --threads:
# bounds keep a typo (an extra few zeros) a usage error rather than a MemoryError traceback.
BENCH_MAX_EVENTS = 1_000_000
BENCH_MAX_THREADS = 64


@click.command()
@click.option(
    "--events",
    type=click.IntRange(min=1, max=BENCH_MAX_EVENTS),
    default=20000,
    show_default=True,
    help=f"Events per mode (sync-default does at most {SYNC_DEFAULT_MAX_EVENTS}, "
    f"insert-commit {INSERT_COMMIT_MAX_EVENTS}).",
)
@click.option(
    "--db",
    "database",
    type=DatabaseParam(),
    default=None,
    help="A postgresql:// URL: bench that server instead of SQLite (modes insert-commit, engine, "
    "engine-keyed, ceiling, each in a scratch schema dropped afterwards); the global --db does "
    "the same when given on the command line. Without either, SQLite in a temporary directory.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1, max=BENCH_MAX_THREADS),
    default=1,
    show_default=True,
    help="Threads calling record() in the engine mode.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.pass_context
def bench(
    ctx: click.Context, events: int, threads: int, database: Path | str | None, as_json: bool
) -> None:
    """Measure the engine against the usual alternatives and SQLite's ceiling, side by side.

    Modes: sync-default and sync-wal (INSERT + COMMIT per event), thread-per-row (a queue and a
    thread committing each row), engine (record() to commit, hash chain on), engine-keyed (the
    same with a chain key: --chain-key-file, else a throwaway one), ceiling (prebuilt rows,
    executemany, 500 per transaction). All write the same row into the engine's schema.
    """
    root = ctx.find_root()
    if database is None and root.get_parameter_source("database") is ParameterSource.COMMANDLINE:
        # `audit-engine --db URL bench` as `bench --db URL` (not AUDIT_TRAIL_DATABASE: a bench
        # makes scratch schemas on the server, so only a URL typed for it is benched).
        database = root_database(ctx)
    if database is not None and not is_database_url(database):
        raise click.ClickException(
            "--db takes a postgresql:// URL (the SQLite bench makes its own files)"
        )
    report: PgBenchReport | BenchReport
    key_file = root_chain_key(ctx)  # engine-keyed's key (a throwaway one when not given)
    if isinstance(database, str):
        with progress(total_pg_events(events), "benchmarking") as bar:
            report = run_pg_bench(
                database, events, threads, on_progress=bar.update, chain_key_file=key_file
            )
        backend = f"PostgreSQL {report.server} at {report.database} (fsync={report.fsync})"
    else:
        with progress(total_events(events), "benchmarking") as bar:
            report = run_bench(events, threads, on_progress=bar.update, chain_key_file=key_file)
        backend = f"SQLite {report.sqlite}"
    if as_json:
        click.echo(report.model_dump_json(indent=2))
        return
    click.echo(
        f"Python {report.python}, {backend}, {report.machine}, {report.cpus} CPUs; "
        f"{report.events} events, {report.threads} recording thread(s)"
    )
    click.echo(
        f"{'mode':<16}{'events':>8}{'events/s':>12}{'caller p50':>12}{'caller p99':>12}"
        f"{'commits':>9}{'commits/ev':>12}{'x ceiling':>11}"
    )
    for r in report.results:
        click.echo(
            f"{r.mode:<16}{r.events:>8}{r.events_per_s:>12,.0f}{_micros(r.caller_p50_us):>12}"
            f"{_micros(r.caller_p99_us):>12}{r.commits:>9}{r.commits_per_event:>12.4f}"
            f"{r.ratio_to_ceiling:>11.2f}"
        )


def _micros(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}us"
