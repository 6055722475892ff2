"""One rendering of each value, for every output: ``query``, ``tail`` and ``export``.

``query`` and ``tail`` render :class:`AuditEntry` objects, ``export`` renders stored rows (with
their ids and hashes); both go through the functions here, so a value looks the same wherever it
is printed:

- ``timestamp``: the stored form, ISO-8601 UTC with microseconds (``2026-11-23T09:30:15.123456Z``)
  in JSON and CSV; in the table, to the second (``2026-11-23 09:30:15``, UTC).
- a missing field: ``null`` in JSON, an empty cell in CSV, ``-`` in the table.
- ``critical``: ``true``/``false`` in JSON and CSV; ``critical`` or nothing in the table.
- ``details``: a nested object in JSON; its JSON text (the stored, canonical form) in CSV.
- JSON text keeps non-ASCII characters as they are but escapes U+2028, U+2029 and U+0085
  (``\\u2028``): the value is the same for any JSON parser, and no line-based reader
  (``str.splitlines()``, many log tools) splits a record in two.

No click here: :meth:`AuditStore.export` uses this module too.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC
from typing import Any

from audit_engine.columns import STORED_COLUMNS
from audit_engine.errors import AuditStoreError
from audit_engine.models import AuditEntry, format_timestamp

__all__ = [
    "ENTRY_FIELDS",
    "FORMATS",
    "TABLE_FIT_ROWS",
    "Table",
    "csv_lines",
    "entry_object",
    "export_lines",
    "json_text",
    "render",
    "table_lines",
]

FORMATS = ("table", "json", "jsonl", "csv")
ENTRY_FIELDS = STORED_COLUMNS  # an entry's fields are its stored columns (test_columns.py)

# Line separators JSON leaves raw would split the line for str.splitlines() readers.
_LINE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def json_text(value: Any, *, indent: int | None = None) -> str:
    """``value`` as JSON text: non-ASCII kept, line separators escaped (see the module doc)."""
    return json.dumps(value, ensure_ascii=False, indent=indent).translate(_LINE_BREAKS)


def _flag(value: object) -> str:
    return "true" if value else "false"


def _cell(value: object) -> str:
    return "" if value is None else str(value)


# -- entries (query, tail) ----------------------------------------------------------------------


def entry_object(entry: AuditEntry) -> dict[str, Any]:
    """The JSON form of an entry: its fields in order, ``details`` as a nested object."""
    return {
        "event_id": entry.event_id,
        "timestamp": format_timestamp(entry.timestamp),
        "actor": entry.actor,
        "action": entry.action,
        "operation": entry.operation.value,
        "outcome": entry.outcome.value,
        "resource_type": entry.resource_type,
        "resource_id": entry.resource_id,
        "correlation_id": entry.correlation_id,
        "details": entry.details,
        "critical": entry.critical,
    }


def _entry_csv_row(entry: AuditEntry) -> list[str]:
    return [
        entry.event_id,
        format_timestamp(entry.timestamp),
        _cell(entry.actor),
        entry.action,
        entry.operation.value,
        entry.outcome.value,
        _cell(entry.resource_type),
        _cell(entry.resource_id),
        _cell(entry.correlation_id),
        entry.details_json.translate(_LINE_BREAKS),
        _flag(entry.critical),
    ]


def _csv_text(rows: Iterable[Sequence[Any]]) -> Iterator[str]:
    # One row at a time (streaming); each line without its terminator.
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="")
    for row in rows:
        writer.writerow(row)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()


def csv_lines(entries: Iterable[AuditEntry], *, header: bool) -> Iterator[str]:
    """CSV rows (without line ends): a header of the entry's fields, then one row per entry."""
    rows = (_entry_csv_row(entry) for entry in entries)
    yield from _csv_text(_with_header(ENTRY_FIELDS, rows) if header else rows)


def _with_header(names: Sequence[str], rows: Iterable[Sequence[Any]]) -> Iterator[Sequence[Any]]:
    yield names
    yield from rows


def render(entries: Iterable[AuditEntry], fmt: str) -> Iterator[str]:
    """The lines that print ``entries`` in ``fmt`` (each without its newline), as the entries
    come: memory does not grow with their number (the table sizes its columns by its first
    :data:`TABLE_FIT_ROWS` rows, see :func:`table_lines`)."""
    if fmt == "json":
        yield from _json_array(entries)
    elif fmt == "jsonl":
        for entry in entries:
            yield json_text(entry_object(entry))
    elif fmt == "csv":
        yield from csv_lines(entries, header=True)
    else:
        yield from table_lines(entries)


def _json_array(entries: Iterable[AuditEntry]) -> Iterator[str]:
    # The text json.dumps(list, indent=2) gives, one element at a time: an element is its own
    # indent=2 text moved in by two spaces, followed by a comma unless it is the last (so each
    # is printed once the next one is known).
    previous: str | None = None
    for entry in entries:
        yield "[" if previous is None else previous + ","
        previous = "  " + json_text(entry_object(entry), indent=2).replace("\n", "\n  ")
    if previous is None:
        yield "[]"
        return
    yield previous
    yield "]"


