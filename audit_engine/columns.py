"""The stored columns of an audit entry, defined once.

:data:`ENTRY_COLUMNS` is the one definition of what an entry stores, in the order of the insert
and of the hash chain's canonical form (after the row's id): each column's name, SQL type,
whether it may be NULL, whether ``query``/``export`` filter on it, whether it leads an index,
and how outputs render it. Every other form is derived from it or checked against it by
tests/unit/test_columns.py: :class:`~audit_engine.rows.Row`, :class:`AuditEntry`'s fields,
the schema's ``STORED_COLUMNS`` and table, the insert's column list, the chain's canonical form
(:mod:`audit_engine.storage.chain` generates its per-row code from these definitions), export's
JSONL and CSV fields and the query filters.

Adding a column: one :class:`Column` here plus a frozen migration step
(:mod:`audit_engine.storage.sqlite.migrations`); the column test then names every other form
still to change by hand (``Row``, ``AuditEntry`` and intake's fast path, the query filters and
their CLI options, docs/integrity.md). The insert, the canonical form's loops, ``STORED_COLUMNS``
and export follow by themselves. A new column changes the canonical form, so it also needs a new
chain version (``chain.CHAIN_VERSION`` and a row in ``audit_chain_versions`` from the first id
hashed with it); verify reports rows of a version it does not know, and checking the older
rows with their own form is not built yet (there is one version today).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "CHAIN_FIELDS",
    "ENTRY_COLUMNS",
    "FILTER_COLUMNS",
    "STORED_COLUMNS",
    "STORED_ROW",
    "Column",
]


@dataclass(frozen=True, slots=True)
class Column:
    """One stored column of an entry."""

    name: str
    sql_type: Literal["TEXT", "INTEGER"]
    nullable: bool = False
    #: ``query``/``export``/``count`` take ``name=value`` for it (an equality filter).
    filter: bool = False
    #: A fresh file has an index whose first column is this one (indexes are most of
    #: SQLite's insert cost: only for the common filters).
    indexed: bool = False
    #: How outputs render the stored value: ``text`` as it is (None as ``null``/empty/``-``),
    #: ``json`` (``details``: nested in JSON, its text in CSV), ``flag`` (0/1 as false/true).
    render: Literal["text", "json", "flag"] = "text"


ENTRY_COLUMNS: tuple[Column, ...] = (
    Column("event_id", "TEXT", indexed=True),
    # Filtered as a range (``since``/``until``), not by equality.
    Column("timestamp", "TEXT", indexed=True),
    Column("actor", "TEXT", nullable=True, filter=True, indexed=True),
    Column("action", "TEXT", filter=True, indexed=True),
    Column("operation", "TEXT", filter=True, indexed=True),
    Column("outcome", "TEXT", filter=True, indexed=True),
    Column("resource_type", "TEXT", nullable=True, filter=True, indexed=True),
    Column("resource_id", "TEXT", nullable=True, filter=True),
    Column("correlation_id", "TEXT", nullable=True, filter=True),
    Column("details", "TEXT", render="json"),
    Column("critical", "INTEGER", render="flag"),
)

#: The names of the stored fields, in insert and canonical order (a ``Row``'s fields).
STORED_COLUMNS: tuple[str, ...] = tuple(column.name for column in ENTRY_COLUMNS)

#: A stored row as the chain, verify and export read it: the id, the fields, then the links.
STORED_ROW: tuple[str, ...] = ("id", *STORED_COLUMNS, "prev_hash", "hash")

#: What the canonical form joins, in order (see :mod:`audit_engine.storage.chain`).
CHAIN_FIELDS: tuple[str, ...] = ("chain_version", *STORED_ROW[:-1])

#: The columns ``query``, ``count`` and ``export`` filter on by equality, in order.
FILTER_COLUMNS: tuple[str, ...] = tuple(column.name for column in ENTRY_COLUMNS if column.filter)
