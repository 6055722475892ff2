"""What the CLI reads (durations, times, counts, ``--detail``), how an error reads, the output
file of ``export``, and the generated reference.

Kept apart from ``commands.py`` so the commands stay one call into the library each. How entries
are printed is :mod:`audit_engine.formats` (shared with ``AuditStore.export``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import click
from pydantic import ValidationError

from audit_engine.settings import AuditSettings, database_url
from audit_engine.storage import deadletter
from audit_engine.storage.keys import key_file_kind

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


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
        duration = timedelta(seconds=value)
    except OverflowError:
        raise ValueError(f"{text!r} is too long a duration") from None
    if not duration:  # rounded to whole microseconds: 0.0000001s would be no age at all
        raise ValueError(f"{text!r} is shorter than a microsecond, the smallest duration")
    return duration


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """An ISO-8601 date or time, or a duration back from now (``24h``); returned in UTC.

    A date or time without an offset is local time (the ``TZ`` environment variable, as
    ``date`` reads it); ``Z`` or ``+02:00`` say which zone.
    """
    try:
        age = parse_duration(text)
    except ValueError:
        age = None
    if age is not None:
        try:
            return (now or datetime.now(UTC)) - age
        except OverflowError:
            raise ValueError(f"{text!r} is out of the range of dates") from None
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO-8601 time (2026-11-23, 2026-11-23T16:00:00Z) "
            "nor a duration back from now (15m, 24h, 7d)"
        ) from None
    try:
        # astimezone() reads a naive value as local time. An offset, or the local zone, can
        # push year 1 or 9999 out of range (the platform's local-time functions refuse too).
        return value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError(f"{text!r} is out of the range of dates") from None


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

    name = "key=value|key:=json"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        try:
            return parse_detail(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


# SQLite's largest integer: a count beyond it is a usage error, not an OverflowError later.
INT_MAX = 2**63 - 1


class CountParam(click.IntRange):
    """A whole number from ``min`` on, at most SQLite's largest integer (a usage error above)."""

    def __init__(self, min: int) -> None:
        super().__init__(min=min)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if number > INT_MAX:
            self.fail(
                f"{number} is more than the database can count (at most {INT_MAX})", param, ctx
            )
        return number


class SecondsParam(click.FloatRange):
    """Seconds between ``min`` and ``max``; NaN (which every comparison lets through) refused."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if math.isnan(seconds):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 row``, ``2 rows`` (``many`` for irregular plurals: entry/entries)."""
    return f"{count} {word if count == 1 else (many or word + 's')}"


def parse_detail(text: str) -> tuple[str, Any]:
    """``--detail``: ``key=value`` is text, ``key:=json`` a JSON value (HTTPie's convention).

    ``version=1.10`` is the text ``"1.10"``; ``count:=3``, ``tags:='["a"]'``, ``ok:=true`` are
    JSON. The split is at the first ``=``, so the text may hold more (``url=a=b``).
    """
    key, sep, raw = text.partition("=")
    is_json = key.endswith(":")
    name = (key[:-1] if is_json else key).strip()
    if not sep or not name:
        raise ValueError(f"--detail takes KEY=TEXT or KEY:=JSON, got {_shown(text)}")
    if not is_json:
        return name, raw
    try:
        value: Any = json.loads(raw)
    except RecursionError:
        raise ValueError(f"{name}:= takes a JSON value: this one is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{name}:= takes a JSON value: {exc.msg} at character {exc.pos} "
            f"(for text, use {name}=...)"
        ) from None
    return name, value


