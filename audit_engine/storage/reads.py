"""Reading entries page by page: the filters of the read API and keyset pagination on ``id``.

:meth:`~audit_engine.storage.store.AuditStore.query` and ``export`` read any number of rows
with flat memory: each page is one statement (``WHERE id > ? ORDER BY id LIMIT ?``, or
``id < ?`` descending for newest first), fetched whole before its rows are handed out, so no
statement, cursor or transaction stays open between pages. On SQLite that lets the WAL be
checkpointed and writers go on while a long read runs; on PostgreSQL no snapshot is held.

What a reader sees of rows committed while it pages: ascending, each page sees what was
committed before its statement ran, so rows committed meanwhile (higher ids) appear; newest
first, they never do (the first page started above them). No row is seen twice. A purge that
runs meanwhile can take rows an ascending read has not reached yet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TypedDict

from audit_engine.columns import FILTER_COLUMNS
from audit_engine.models import Operation, Outcome
from audit_engine.storage.stored import as_utc

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "FILTER_NAMES",
    "MAX_PAGE_SIZE",
    "EntryFilters",
    "checked_page_size",
    "pages",
    "where",
]

#: Rows per statement when ``page_size`` is not given: large enough that the per-statement cost
#: is noise, small enough that a page is a few megabytes at most.
DEFAULT_PAGE_SIZE = 1000
#: A page is held in memory whole: a larger one would defeat the point of paging.
MAX_PAGE_SIZE = 100_000


class EntryFilters(TypedDict, total=False):
    """The filters of ``query``, ``count`` and ``export``: equality on the filter columns
    (:data:`~audit_engine.columns.FILTER_COLUMNS`), ``since`` inclusive, ``until`` exclusive."""

    actor: str | None
    action: str | None
    operation: Operation | str | None
    outcome: Outcome | str | None
    resource_type: str | None
    resource_id: str | None
    correlation_id: str | None
    since: datetime | str | None
    until: datetime | str | None


#: Every filter's keyword, in order (tests/unit/test_columns.py holds it to FILTER_COLUMNS).
FILTER_NAMES: tuple[str, ...] = tuple(EntryFilters.__annotations__)

_ENUMS: dict[str, Callable[[Any], Any]] = {
    "operation": lambda value: Operation(value).value,
    "outcome": lambda value: Outcome(value).value,
}


def where(filters: Mapping[str, Any], method: str) -> tuple[str, list[Any]]:
    """The ``WHERE`` clause (empty without filters) and its parameters.

    An unknown keyword raises ``TypeError`` as Python would for ``method``; a bad value the
    error of its check (``ValueError`` for an unknown operation, ``AuditStoreError`` for a
    naive datetime, see :func:`~audit_engine.storage.stored.as_utc`).
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
            params.append(_ENUMS[column](value) if column in _ENUMS else value)
    for name, operator in (("since", ">="), ("until", "<")):
        bound = filters.get(name)
        if bound is not None:
            clauses.append(f"timestamp {operator} ?")
            params.append(as_utc(bound, name))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


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
) -> Iterator[Sequence[Sequence[Any]]]:
    """The pages of ``select`` + ``where_clause`` in id order, one ``fetch(sql, params)`` each.

    ``select`` must list ``id`` first: the last row's id is where the next page starts.
    ``fetch`` returns every row of its statement (the statement is done when it returns).
    Stops after ``limit`` rows, or at the first page shorter than asked for.
    """
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
