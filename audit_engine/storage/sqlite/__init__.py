"""The SQLite backend: the file and its schema, the chained append, and the read API.

- :mod:`.schema`: connections, file modes, the table definitions and migrations.
- :mod:`.append`: the write side — the chain's tail and the guarded, chained batch insert.
- :mod:`.sink`: :class:`SqliteSink`, the writer's ``ChainSink``.

The read API (:class:`~audit_engine.storage.store.AuditStore`) is shared by both backends.
"""

from audit_engine.models import format_timestamp
from audit_engine.rows import entry_row
from audit_engine.storage.sqlite.append import (
    append_batch,
    chain_tail,
    chunk_ladder,
    chunk_lengths,
    commit_batch,
    has_event,
    insert_entries,
    max_chunk,
    write_batch,
    write_in_caller_transaction,
)
from audit_engine.storage.sqlite.schema import (
    ANCHORS,
    CLEANUP_RUNS,
    SCHEMA_VERSION,
    STORED_COLUMNS,
    TABLE,
    is_busy,
    migrate,
    open_connection,
    rollback_quietly,
)

__all__ = [
    "ANCHORS",
    "CLEANUP_RUNS",
    "SCHEMA_VERSION",
    "STORED_COLUMNS",
    "TABLE",
    "append_batch",
    "chain_tail",
    "chunk_ladder",
    "chunk_lengths",
    "commit_batch",
    "entry_row",
    "format_timestamp",
    "has_event",
    "insert_entries",
    "is_busy",
    "max_chunk",
    "migrate",
    "open_connection",
    "rollback_quietly",
    "write_batch",
    "write_in_caller_transaction",
]
