"""Reading entries page by page: the filters of the read API and keyset pagination on ``id``.

:meth:`~audit_engine.storage.store.AuditStore.query` and ``export`` read any number of rows
with flat memory: each page is one statement (``WHERE id > ? ORDER BY id LIMIT ?``, or
``id < ?`` descending for newest first), fetched whole before its rows are handed out, so no
statement, cursor or transaction stays open between pages. On SQLite that lets the WAL be
checkpointed and writers go on while a long read runs; on PostgreSQL no snapshot is held.

What a reader sees of rows committed while it pages: ascending, each page sees what was
committed before its statement ran, so rows committed meanwhile (higher ids) appear; newest
first, they never do (the first page started above them). No row is seen twice. A purge that
runs meanwhile can take rows an ascending read has not reached yet. A read with ``until`` and
fewer than :data:`WINDOW_PROBE_ROWS` rows in its range sees only rows committed before it began.

Every equality filter has an index that ends in the id (schema version 6 on SQLite, 4 on
PostgreSQL), so a page walks that index in id order and stops after its rows. A time range
cannot: timestamps rise with the id only mostly (several threads or processes, replayed dead
letters and imported entries commit old times late). So the range's id bounds come first, from
one index-only pass over at most :data:`WINDOW_PROBE_ROWS` entries of the timestamp index; a
smaller range's pages then read only ids within them (exact: every row of the range is inside),
and a larger range is read in id order with its timestamps tested row by row (its rows are
found quickly from the end it touches; from the other end the rows between are skipped).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple, TypedDict
from uuid import UUID

from audit_engine.columns import FILTER_COLUMNS, STORED_COLUMNS
from audit_engine.models import ID_FIELDS_TAKING_NUMBERS, AuditEntry, Operation, Outcome
from audit_engine.storage.stored import as_utc, parse_row

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "FILTER_NAMES",
    "MAX_PAGE_SIZE",
    "WINDOW_PROBE_ROWS",
    "EntryFilters",
    "TimeProbe",
    "checked_page_size",
    "entries",
    "paged_where",
    "pages",
    "time_probe",
    "where",
]

#: Rows per statement when ``page_size`` is not given: large enough that the per-statement cost
#: is noise, small enough that a page is a few megabytes at most.
DEFAULT_PAGE_SIZE = 1000
#: A page is held in memory whole: a larger one would defeat the point of paging.
MAX_PAGE_SIZE = 100_000
#: A time range with fewer rows gets exact id bounds from one index-only pass over its
#: timestamps (~0.15 us an entry: at most ~8 ms); a larger one is read in id order instead.
WINDOW_PROBE_ROWS = 50_000


class EntryFilters(TypedDict, total=False):
    """The filters of ``query``, ``count`` and ``export``: equality on the filter columns
    (:data:`~audit_engine.columns.FILTER_COLUMNS`), ``since`` inclusive, ``until`` exclusive.

    ``actor``, ``resource_id`` and ``correlation_id`` also take an int or a UUID, as ``record()``
    does (it stores their text, and so does the filter)."""

    actor: str | int | UUID | None
    action: str | None
    operation: Operation | str | None
    outcome: Outcome | str | None
    resource_type: str | None
    resource_id: str | int | UUID | None
    correlation_id: str | int | UUID | None
    since: datetime | str | None
    until: datetime | str | None


#: Every filter's keyword, in order (tests/unit/test_columns.py holds it to FILTER_COLUMNS).
FILTER_NAMES: tuple[str, ...] = tuple(EntryFilters.__annotations__)

_ENUMS: dict[str, type[StrEnum]] = {"operation": Operation, "outcome": Outcome}


def where(
    filters: Mapping[str, Any], method: str, *, time_index: bool = True
) -> tuple[str, list[Any]]:
    """The ``WHERE`` clause (empty without filters) and its parameters.

    ``time_index=False`` writes ``since``/``until`` so that no index serves them (pages, whose
    ids :func:`time_probe` bounds, walk the id order or an equality filter's index instead).

    Every value is checked here, so that a bad one fails the call, not the first read (where it
    would be a driver's error, and differ between backends). An unknown keyword raises
    ``TypeError`` as Python would for ``method``; a value of a wrong type ``TypeError`` naming
    the filter; an unknown operation or outcome, or text no database can hold (a NUL, a lone
    surrogate), ``ValueError``; a naive datetime or an unreadable time ``AuditStoreError`` (see
    :func:`~audit_engine.storage.stored.as_utc`).
    """
    for name in filters:
        if name not in FILTER_NAMES:
            raise TypeError(
                f"{method}() got an unexpected keyword argument {name!r} "
                f"(the filters are {', '.join(FILTER_NAMES)})"
            )
    clauses: list[str] = []
    params: list[Any] = []
    for column in FILTER_COLUMNS:
        value = filters.get(column)
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(_checked(column, value, method))
    # coalesce(x, x) is x (the column is NOT NULL) in an expression no index is on, in the SQL
    # both backends speak.
    column = "timestamp" if time_index else "coalesce(timestamp, timestamp)"
    for name, operator in (("since", ">="), ("until", "<")):
        bound = filters.get(name)
        if bound is not None:
            clauses.append(f"{column} {operator} ?")
            params.append(as_utc(bound, name))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


class TimeProbe(NamedTuple):
    """The statement that gives a time range's rows (up to :data:`WINDOW_PROBE_ROWS`) and its
    lowest and highest ids, its parameters, and whether the range has an end (``until``)."""

    sql: str
    params: list[Any]
    ends: bool


def time_probe(table: str, filters: Mapping[str, Any]) -> TimeProbe | None:
    """The probe of the filters' time range; None without ``since`` or ``until``. The filters
    must have been checked by :func:`where`."""
    times = {name: filters.get(name) for name in ("since", "until")}
    if all(bound is None for bound in times.values()):
        return None
    clause, params = where(times, "query")
    sql = (
        f"SELECT count(*), min(id), max(id) FROM (SELECT id FROM {table}{clause} "
        f"LIMIT {WINDOW_PROBE_ROWS}) AS time_range"
    )
    return TimeProbe(sql, params, times["until"] is not None)


def paged_where(
    table: str, filters: Mapping[str, Any], method: str
) -> tuple[str, list[Any], TimeProbe | None]:
    """What :func:`pages` needs for ``filters``: the ``WHERE`` clause written for pages (no
    index serves its time range), its parameters, and the probe of the time range (None without
    one). The two go together: the probe bounds the ids the clause leaves unbounded."""
    where_clause, params = where(filters, method, time_index=False)
    return where_clause, params, time_probe(table, filters)


def _checked(column: str, value: object, method: str) -> str:
    """The stored text a filter's ``value`` matches."""
    if column in ID_FIELDS_TAKING_NUMBERS and (type(value) is int or isinstance(value, UUID)):
        return str(value)  # as record() stores it
    enum = _ENUMS.get(column)
    if not isinstance(value, str):  # an Operation or an Outcome is one (a StrEnum)
        kinds = f"str or an {enum.__name__}" if enum else "str"
        if column in ID_FIELDS_TAKING_NUMBERS:
            kinds = "str, int or UUID"
        raise TypeError(
            f"{method}() filter {column} must be a {kinds} (got {type(value).__name__})"
        )
    if enum is not None:
        try:
            return str(enum(value).value)
        except ValueError:
            raise ValueError(
                f"{method}() filter {column}: {value!r} is not a valid {enum.__name__} "
                f"(one of {', '.join(enum)})"
            ) from None
    if "\x00" in value or not _encodable(value):
        raise ValueError(
            f"{method}() filter {column} must be text a database can hold "
            "(no NUL character, no lone surrogate)"
        )
    return value


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def checked_page_size(page_size: object) -> int:
    """``page_size`` as paging takes it; a ``TypeError`` or ``ValueError`` naming it otherwise."""
    if not isinstance(page_size, int) or isinstance(page_size, bool):
        raise TypeError(f"page_size must be an int (got {type(page_size).__name__})")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be from 1 to {MAX_PAGE_SIZE} (got {page_size})")
    return page_size


Fetch = Callable[[str, list[Any]], Sequence[Sequence[Any]]]


def pages(
    fetch: Fetch,
    select: str,
    where_clause: str,
    params: Sequence[Any],
    *,
    newest_first: bool,
    limit: int | None,
    page_size: int,
    probe: TimeProbe | None = None,
) -> Iterator[Sequence[Sequence[Any]]]:
    """The pages of ``select`` + ``where_clause`` in id order, one ``fetch(sql, params)`` each.

    ``select`` must list ``id`` first: the last row's id is where the next page starts.
    ``fetch`` returns every row of its statement (the statement is done when it returns).
    Stops after ``limit`` rows, or at the first page shorter than asked for. With a ``probe``
    (a time range: ``where_clause`` made with ``time_index=False``), it runs first: an empty
    range reads nothing, a small one only the ids within its bounds.
    """
    if probe is not None:
        rows, lowest, highest = fetch(probe.sql, probe.params)[0]
        if not rows:
            return
        if rows < WINDOW_PROBE_ROWS:
            # Without an end, rows committed after the probe may be in the range too.
            bounds = " AND id BETWEEN ? AND ?" if probe.ends else " AND id >= ?"
            where_clause = f"{where_clause}{bounds}"  # a time range: never empty
            params = [*params, lowest, *([highest] if probe.ends else [])]
    joiner = " AND " if where_clause else " WHERE "
    keyset = f"{joiner}id {'<' if newest_first else '>'} ?"
    order = f" ORDER BY id {'DESC' if newest_first else 'ASC'} LIMIT ?"
    remaining = limit
    last: int | None = None
    while remaining is None or remaining > 0:
        size = page_size if remaining is None else min(page_size, remaining)
        if last is None:  # the first page has no lower (or upper) bound yet
            sql, args = f"{select}{where_clause}{order}", [*params, size]
        else:
            sql, args = f"{select}{where_clause}{keyset}{order}", [*params, last, size]
        page = fetch(sql, args)
        if page:
            yield page
            last = int(page[-1][0])
        if remaining is not None:
            remaining -= len(page)
        if len(page) < size:
            return


_QUERY_NAMES = ("id", *STORED_COLUMNS)


def entries(pages: Iterator[Sequence[Sequence[Any]]]) -> Iterator[AuditEntry]:
    """The entries of pages of ``SELECT id, <the stored fields>``."""
    for page in pages:
        for row in page:
            yield parse_row(dict(zip(_QUERY_NAMES, row, strict=True)))
