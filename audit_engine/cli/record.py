"""The ``record`` command: entries from options or JSON lines, through the write-behind engine.

Exits 1 whenever an entry it accepted was not committed, so a script can rely on exit 0. On
SIGTERM it stops reading, commits what it accepted, reports, then dies by the signal.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import click

from audit_engine.cli.output import (
    DetailParam,
    describe_error,
    plural,
    root_chain_key,
    root_database,
)
from audit_engine.errors import AuditQueueFull, AuditWriteError
from audit_engine.models import AuditEntry, AuditStats, Operation, Outcome
from audit_engine.pipeline.service import AuditService
from audit_engine.settings import AuditSettings


@click.command()
@click.option("--action", help="What was done (required unless --stdin).")
@click.option("--actor", help="Who did it.")
@click.option(
    "--operation",
    type=click.Choice([o.value for o in Operation]),
    default="execute",
    show_default=True,
    help="The kind of operation.",
)
@click.option(
    "--outcome",
    type=click.Choice([o.value for o in Outcome]),
    default="success",
    show_default=True,
    help="How it ended.",
)
@click.option("--resource-type", help="The kind of resource acted on.")
@click.option("--resource-id", help="The resource acted on.")
@click.option("--correlation-id", help="Ties entries of one request or command together.")
@click.option("--critical", is_flag=True, help="Never filtered; committed before returning.")
@click.option(
    "--detail",
    "details",
    type=DetailParam(),
    multiple=True,
    metavar="KEY=TEXT|KEY:=JSON",
    help="A details field (repeatable), as in HTTPie: KEY=TEXT is text (version=1.10 stays "
    "'1.10'); KEY:=JSON is a JSON value (count:=3, ok:=true, tags:='[\"a\"]').",
)
@click.option(
    "--stdin",
    "from_stdin",
    is_flag=True,
    help="Read entries as JSON lines (objects of entry fields) from standard input.",
)
@click.pass_context
def record(
    ctx: click.Context, /, from_stdin: bool, details: tuple[tuple[str, Any], ...], **fields: Any
) -> None:
    """Record entries through the write-behind engine (the policy from AUDIT_TRAIL_* applies).

    Prints how many were accepted, filtered and written. Exits 1 with "Error: ..." when an
    accepted entry was not committed (it is then kept in the dead-letter file). With --stdin, a
    bad line is reported with its line number and the good lines are still recorded (exit 1 if
    any line was bad). It waits for the database to take what it accepted, as long as that takes
    (a server restarting); on SIGTERM it stops reading, waits at most 5 more seconds, keeps what
    was not committed in the dead-letter file, reports, and ends by the signal.
    """
    if not from_stdin and not fields["action"]:
        raise click.UsageError("Missing option '--action' (or use --stdin).")
    if from_stdin and (fields["action"] or details):
        raise click.UsageError("--stdin takes entries from standard input, not from options.")
    # A one-shot command: retention is the cleanup thread's job in long-running services (or
    # `purge`'s), not a side effect of recording one entry.
    key_file = root_chain_key(ctx)
    keyed = {} if key_file is None else {"chain_key_file": key_file}
    settings = AuditSettings(database=root_database(ctx), cleanup_enabled=False, **keyed)
    with _Termination() as termination:
        problems = _record(settings, from_stdin, details, fields, termination)
    termination.deliver()
    if problems:
        ctx.exit(1)


def _record(
    settings: AuditSettings,
    from_stdin: bool,
    details: tuple[tuple[str, Any], ...],
    fields: dict[str, Any],
    termination: _Termination,
) -> list[str]:
    """Record, close, print the summary and the problems; returns the problems."""
    bad_lines: list[str] = []
    # Critical entries not confirmed within block_timeout: close() decides what became of them.
    unconfirmed: list[tuple[str, str]] = []  # ("line N: " or "", the error)
    audit = AuditService(settings)
    try:
        if from_stdin:
            bad_lines = _record_lines(audit, settings.max_details_bytes, unconfirmed, termination)
        else:
            fields["details"] = dict(details)
            try:
                audit.record(**{k: v for k, v in fields.items() if v is not None})
            except AuditWriteError as exc:
                # Set aside: reported at once. Not confirmed in time: close() decides.
                if not _still_queued(exc):
                    raise
                unconfirmed.append(("", describe_error(exc)))
    finally:
        drained = _close(audit, termination)
    stats = audit.stats()
    filtered = stats.filtered_by_level + stats.excluded + stats.sampled_out + stats.deduplicated
    line = f"accepted {stats.accepted}, filtered {filtered}, written {stats.written}"
    if stats.dead_lettered:
        line += f", dead-lettered {stats.dead_lettered}"
    click.echo(line)
    not_committed = _not_committed(stats, drained, settings.deadletter_file)
    for where, _ in unconfirmed if not not_committed else ():
        click.echo(
            f"Note: {where}the critical entry was committed when the command finished, not "
            f"within block_timeout ({settings.block_timeout}s): the database was busy",
            err=True,
        )
    problems = [
        *bad_lines,
        *(
            f"{where}{error}; when the command finished, not every entry was committed (see below)"
            for where, error in (unconfirmed if not_committed else ())
        ),
        *not_committed,
    ]
    for problem in problems:
        click.echo(f"Error: {problem}", err=True)
    if termination.cut_reading and from_stdin:
        name = signal.Signals(termination.signum or signal.SIGTERM).name
        click.echo(f"Stopped by {name}: the rest of standard input was not read", err=True)
    return problems


def _close(audit: AuditService, termination: _Termination) -> bool:
    """Close the service: wait for every accepted entry to be committed, as long as it takes —
    unless SIGTERM comes (before or meanwhile): then wait at most :data:`TERM_DRAIN_S` more, and
    what the database did not take by then (a server that is down) goes to the dead-letter file.
    """
    # flush() in slices: a signal handler runs only between two waits of the main thread. A
    # flush that fails for another reason than time (no writer thread, entries only in the log)
    # is close()'s to report.
    writer = audit.writer
    while termination.signum is None and writer is not None and writer.alive:
        started = time.monotonic()
        if audit.flush(timeout=_SIGNAL_CHECK_S) or time.monotonic() - started < _SIGNAL_CHECK_S:
            break
    return audit.close(timeout=None if termination.signum is None else TERM_DRAIN_S)


# After SIGTERM, how long record waits for the database to take what it accepted before the rest
# goes to the dead-letter file; and how often a wait without a signal looks for one.
TERM_DRAIN_S = 5.0
_SIGNAL_CHECK_S = 0.2


class _Stopped(Exception):
    """Raised by the SIGTERM handler into a wait for the next line of standard input."""


class _Termination:
    """SIGTERM while ``record`` runs: stop reading, close the service (which commits what was
    accepted), report, then end as the signal's previous handling would (by default: die by it).

    The handler raises only into a wait for the next line, where nothing is held; anywhere else
    (inside record() or close()) it only notes the signal, and no further line is read. Signals
    stay the application's when the command does not run in the main thread or SIGTERM is
    ignored.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.cut_reading = False  # a line was left unread because of the signal
        self._reading = False
        self._previous: Any = None

    def __enter__(self) -> Self:
        try:
            previous = signal.getsignal(signal.SIGTERM)
            if previous not in (signal.SIG_IGN, None):
                signal.signal(signal.SIGTERM, self._handle)
                self._previous = previous
        except ValueError:  # pragma: no cover - not the main thread
            pass
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum
        if self._reading:
            raise _Stopped

    def next_line(self, lines: Iterator[bytes]) -> bytes | None:
        """The next line of ``lines``; None at their end, or once SIGTERM came."""
        try:
            try:
                self._reading = True
                if self.signum is not None:
                    self.cut_reading = True
                    return None
                return next(lines, None)
            finally:
                self._reading = False
        except _Stopped:
            self.cut_reading = True
            return None

    def deliver(self) -> None:
        """Once the previous handling is back: the signal again, to end as it would have."""
        if self.signum is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            signal.raise_signal(self.signum)


