"""The ``audit-engine`` command: arguments to the public API, errors to ``Error: ...``.

No SQL and no business logic here. Every command runs inside :class:`_Group`, which maps the
engine's errors (and bad-input ``ValueError``s) to one ``Error: <message>`` line and exit code 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from audit_engine.demo import DEFAULT_DATABASE, DEFAULT_EVENTS, run_demo
from audit_engine.errors import AuditEngineError


class _Group(click.Group):
    """The one place where library errors become CLI errors."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (AuditEngineError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Group)
@click.version_option(package_name="audit-engine")
def main() -> None:
    """Record, read and prove an audit trail kept in SQLite."""


@main.command()
@click.option(
    "--db",
    "database",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_DATABASE,
    show_default=True,
    help="SQLite file to write the demo's audit trail to.",
)
@click.option(
    "--events",
    type=click.IntRange(min=1),
    default=DEFAULT_EVENTS,
    show_default=True,
    help="How many domain events the simulated tool emits.",
)
def demo(database: Path, events: int) -> None:
    """Run a simulated desktop tool whose events are audited into DB, then show what was written."""
    report = run_demo(database, events)
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
    click.echo(f"  rows in the file: {report.rows_in_file} ({by_op})")
    click.echo("  latest entries:")
    for entry in report.latest:
        click.echo(
            f"    {entry.timestamp:%Y-%m-%d %H:%M:%S} {entry.actor or '-':<6} {entry.action:<20} "
            f"{entry.operation.value:<7} {entry.outcome.value:<8} "
            f"{entry.resource_type}/{entry.resource_id}{'  [critical]' if entry.critical else ''}"
        )
