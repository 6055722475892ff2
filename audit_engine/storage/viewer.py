"""A Datasette metadata file that makes a trail a readable audit viewer.

``datasette serve audit.db --metadata meta.json`` then shows ``audit_entries`` newest first,
with facets on actor, operation, outcome and resource type, a description of every column, and
the engine's own tables (anchors, cleanup runs, checkpoints, versions) hidden from the index.

Datasette 0.65's metadata has no key that hides a *column*: ``?_nocol=`` does it per request
only. So the metadata carries a stylesheet (``extra_css_urls``, as a ``data:`` URL: nothing to
serve beside it) that hides ``prev_hash`` and ``hash`` in the HTML table of ``audit_entries``.
They stay in the row pages, in ``.json`` and ``.csv`` (verification needs them), and
``?_nocol=prev_hash&_nocol=hash`` drops them from those too.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Any

from audit_engine.columns import STORED_ROW
from audit_engine.errors import AuditStoreError
from audit_engine.models import Operation, Outcome
from audit_engine.settings import describe_database, resolve_database
from audit_engine.storage import backends
from audit_engine.storage.dialect import DATABASE_ERRORS
from audit_engine.storage.sqlite.schema import TABLE

__all__ = ["COLUMN_DESCRIPTIONS", "FACETS", "HIDDEN_COLUMNS", "datasette_metadata"]

#: What each column of ``audit_entries`` holds, as Datasette shows it under the column's name.
COLUMN_DESCRIPTIONS: dict[str, str] = {
    "id": "Row id: the position in the hash chain (commit order)",
    "event_id": "Unique id of the event, given by the application or generated",
    "timestamp": "When it happened, ISO-8601 UTC with microseconds",
    "actor": "Who did it (user, service or process)",
    "action": "What was done, e.g. note.export",
    "operation": "One of: " + ", ".join(operation.value for operation in Operation),
    "outcome": "One of: " + ", ".join(outcome.value for outcome in Outcome),
    "resource_type": "The kind of thing acted on",
    "resource_id": "Which one",
    "correlation_id": "Ties entries of one request, job or session together",
    "details": "Further fields, as JSON (redacted by the policy when recorded)",
    "critical": "1 for an entry the application marked critical, else 0",
    "prev_hash": "Hash of the previous row (the chain link); hidden in the table view",
    "hash": "This row's chain hash (audit-engine verify checks it); hidden in the table view",
}
#: The facets shown above the table.
FACETS: tuple[str, ...] = ("actor", "operation", "outcome", "resource_type")
#: The chain's columns: needed to verify, noise to a reader.
HIDDEN_COLUMNS: tuple[str, ...] = ("prev_hash", "hash")

# Datasette gives a table page's <body> the classes "table table-<name>", and every cell and
# header of a column the class "col-<name>" (the names here are plain CSS identifiers).
_CSS = " ".join(
    f"body.table-{TABLE} .col-{column} {{ display: none; }}" for column in HIDDEN_COLUMNS
)
_TABLES_SQL = "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"


def datasette_metadata(database: str | os.PathLike[str]) -> dict[str, Any]:
    """The Datasette metadata (a JSON-ready dict) for the SQLite trail ``database``.

    The database's key is the file's stem, as Datasette names it (``audit.db`` → ``audit``).
    A file that is missing or not a trail raises :class:`AuditStoreError` naming it; a
    PostgreSQL URL too (Datasette serves SQLite files only: ``audit-engine copy`` makes one).
    """
    try:
        resolved = resolve_database(database)
    except ValueError as exc:
        raise AuditStoreError(f"the database {exc}") from None
    if isinstance(resolved, str):
        raise AuditStoreError(
            f"Datasette serves SQLite files only, and {describe_database(resolved)} is a "
            "PostgreSQL trail: copy it into a file first (audit-engine copy URL FILE)"
        )
    return {
        "title": f"Audit trail {resolved.name}",
        "description": (
            "Newest entries first. The chain's hash columns are hidden in the table view; "
            "audit-engine verify checks them."
        ),
        "extra_css_urls": ["data:text/css," + urllib.parse.quote(_CSS)],
        "databases": {Path(resolved).stem: {"tables": _tables(resolved)}},
    }


def _tables(path: Path) -> dict[str, Any]:
    conn = backends.open_trail(path)  # refuses a missing file or one that is not a trail
    try:
        names = [str(row[0]) for row in conn.execute(_TABLES_SQL).fetchall()]
    except DATABASE_ERRORS as exc:
        raise AuditStoreError(f"cannot list the tables of {path}: {exc}") from None
    finally:
        conn.close()
    tables: dict[str, Any] = {name: {"hidden": True} for name in names if name != TABLE}
    tables[TABLE] = {
        "title": "Audit entries",
        "sort_desc": "id",
        "facets": list(FACETS),
        "columns": {name: COLUMN_DESCRIPTIONS[name] for name in STORED_ROW},
    }
    return tables
