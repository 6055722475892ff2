"""What the CLI reads and prints: time arguments, entry rendering, the generated reference.

Kept apart from ``cli.py`` so the commands stay one call into the library each.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from audit_engine.models import AuditEntry

FORMATS = ("table", "json", "jsonl", "csv")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_CSV_FIELDS = tuple(AuditEntry.model_fields)


def parse_duration(text: str) -> timedelta:
    """``15m``, ``24h``, ``7d``, ``2w``, ``30s`` as a positive timedelta."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(
            f"{text!r} is not a duration: a number and a unit (s, m, h, d, w), e.g. 15m, 24h, 7d"
        )
    value = float(match.group(1)) * _UNITS[match.group(2)]
    if value <= 0:
        raise ValueError(f"{text!r} is not a positive duration")
    try:
        return timedelta(seconds=value)
    except OverflowError:
        raise ValueError(f"{text!r} is too long a duration") from None


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """An ISO-8601 date or time (naive means UTC), or a duration back from now (``24h``)."""
    try:
        age = parse_duration(text)
    except ValueError:
        age = None
    try:
        if age is not None:
            return (now or datetime.now(UTC)) - age
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        # Normalised here, inside the try: an offset can push year 1 or 9999 out of range.
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    except OverflowError:
        raise ValueError(f"{text!r} is out of the range of dates") from None
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO-8601 time (2026-11-23, 2026-11-23T16:00:00Z) "
            "nor a duration back from now (15m, 24h, 7d)"
        ) from None


class DurationParam(click.ParamType):  # type: ignore[type-arg]  # generic in click >= 8.5 only
    """A click type for ``parse_duration``: a bad value is a usage error (exit 2)."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, timedelta):
            return value
        try:
            age = parse_duration(str(value))
            datetime.now(UTC) - age  # an age is used back from now: it must stay after year 1
        except OverflowError:
            self.fail(f"{value!r} reaches before year 1", param, ctx)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return age


class TimeParam(click.ParamType):  # type: ignore[type-arg]
    """A click type for ``parse_time``."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        try:
            return parse_time(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class DetailParam(click.ParamType):  # type: ignore[type-arg]
    """``--detail key=value``, checked before anything is opened (a usage error, exit 2)."""

    name = "key=value"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        try:
            return parse_detail(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 row``, ``2 rows`` (``many`` for irregular plurals: entry/entries)."""
    return f"{count} {word if count == 1 else (many or word + 's')}"


def entry_object(entry: AuditEntry) -> dict[str, Any]:
    """The stable JSON form of an entry (``details`` as a nested object)."""
    return entry.model_dump(mode="json")


def render(entries: Sequence[AuditEntry], fmt: str) -> Iterator[str]:
    """The lines that print ``entries`` in ``fmt`` (each without its newline)."""
    if fmt == "json":
        yield json.dumps([entry_object(e) for e in entries], indent=2, ensure_ascii=False)
    elif fmt == "jsonl":
        for entry in entries:
            yield json.dumps(entry_object(entry), ensure_ascii=False)
    elif fmt == "csv":
        yield from csv_lines(entries, header=True)
    else:
        yield from table_lines(entries)


def csv_lines(entries: Iterable[AuditEntry], *, header: bool) -> Iterator[str]:
    """CSV rows: a header of the entry's fields, then one row per entry."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="")
    rows: Iterable[Sequence[Any]] = (
        [
            e.event_id,
            entry_object(e)["timestamp"],
            e.actor or "",
            e.action,
            e.operation.value,
            e.outcome.value,
            e.resource_type or "",
            e.resource_id or "",
            e.correlation_id or "",
            e.details_json,
            "true" if e.critical else "false",
        ]
        for e in entries
    )
    if header:
        writer.writerow(_CSV_FIELDS)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    for row in rows:
        writer.writerow(row)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()


_TABLE_COLUMNS = ("time (UTC)", "actor", "action", "operation", "outcome", "resource", "")


def table_lines(entries: Sequence[AuditEntry]) -> Iterator[str]:
    """An aligned table for people; not for parsing (use json, jsonl or csv)."""
    rows = [
        (
            f"{e.timestamp:%Y-%m-%d %H:%M:%S}",
            e.actor or "-",
            e.action,
            e.operation.value,
            e.outcome.value,
            f"{e.resource_type or '-'}/{e.resource_id or '-'}",
            "critical" if e.critical else "",
        )
        for e in entries
    ]
    widths = [
        max(len(str(c)) for c in column) for column in zip(_TABLE_COLUMNS, *rows, strict=False)
    ]
    for row in (_TABLE_COLUMNS, *rows):
        yield "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
    yield f"({plural(len(rows), 'entry', 'entries')})"


def parse_detail(text: str) -> tuple[str, Any]:
    """``key=value`` from ``--detail``; the value is JSON when it parses as JSON, else text."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--detail takes key=value, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def render_reference(group: click.Group, prog: str) -> str:
    """docs/cli.md: every command's ``--help``, in order (a test keeps the file up to date)."""
    parts = [
        "# Command-line reference",
        "",
        "Generated from the commands' `--help` by `audit-engine cli-docs > docs/cli.md`; a test",
        "fails when this file is stale. Every command exits 0 on success, 1 with `Error: ...` on a",
        "failure (a missing or foreign database, a broken chain, a bad input line), and 2 on a",
        "usage error (an unknown option, a bad duration).",
        "",
    ]
    # A fixed width: the reference must not depend on the terminal it was generated in.
    ctx = click.Context(group, info_name=prog, terminal_width=100, max_content_width=100)
    parts += ["## `" + prog + "`", "", "```text", group.get_help(ctx), "```", ""]
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        sub = click.Context(
            command, info_name=name, parent=ctx, terminal_width=100, max_content_width=100
        )
        parts += [f"## `{prog} {name}`", "", "```text", command.get_help(sub), "```", ""]
    return "\n".join(parts)


def root_database(ctx: click.Context) -> Path:
    """The global ``--db`` of the command being run."""
    path: Path = ctx.find_root().params["database"]
    return path


def progress(length: int, label: str) -> Any:
    """A progress bar on stderr when it is a terminal; nothing at all otherwise (pipes)."""
    return click.progressbar(
        length=length, label=label, file=sys.stderr, hidden=not sys.stderr.isatty()
    )