def _record_lines(
    audit: AuditService,
    max_details_bytes: int,
    unconfirmed: list[tuple[str, str]],
    termination: _Termination,
) -> list[str]:
    """Record each JSON line of standard input; returns the problems, one per bad line.

    A critical entry not confirmed committed in time is not a bad line yet: its line goes to
    ``unconfirmed``, for the caller to judge once the service is closed.
    """
    context = {"max_details_bytes": max_details_bytes}
    bad_lines: list[str] = []
    lines = iter(sys.stdin.buffer)
    number = 0
    while (raw := termination.next_line(lines)) is not None:
        number += 1
        if not raw.strip():
            continue
        try:
            fields_in = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            bad_lines.append(f"line {number}: not UTF-8 text")
            continue
        except json.JSONDecodeError as exc:
            bad_lines.append(f"line {number}: not JSON ({exc.msg})")
            continue
        except RecursionError:
            bad_lines.append(f"line {number}: nested too deeply to read")
            continue
        except ValueError as exc:  # valid JSON that Python will not read, e.g. a huge integer
            bad_lines.append(f"line {number}: not JSON the engine can read ({_unreadable(exc)})")
            continue
        if not isinstance(fields_in, dict):
            bad_lines.append(f"line {number}: not a JSON object of entry fields")
            continue
        try:
            # Validated as an entry: a line names entry fields, nothing else.
            audit.record(AuditEntry.model_validate(fields_in, context=context))
        except AuditWriteError as exc:
            if _still_queued(exc):
                unconfirmed.append((f"line {number}: ", describe_error(exc)))
            else:
                bad_lines.append(f"line {number}: {describe_error(exc)}")
        except RecursionError:
            bad_lines.append(f"line {number}: invalid entry: details are nested too deeply")
        except (ValueError, TypeError, AuditQueueFull) as exc:
            # About this line only (its fields, no room in the queue for it): reported with its
            # number, and the next lines go on.
            bad_lines.append(f"line {number}: {describe_error(exc)}")
    return bad_lines


def _still_queued(exc: AuditWriteError) -> bool:
    """A critical entry not confirmed within block_timeout (still queued), not one set aside."""
    return isinstance(exc.__cause__, TimeoutError)


def _unreadable(exc: ValueError) -> str:
    if "integer string conversion" in str(exc):
        return f"an integer of more than {sys.get_int_max_str_digits()} digits"
    return str(exc)  # pragma: no cover - the only ValueError json.loads raises besides its own


def _not_committed(stats: AuditStats, drained: bool, dead_letters: Path) -> list[str]:
    """What ``record`` must report when an accepted entry did not reach the database."""
    problems = []
    reason = f" ({stats.last_error})" if stats.last_error else ""
    if stats.dead_lettered:
        problems.append(
            f"{plural(stats.dead_lettered, 'entry was', 'entries were')} not committed{reason}: "
            f"kept in {dead_letters}; `audit-engine replay-deadletter` "
            "stores them once the cause is fixed"
        )
    if stats.logged_only:
        problems.append(
            f"{plural(stats.logged_only, 'entry was', 'entries were')} not committed{reason} and "
            "could not be kept in the dead-letter file either: they are only in the log"
        )
    if not drained and not problems:
        problems.append("the writer did not finish committing the accepted entries")
    return problems
