"""The report-style commands: ``stats``, ``demo`` and ``bench`` (added to the group in cli).

Each is one call into the library and a few lines of printing.
"""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from audit_engine.cli.bench import (
    DEFAULT_ROUNDS,
    MODES,
    SYNC_DEFAULT_MAX_EVENTS,
    THREADED_MODES,
    BenchReport,
    run_bench,
    total_events,
)
from audit_engine.cli.bench_postgres import (
    INSERT_COMMIT_MAX_EVENTS,
    PgBenchReport,
    run_pg_bench,
    total_pg_events,
)
from audit_engine.cli.bench_rounds import MAX_THREADS, Ratio, parse_thread_counts
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
BENCH_MAX_ROUNDS = 100


class ThreadCountsParam(click.ParamType):  # type: ignore[type-arg]  # generic in click >= 8.5 only
    """``--threads 1,2,4,8``: one thread count or a comma list of them (a sweep)."""

    name = "count[,count...]"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[int, ...]:
        if isinstance(value, tuple):  # the default, already converted
            return value
        try:
            return parse_thread_counts(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.command()
@click.option(
    "--events",
    type=click.IntRange(min=1, max=BENCH_MAX_EVENTS),
    default=20000,
    show_default=True,
    help=f"Events per mode and round (sync-default does at most {SYNC_DEFAULT_MAX_EVENTS}, "
    f"insert-commit {INSERT_COMMIT_MAX_EVENTS}).",
)
@click.option(
    "--db",
    "database",
    type=DatabaseParam(),
    default=None,
    help="A postgresql:// URL: bench that server instead of SQLite (modes insert-commit, engine, "
    "engine-keyed, ceiling, each in a scratch schema dropped afterwards, one round, one thread "
    "count); the global --db does the same when given on the command line. Without either, "
    "SQLite in a temporary directory.",
)
@click.option(
    "--threads",
    type=ThreadCountsParam(),
    default=(1,),
    show_default="1",
    help=f"Producer threads of logging-queue, engine and engine-keyed (each 1 to {MAX_THREADS}); "
    "a comma list such as 1,2,4,8 runs them once per count in every round (a sweep).",
)
@click.option(
    "--rounds",
    type=click.IntRange(min=1, max=BENCH_MAX_ROUNDS),
    default=DEFAULT_ROUNDS,
    show_default=True,
    help="Rounds: each runs every mode once, in an order that rotates from round to round; "
    "the report gives medians, and each round's ratios to the ceiling and to logging-queue.",
)
@click.option(
    "--mode",
    "modes",
    type=click.Choice(MODES),
    multiple=True,
    help="Run only this mode (repeat for several) [default: all].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.pass_context
def bench(
    ctx: click.Context,
    events: int,
    threads: tuple[int, ...],
    rounds: int,
    modes: tuple[str, ...],
    database: Path | str | None,
    as_json: bool,
) -> None:
    """Measure the engine against the usual alternatives and SQLite's ceiling, side by side.

    Modes: sync-default and sync-wal (INSERT + COMMIT per event), thread-per-row (a queue and a
    thread committing each row), logging-queue (the standard library's QueueHandler and
    QueueListener with a handler batching rows into SQLite), engine (record() to commit, hash
    chain on), engine-keyed (the same with a chain key: --chain-key-file, else a throwaway
    one), ceiling (prebuilt rows, executemany, 500 per transaction). All write the same row into
    the engine's schema, each on a fresh database, in rounds whose order rotates.
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
    key_file = root_chain_key(ctx)  # engine-keyed's key (a throwaway one when not given)
    if isinstance(database, str):
        given = [
            option
            for option, name in (("--rounds", "rounds"), ("--mode", "modes"))
            if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT
            and not (name == "rounds" and rounds == 1)  # one round is what it runs
        ]
        if len(threads) > 1:
            given.append("a --threads list")
        if given:
            raise click.ClickException(
                f"{' and '.join(given)}: for the SQLite bench only (the PostgreSQL bench runs "
                "its four modes once, with one thread count)"
            )
        with progress(total_pg_events(events), "benchmarking") as bar:
            pg = run_pg_bench(
                database, events, threads[0], on_progress=bar.update, chain_key_file=key_file
            )
        _print_pg(pg, as_json)
        return
    selected = tuple(m for m in MODES if m in modes) if modes else MODES
    with progress(total_events(events, selected, threads, rounds), "benchmarking") as bar:
        report = run_bench(
            events,
            threads,
            rounds=rounds,
            modes=selected,
            on_progress=bar.update,
            chain_key_file=key_file,
        )
    if as_json:
        click.echo(report.model_dump_json(indent=2))
        return
    _print_rounds(report)


def _print_pg(report: PgBenchReport, as_json: bool) -> None:
    if as_json:
        click.echo(report.model_dump_json(indent=2))
        return
    click.echo(
        f"Python {report.python}, PostgreSQL {report.server} at {report.database} "
        f"(fsync={report.fsync}), {report.machine}, {report.cpus} CPUs; "
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


def _print_rounds(report: BenchReport) -> None:
    counts = ",".join(map(str, report.threads))
    click.echo(
        f"Python {report.python}, SQLite {report.sqlite}, {report.machine}, {report.cpus} CPUs; "
        f"{report.events} events, {report.rounds} round(s) in rotating order, "
        f"recording threads {counts}; medians of the rounds"
    )
    click.echo(
        f"{'mode':<16}{'threads':>8}{'events':>8}{'events/s':>12}{'caller p50':>12}"
        f"{'caller p99':>12}{'caller p99.9':>14}{'commits/ev':>12}{'x ceiling':>11}"
        f"{'range':>13}"
    )
    for r in report.results:
        spread = r.ratio_to_ceiling
        click.echo(
            f"{r.mode:<16}{r.threads:>8}{r.events:>8}{r.events_per_s:>12,.0f}"
            f"{_micros(r.caller_p50_us):>12}{_micros(r.caller_p99_us):>12}"
            f"{_micros(r.caller_p999_us):>14}{r.commits_per_event:>12.4f}"
            f"{_times(spread.median if spread else None):>11}{_range(spread):>13}"
        )
    if report.ratios:
        click.echo("")
        click.echo("Ratios of events/s within each round (median [min-max]):")
        for q in report.ratios:
            click.echo(
                f"  {q.numerator} / {q.denominator}, {_threads(q.threads)}: "
                f"{q.median:.2f} [{_range(q)}]"
            )
    targets = [r for r in report.results if r.mode in THREADED_MODES]
    if targets:
        click.echo("")
        click.echo("Caller latency against the targets, rounds on target:")
    for r in targets:
        click.echo(
            f"  {r.mode}, {_threads(r.threads)}: "
            f"p99 ≤ 50 µs in {r.rounds_p99_on_target}/{r.rounds} rounds, "
            f"p99.9 ≤ 1 ms in {r.rounds_p999_on_target}/{r.rounds} rounds"
        )


def _micros(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}us"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _range(spread: Ratio | None) -> str:
    return "-" if spread is None else f"{spread.min:.2f}-{spread.max:.2f}"


def _threads(count: int) -> str:
    return f"{count} thread{'s' if count > 1 else ''}"