# -- the table ----------------------------------------------------------------------------------

TABLE_COLUMNS = (
    "time (UTC)",
    "actor",
    "action",
    "operation",
    "outcome",
    "resource",
    "correlation",
    "",
)
# The narrowest a column starts when the table must hold rows not seen yet (tail -f).
FOLLOW_WIDTHS = (19, 12, 24, 9, 7, 24, 16, 8)


def table_cells(entry: AuditEntry) -> tuple[str, ...]:
    """The table's cells of one entry (see TABLE_COLUMNS)."""
    moment = entry.timestamp.astimezone(UTC).replace(tzinfo=None)
    return (
        # isoformat pads the year (strftime's %Y does not below 1000).
        moment.isoformat(sep=" ", timespec="seconds"),
        entry.actor or "-",
        entry.action,
        entry.operation.value,
        entry.outcome.value,
        f"{entry.resource_type or '-'}/{entry.resource_id or '-'}",
        entry.correlation_id or "-",
        "critical" if entry.critical else "",
    )


class Table:
    """Columns of fixed widths: a header, then rows that line up with it.

    A cell longer than its column is cut to fit, ending in ``…`` (only a table made before its
    rows were known, as ``tail -f`` makes it, meets one): the table is for people; json, jsonl and
    csv carry every value whole.
    """

    def __init__(self, widths: Sequence[int]) -> None:
        self.widths = tuple(widths)

    @classmethod
    def fitting(cls, rows: Iterable[Sequence[str]], minimum: Sequence[int] = ()) -> Table:
        """The table as wide as the header, ``rows`` and ``minimum`` need."""
        widths = [len(title) for title in TABLE_COLUMNS]
        for index, width in enumerate(minimum):
            widths[index] = max(widths[index], width)
        for row in rows:
            widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
        return cls(widths)

    def line(self, cells: Sequence[str]) -> str:
        """One line of the table."""
        fitted = (
            cell if len(cell) <= width else cell[: width - 1] + "…"
            for cell, width in zip(cells, self.widths, strict=True)
        )
        return "  ".join(
            cell.ljust(width) for cell, width in zip(fitted, self.widths, strict=True)
        ).rstrip()

    def header(self) -> str:
        """The header line."""
        return self.line(TABLE_COLUMNS)


#: How many rows the table of ``query`` reads before it prints: its columns fit them.
TABLE_FIT_ROWS = 1000


def table_lines(entries: Iterable[AuditEntry], fit_rows: int = TABLE_FIT_ROWS) -> Iterator[str]:
    """An aligned table for people, with a count at the end; not for parsing.

    The columns fit the first ``fit_rows`` rows (every row, up to that many); a longer value in
    a later row is cut to fit, ending in ``…``, so memory stays flat for any number of rows.
    """
    rows = iter(entries)
    first = [table_cells(entry) for entry in itertools.islice(rows, fit_rows)]
    table = Table.fitting(first)
    yield table.header()
    for cells in first:
        yield table.line(cells)
    count = len(first)
    del first  # the rest streams
    for entry in rows:
        yield table.line(table_cells(entry))
        count += 1
    yield f"({count} {'entry' if count == 1 else 'entries'})"


# -- stored rows (export) -----------------------------------------------------------------------


def _stored_details(record: dict[str, Any]) -> Any:
    try:
        return json.loads(record["details"])
    except (TypeError, ValueError) as exc:
        # A row another tool wrote: name it, never stop with an anonymous JSON error.
        raise AuditStoreError(
            f"cannot export row {record.get('id')}: its details are not JSON ({exc})"
        ) from None


def _stored_jsonl(names: Sequence[str], rows: Iterable[Sequence[Any]]) -> Iterator[str]:
    for row in rows:
        record = dict(zip(names, row, strict=True))
        record["details"] = _stored_details(record)
        record["critical"] = bool(record["critical"])
        yield json_text(record) + "\n"


def _stored_csv_rows(names: Sequence[str], rows: Iterable[Sequence[Any]]) -> Iterator[list[Any]]:
    # Only two columns need rendering; csv writes None as an empty cell by itself.
    critical, details = names.index("critical"), names.index("details")
    for row in rows:
        cells = list(row)
        cells[critical] = _flag(cells[critical])
        if cells[details] is not None:
            cells[details] = str(cells[details]).translate(_LINE_BREAKS)
        yield cells


def export_lines(fmt: str, names: Sequence[str], rows: Iterable[Sequence[Any]]) -> Iterator[str]:
    """Stored rows (columns ``names``) as export lines, each ending in a newline.

    ``jsonl``: one object per row with every stored value (``details`` nested, ``critical`` a
    boolean), exactly what ``exported.verify_exported_lines`` needs. ``csv``: a header row, then one
    row per stored row, values rendered as ``query`` renders them.
    """
    if fmt == "jsonl":
        return _stored_jsonl(names, rows)
    csv_rows = _stored_csv_rows(names, rows)
    return (line + "\n" for line in _csv_text(_with_header(names, csv_rows)))