def _shown(text: str, limit: int = 60) -> str:
    # Echo what the user typed, but not all of a pasted megabyte.
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def render_reference(group: click.Group, prog: str) -> str:
    """docs/cli.md: every command's ``--help``, in order (a test keeps the file up to date)."""
    parts = [
        "# Command-line reference",
        "",
        "Generated from the commands' `--help` by `audit-engine cli-docs > docs/cli.md`; a test",
        "fails when this file is stale. Every command exits 0 on success, 1 with `Error: ...` on a",
        "failure (a missing or foreign database, a broken chain, a bad input line), and 2 on a",
        "usage error (an unknown option, a bad duration). `record` also exits 1 when an entry it",
        "accepted was not committed (it is then in the dead-letter file).",
        "",
        "Times you give (`--since`, `--until`) are ISO-8601 or an age (`24h`); without an offset",
        "they are local time, as `date` reads them (add `Z` for UTC). Times printed are UTC.",
        "",
        "`query`, `tail` and `export` print each value the same way: a timestamp in its stored",
        "form (`2026-11-23T09:30:15.123456Z`; the table shows it to the second), a missing",
        "field as `null` in JSON, an empty cell in CSV and `-` in the table, `critical` as",
        "`true`/`false` in JSON and CSV, `details` as a nested object in JSON and as its JSON",
        "text in CSV. JSON keeps non-ASCII text as it is but escapes U+2028, U+2029 and U+0085,",
        "so every record stays on one line.",
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


class DatabaseParam(click.ParamType):  # type: ignore[type-arg]
    """``--db``: a SQLite file path, or a ``postgresql://`` URL (kept as it is written)."""

    name = "path|url"
    _path = click.Path(dir_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str):
            try:
                url = database_url(value)
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
            if url is not None:
                return url
        return self._path.convert(value, param, ctx)


def root_database(ctx: click.Context) -> Path | str:
    """The global ``--db`` of the command being run: a path, or a PostgreSQL URL."""
    database: Path | str = ctx.find_root().params["database"]
    return database


def root_chain_key(ctx: click.Context) -> Path | None:
    """The global ``--chain-key-file`` (or ``AUDIT_TRAIL_CHAIN_KEY_FILE``) of the command being
    run: None when neither is set."""
    value: Path | None = ctx.find_root().params.get("chain_key_file")
    return value


def deadletter_file(database: Path | str) -> Path:
    """The dead-letter file of ``database`` as the library resolves it
    (``AUDIT_TRAIL_DEADLETTER_PATH``, else the default for the database)."""
    return AuditSettings(database=database, cleanup_enabled=False).deadletter_file


def progress(length: int, label: str) -> Any:
    """A progress bar on stderr when it is a terminal; nothing at all otherwise (pipes)."""
    return click.progressbar(
        length=length, label=label, file=sys.stderr, hidden=not sys.stderr.isatty()
    )


def describe_error(exc: BaseException) -> str:
    """The one line an error becomes after ``Error: ``: a bad entry names its fields."""
    if isinstance(exc, ValidationError):
        problems = "; ".join(
            (f"{'.'.join(str(p) for p in error['loc'])}: " if error["loc"] else "")
            + error["msg"].removeprefix("Value error, ")
            for error in exc.errors()
        )
        return f"invalid entry: {problems}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc)


# The names a dead-letter file's writers and replay use beside it: its lock, a replay's
# rewrite, the side files of appends that could not get the lock (and their temporary names).
_DEAD_LETTER_KIN = re.compile(r"(?:\.lock|\.tmp|\.\d+-\d+\.jsonl(?:\.part)?)\Z")


def reserved_output(output: Path, database: Path | str) -> str | None:
    """Why ``export --output`` must not write ``output``: it is (a link to) one of the database's
    own files or its dead-letter files, or looks like a key, a log or a database; None if not.

    The database is taken both as given and with its symlinks resolved, since its -wal and its
    dead-letter files are named after the one or the other. A PostgreSQL trail has no local
    files but its dead-letter file.
    """
    return _reserved_path(output, database) or looks_unreplaceable(output)


def _reserved_path(output: Path, database: Path | str) -> str | None:
    target = Path(os.path.realpath(output))
    if isinstance(database, str):
        dead = deadletter_file(database)
        if _same_file(target, dead):
            return "is the audit trail's dead-letter file"
        return None
    for base in (database.absolute(), Path(os.path.realpath(database))):
        if _same_file(target, base):
            return "is the audit database itself"
        for suffix in ("-wal", "-shm", "-journal"):
            if _same_file(target, Path(f"{base}{suffix}")):
                return f"is the audit database's {suffix} file"
        dead = deadletter.path_for(base)
        if _same_file(target, dead):
            return "is the audit database's dead-letter file"
        kin = target.name.removeprefix(dead.name)
        if (
            kin != target.name
            and _DEAD_LETTER_KIN.fullmatch(kin)
            and target.parent == Path(os.path.realpath(dead.parent))
        ):
            return "is a lock or side file of the audit database's dead-letter file"
    return None


_SNIFFED = 64 * 1024  # a key file or a checkpoint line is far shorter


def looks_unreplaceable(output: Path) -> str | None:
    """Why ``--output`` must not replace the existing regular file ``output`` (or its target), by
    its first bytes: it looks like a chain key file, a PEM key, a checkpoint log or an SQLite
    database, configured for this command or not (nobody gives a viewer command keys)."""
    try:
        # O_NONBLOCK: a FIFO put there since the caller looked must not hang the open.
        fd = os.open(os.path.realpath(output), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except PermissionError as exc:  # it may be anything: not replaced blind
        return f"cannot be read ({exc.strerror}) to check that it is no key or database"
    except OSError:  # missing, or no file can be there: the write says why
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None  # a FIFO or a terminal is written into, never replaced
        head = os.read(fd, _SNIFFED + 1)
    finally:
        os.close(fd)
    kind = "an SQLite database" if head.startswith(b"SQLite format 3\x00") else None
    kind = kind or key_file_kind(head[:_SNIFFED], whole=len(head) <= _SNIFFED)
    if kind or (kind := _checkpoint_log(head)):
        return f"looks like {kind}, which --output never replaces (move it away first if it is not)"
    return None


def _checkpoint_log(head: bytes) -> str | None:
    # The writer's lines are JSON objects with the signed note, whose origin line names the
    # engine (an app's own JSON lines with a "note" are not one).
    with contextlib.suppress(ValueError, RecursionError):  # not JSON, or nested too deeply
        record = json.loads(head.split(b"\n", 1)[0])
        note = record.get("note") if isinstance(record, dict) else None
        if isinstance(note, str) and note.startswith("audit-engine/"):
            return "a checkpoint log"
    return None


def _same_file(target: Path, path: Path) -> bool:
    if target == Path(os.path.realpath(path)):
        return True
    try:
        return os.path.samefile(target, path)  # a hard link
    except OSError:  # either is missing
        return False


@contextmanager
def whole_file(path: Path) -> Iterator[TextIO]:
    """The file ``export --output`` writes: ``path``, or what its symlink points to.

    A regular file (or a new one) appears only once complete: it is written beside the target,
    fsynced, then renamed over it, so a failed export leaves no partial file that could pass for
    a whole one, and an earlier file stays as it was. Audit data is sensitive: the file is
    readable by its owner only (mkstemp creates it 0600). A symlink stays a symlink: its target
    is what gets replaced. Anything else that exists — a FIFO, a terminal, a device — is written
    into as it is, never replaced.
    """
    target = Path(os.path.realpath(path))
    try:
        mode: int | None = target.stat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    if mode is not None and not stat.S_ISREG(mode):
        yield from _write_into(target, path)
        return
    try:
        descriptor, temporary = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".partial"
        )
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    try:
        with open(descriptor, "w", encoding="utf-8", newline="") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _write_into(target: Path, path: Path) -> Iterator[TextIO]:
    try:
        with open(target, "w", encoding="utf-8", newline="") as out:
            yield out
    except BrokenPipeError:
        # Not the quiet exit of a closed standard output: the user named this file.
        raise click.ClickException(
            f"the reader of {path} went away before the export ended"
        ) from None


def refuse_output(
    ctx: click.Context,
    output: Path,
    checkpoints: Path | None = None,
    public_key: Path | None = None,
) -> None:
    """Refuse an ``--output`` that is (or looks like) the trail, a side file, a key or a log."""
    # One typo must not replace the trail, a key or the log a proof stands on (review3 H1).
    database = root_database(ctx)
    reserved = _reserved_path(output, database)
    target = Path(os.path.realpath(output))
    settings = AuditSettings(database=database, cleanup_enabled=False)
    read = {
        "is the chain key file": root_chain_key(ctx) or settings.chain_key_file,
        "is the signing key file (signing_key_file)": settings.signing_key_file,
        "is the checkpoint log (checkpoint_file)": settings.checkpoint_file,
        "is the checkpoint log given to --checkpoints": checkpoints,
        "is the public key given to --public-key": public_key,
    }
    for reason, path in read.items():
        if reserved is None and path is not None and _same_file(target, path):
            reserved = reason
    reserved = reserved or looks_unreplaceable(output)  # a named file's reason is more precise
    if reserved is not None:
        raise click.BadParameter(reserved, param_hint="'--output'")
