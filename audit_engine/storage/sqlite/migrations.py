"""The SQLite schema's migrations, frozen: each step exactly as its version shipped.

``STEPS[v]`` upgrades the audit tables from schema version ``v`` to ``v + 1``. A step never
imports today's definitions — the column list, the canonical forms, the hash functions — because
those move with the code, while a file made by an earlier release must end up with the tables and
the hashes that release's code would have given it. So each step carries its own copy of what it
needs (table layout as literal SQL, the hash of the chain version it writes), and a released step
is never edited: a change is a new step appended to :data:`STEPS`.

The engine's bookkeeping lives in its own tables, not in ``PRAGMA user_version``, which belongs
to whichever application owns the database file (a host may keep the audit tables in its own
database and version its own schema with that number):

- ``audit_engine_meta(key, value)`` holds ``schema_version``;
- ``audit_chain_versions(first_id, version)`` says which canonical form (``chain.CHAIN_VERSION``)
  hashes the entries from ``first_id`` on, until the next row's ``first_id``.

Releases up to 0.1.0 (schema version 3) had neither table and wrote ``user_version``, which is
read (never written) for a file with audit tables and no meta table. From version 5 on, triggers
``audit_guard_<table>_<event>`` refuse UPDATE and DELETE on the audit tables (:func:`_v5_guard`);
a step that changes rows of a guarded table, or the guard, follows :mod:`.guard`'s doc.
"""

from __future__ import annotations

import hashlib
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import sqlite_utils

META = "audit_engine_meta"
CHAIN_VERSIONS = "audit_chain_versions"

# A step takes a sqlite-utils Database (the signature the steps always had, which tests that
# build old files call) but runs literal SQL on its connection: sqlite-utils' DDL may change.
Step = Callable[[sqlite_utils.Database], None]


# -- version 1: the entries table ------------------------------------------------------------------
# The DDL is the text sqlite-utils generated for release 0.1.0, kept literal so a new file's schema
# is the one a migrated file has (tests compare sqlite_master) whatever sqlite-utils does next.


def _v1_create_entries(db: sqlite_utils.Database) -> None:
    """Version 1: the entries table and its indexes (one per common filter: indexes are most of
    SQLite's insert cost)."""
    conn = db.conn
    conn.execute(
        'CREATE TABLE "audit_entries" (\n'
        '   "id" INTEGER PRIMARY KEY,\n'
        '   "event_id" TEXT NOT NULL,\n'
        '   "timestamp" TEXT NOT NULL,\n'
        '   "actor" TEXT,\n'
        '   "action" TEXT NOT NULL,\n'
        '   "operation" TEXT NOT NULL,\n'
        '   "outcome" TEXT NOT NULL,\n'
        '   "resource_type" TEXT,\n'
        '   "resource_id" TEXT,\n'
        '   "correlation_id" TEXT,\n'
        '   "details" TEXT NOT NULL,\n'
        '   "critical" INTEGER NOT NULL\n'
        ")"
    )
    for unique, name, columns in (
        ("UNIQUE ", "ux_audit_entries_event_id", '"event_id"'),
        ("", "ix_audit_entries_timestamp", '"timestamp"'),
        ("", "ix_audit_entries_actor_timestamp", '"actor", "timestamp"'),
        ("", "ix_audit_entries_resource", '"resource_type", "resource_id"'),
    ):
        conn.execute(f'CREATE {unique}INDEX "{name}"\n    ON "audit_entries" ({columns})')


# -- version 2: the entry chain, purge anchors, cleanup runs -------------------------------------

# Frozen copy of chain version 1's canonical form (chain.py documents it): the stored fields of
# version 1 in order, then prev_hash; NULL as U+0000; joined by U+001F after the version "1".
_V2_COLUMNS = (
    "event_id",
    "timestamp",
    "actor",
    "action",
    "operation",
    "outcome",
    "resource_type",
    "resource_id",
    "correlation_id",
    "details",
    "critical",
)


def _v2_entry_hash(row: Sequence[Any]) -> str:
    text = "\x1f".join(["1", *("\x00" if v is None else str(v) for v in row)])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _v2_chain(db: sqlite_utils.Database) -> None:
    """Version 2: the hash chain (prev_hash, hash) over the entries, retention anchors and
    cleanup runs. The rows a version-1 file holds are chained in id order, a slice at a time."""
    conn = db.conn
    conn.execute('ALTER TABLE "audit_entries" ADD COLUMN "prev_hash" TEXT')
    conn.execute('ALTER TABLE "audit_entries" ADD COLUMN "hash" TEXT')
    prev_hash = "0" * 64  # the genesis hash
    last_id = 0
    while True:
        rows = conn.execute(
            f"SELECT id, {', '.join(_V2_COLUMNS)} FROM audit_entries "
            "WHERE id > ? ORDER BY id LIMIT 5000",
            (last_id,),
        ).fetchall()
        if not rows:
            break
        updates = []
        for row in rows:
            digest = _v2_entry_hash((*row, prev_hash))
            updates.append((prev_hash, digest, row[0]))
            prev_hash = digest
        conn.executemany("UPDATE audit_entries SET prev_hash = ?, hash = ? WHERE id = ?", updates)
        last_id = rows[-1][0]
    conn.execute(
        'CREATE TABLE "audit_anchors" (\n'
        '   "id" INTEGER PRIMARY KEY,\n'
        '   "last_deleted_id" INTEGER NOT NULL,\n'
        '   "last_deleted_hash" TEXT NOT NULL,\n'
        '   "rows_deleted" INTEGER NOT NULL,\n'
        '   "cutoff" TEXT NOT NULL,\n'
        '   "created_at" TEXT NOT NULL\n'
        ")"
    )
    conn.execute(
        'CREATE TABLE "audit_cleanup_runs" (\n'
        '   "id" INTEGER PRIMARY KEY,\n'
        '   "started_at" TEXT NOT NULL,\n'
        '   "finished_at" TEXT NOT NULL,\n'
        '   "cutoff" TEXT NOT NULL,\n'
        '   "rows_deleted" INTEGER NOT NULL,\n'
        '   "batches" INTEGER NOT NULL,\n'
        '   "duration_s" REAL NOT NULL\n'
        ")"
    )


# -- version 3: anchors record what they replaced; anchors and runs are hash chains --------------

# Frozen copies of the "anchor-1" and "run-1" canonical forms (anchors.py documents them).
_V3_ANCHOR_COLUMNS = (
    "last_deleted_id",
    "last_deleted_hash",
    "rows_deleted",
    "newest_purged",
    "cutoff",
    "older_than_us",
    "created_at",
)
_V3_RUN_COLUMNS = ("started_at", "finished_at", "cutoff", "rows_deleted", "batches", "duration_s")


def _v3_text(value: Any) -> str:
    if value is None:
        return "\x00"
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def _v3_chain_records(
    conn: sqlite3.Connection, table: str, version: str, columns: Sequence[str]
) -> None:
    prev = "0" * 64  # the genesis hash
    rows = conn.execute(f"SELECT id, {', '.join(columns)} FROM {table} ORDER BY id").fetchall()
    for row in rows:
        text = "\x1f".join([version, *(_v3_text(v) for v in (*row, prev))])
        current = hashlib.sha256(text.encode("utf-8")).hexdigest()
        conn.execute(
            f"UPDATE {table} SET prev_hash = ?, hash = ? WHERE id = ?", (prev, current, row[0])
        )
        prev = current


def _v3_maintenance_chains(db: sqlite_utils.Database) -> None:
    """Version 3: anchors record the newest purged timestamp and the age the purge was run with;
    anchors and cleanup runs become hash chains. Anchors written before keep NULL for what they
    never recorded (verify says so instead of guessing)."""
    conn = db.conn
    conn.execute('ALTER TABLE "audit_anchors" ADD COLUMN "newest_purged" TEXT')
    conn.execute('ALTER TABLE "audit_anchors" ADD COLUMN "older_than_us" INTEGER')
    for table in ("audit_anchors", "audit_cleanup_runs"):
        conn.execute(f'ALTER TABLE "{table}" ADD COLUMN "prev_hash" TEXT')
        conn.execute(f'ALTER TABLE "{table}" ADD COLUMN "hash" TEXT')
    _v3_chain_records(conn, "audit_anchors", "anchor-1", _V3_ANCHOR_COLUMNS)
    _v3_chain_records(conn, "audit_cleanup_runs", "run-1", _V3_RUN_COLUMNS)


# -- version 4: keyed chains, Merkle state, signed checkpoints, the trail's identity ---------------


def _v4_integrity(db: sqlite_utils.Database) -> None:
    """Version 4: a chain version names the key that keys it (NULL: unkeyed); a purge anchor
    keeps the Merkle tree's compact frontier over what it replaced; the checkpoints the writer
    signed are kept in the trail (a convenience copy: verification trusts the external log);
    the trail gets a random identity, the origin its checkpoints name."""
    conn = db.conn
    conn.execute('ALTER TABLE "audit_chain_versions" ADD COLUMN "key_id" TEXT')
    conn.execute('ALTER TABLE "audit_anchors" ADD COLUMN "merkle" TEXT')
    conn.execute(
        'CREATE TABLE "audit_checkpoints" (\n'
        '   "id" INTEGER PRIMARY KEY,\n'
        '   "head_id" INTEGER NOT NULL,\n'
        '   "head_hash" TEXT NOT NULL,\n'
        '   "tree_size" INTEGER NOT NULL,\n'
        '   "root" TEXT NOT NULL,\n'
        '   "merkle" TEXT NOT NULL,\n'
        '   "note" TEXT NOT NULL,\n'
        '   "created_at" TEXT NOT NULL\n'
        ")"
    )
    conn.execute(
        "INSERT OR IGNORE INTO audit_engine_meta (key, value) VALUES ('trail_id', ?)",
        (uuid.uuid4().hex,),
    )


# -- version 5: the append-only guard --------------------------------------------------------------
# Frozen copies of the values models.Operation and models.Outcome had when this step shipped.
_V5_OPERATIONS = ("create", "read", "update", "delete", "execute")
_V5_OUTCOMES = ("success", "failure")
V5_PURGE_MARKER = "audit_engine_purge"
# The chain's tail id: the newest entry, else the newest anchor's last purged row, else 0.
_V5_TAIL = (
    "coalesce((SELECT max(id) FROM audit_entries), "
    "(SELECT max(last_deleted_id) FROM audit_anchors), 0)"
)
_V5_PURGING = f"EXISTS (SELECT 1 FROM {V5_PURGE_MARKER})"


def _v5_listed(values: tuple[str, ...]) -> str:
    return ", ".join(f"''{value}''" for value in values)  # quoted inside RAISE's literal


def _v5_one_of(column: str, values: tuple[str, ...]) -> str:
    # OR, not IN: a trigger builds an IN list's lookup table again for every row (measured
    # ~1.7 us a row, a third of a plain insert; the OR chain ~0.1 us).
    return "(" + " OR ".join(f"{column} = '{value}'" for value in values) + ")"


def _v5_hex(*columns: str) -> str:
    # Present and 64 characters long; the digits themselves are not tested: any test of them
    # (GLOB, ltrim) cost a quarter of the insert rate, measured, and verify() refuses a hash
    # that is not the row's anyway. coalesce: a NULL hash makes the test NULL, which a WHEN
    # takes as "no" (the row would pass).
    lengths = " AND ".join(f"length({column}) = 64" for column in columns)
    return f"coalesce({lengths}, 0)"


def _v5_refuse(table: str, event: str, when: str | None, message: str) -> str:
    condition = "" if when is None else f"\n    WHEN {when}"
    name = f"audit_guard_{table.removeprefix('audit_')}_{event.lower()}"
    return (
        f'CREATE TRIGGER "{name}" BEFORE {event} ON "{table}"{condition}\n'
        f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
    )


def _v5_append_only(table: str, event: str, when: str | None = None) -> str:
    # The entries and their anchors change through the purge only: the message says so.
    hint = "; purge with audit-engine purge" if table in ("audit_entries", "audit_anchors") else ""
    return _v5_refuse(
        table, event, when, f"{table} is append-only: {event} refused (audit_engine guard{hint})"
    )


def _v5_statements() -> tuple[str, ...]:
    statements: list[str] = []
    entry_checks = (
        ("json_valid(NEW.details)", "details must be valid JSON"),
        (
            _v5_one_of("NEW.operation", _V5_OPERATIONS),
            f"operation must be one of {_v5_listed(_V5_OPERATIONS)}",
        ),
        (
            _v5_one_of("NEW.outcome", _V5_OUTCOMES),
            f"outcome must be one of {_v5_listed(_V5_OUTCOMES)}",
        ),
        (_v5_hex("NEW.hash"), "hash must be 64 hex digits"),
        (_v5_hex("NEW.prev_hash"), "prev_hash must be 64 hex digits"),
    )
    # One trigger whose WHEN is the whole check (the cost of a good row: both hashes in one
    # test); its body, run only for a bad row, names the first check that failed.
    when = " AND ".join(
        [*(check for check, _ in entry_checks[:3]), _v5_hex("NEW.hash", "NEW.prev_hash")]
    )
    body = "".join(
        f"\n    SELECT RAISE(ABORT, 'audit_entries refuses the row: "
        f"{message} (audit_engine guard)') WHERE NOT {check};"
        for check, message in entry_checks
    )
    statements.append(
        'CREATE TRIGGER "audit_guard_entries_insert" BEFORE INSERT ON "audit_entries"\n'
        f"    WHEN NOT ({when})\n"
        f"BEGIN{body}\nEND"
    )
    statements.append(_v5_append_only("audit_entries", "UPDATE"))
    statements.append(_v5_append_only("audit_entries", "DELETE", f"NOT {_V5_PURGING}"))
    # INSERT OR REPLACE deletes the stored row without firing DELETE triggers (unless the
    # connection set recursive_triggers): refuse the insert first, in SQLite's own words for a
    # plain duplicate, so the engine's errors read as before. Two primary-key/index probes per
    # row: no cost that shows in the bench.
    for column in ("event_id", "id"):  # SQLite runs the newest trigger first: id, as it would
        statements.append(
            f'CREATE TRIGGER "audit_guard_entries_replace_{column}" BEFORE INSERT ON '
            f'"audit_entries"\n    WHEN EXISTS (SELECT 1 FROM "audit_entries" WHERE "{column}" = '
            f'NEW."{column}")\nBEGIN SELECT RAISE(ABORT, \'UNIQUE constraint failed: '
            f"audit_entries.{column}'); END"
        )
    statements.append(_v5_append_only("audit_anchors", "UPDATE", f"NOT {_V5_PURGING}"))
    statements.append(_v5_append_only("audit_anchors", "DELETE"))
    for table in ("audit_cleanup_runs", "audit_checkpoints"):
        statements.append(_v5_append_only(table, "UPDATE"))
        statements.append(_v5_append_only(table, "DELETE"))
    statements.append(
        _v5_append_only(
            "audit_chain_versions",
            "UPDATE",
            f"OLD.first_id <= {_V5_TAIL} OR NEW.first_id <= {_V5_TAIL}",
        )
    )
    statements.append(
        _v5_append_only("audit_chain_versions", "DELETE", f"OLD.first_id <= {_V5_TAIL}")
    )
    statements.append(
        _v5_refuse(
            "audit_chain_versions",
            "INSERT",
            f"NEW.first_id <= {_V5_TAIL}",
            "audit_chain_versions refuses the row: a chain version starts after the newest "
            "entry (audit_engine guard)",
        )
    )
    # The trail's identity row, which its checkpoints name; schema_version stays writable. INSERT
    # OR REPLACE over trail_id deletes it without a DELETE trigger: refused first.
    kept = (
        f"{META} keeps the trail_id row: %s refused (it is the identity the trail checkpoints name"
    )
    for event, when in (
        ("UPDATE", "OLD.key = 'trail_id' OR NEW.key = 'trail_id'"),
        ("DELETE", "OLD.key = 'trail_id'"),
        (
            "INSERT",
            f"NEW.key = 'trail_id' AND EXISTS (SELECT 1 FROM {META} WHERE key = 'trail_id')",
        ),
    ):
        statements.append(_v5_refuse(META, event, when, kept % event + "; audit_engine guard)"))
    return tuple(statements)


# The guard as version 5 creates it: the marker table, then the triggers in order (SQLite runs
# the newest BEFORE trigger first). guard.py recreates them from these when a tool drops them.
V5_MARKER_TABLE = f'CREATE TABLE "{V5_PURGE_MARKER}" ("purging" INTEGER NOT NULL)'
V5_GUARD_TRIGGERS = _v5_statements()


def _v5_guard(db: sqlite_utils.Database) -> None:
    """Version 5: the append-only guard. Triggers refuse UPDATE and DELETE on the audit tables,
    and refuse entries that are not what the engine writes (details not JSON, an unknown
    operation or outcome, a hash that is not 64 lowercase hex digits), and any change to the
    trail's identity (``audit_engine_meta``'s ``trail_id`` row).

    Two exceptions. The purge deletes entries and moves its anchor while a row is in
    ``audit_engine_purge``: it inserts that row and deletes it again in the same transaction, so
    no other connection ever sees it. A chain-versions row no entry was hashed with yet (its
    ``first_id`` after the tail) may be replaced by the writer that recorded it.

    Triggers rather than CHECK constraints: SQLite adds a CHECK only by rebuilding the table,
    which on a big trail means copying every row; a trigger is added at once, and its cost per
    insert measured the same as the CHECK's (guard.py's doc says how later steps change them).
    """
    conn = db.conn
    conn.execute(V5_MARKER_TABLE)
    for statement in V5_GUARD_TRIGGERS:
        conn.execute(statement)


# -- version 6: filter indexes that end in the id ------------------------------------------------
_V6_INDEXED = ("actor", "action", "operation", "outcome", "resource_type")  # CREATE INDEX (col)


def _v6_indexes_in_id_order(db: sqlite_utils.Database) -> None:
    """Version 6: reads page in id order, and every SQLite index ends in the rowid (id): (actor)
    replaces (actor, timestamp), which made SQLite sort an actor's rows; filters get one each."""
    conn = db.conn  # IF (NOT) EXISTS: run again on a file that has them, it changes nothing
    conn.execute('DROP INDEX IF EXISTS "ix_audit_entries_actor_timestamp"')
    for c in _V6_INDEXED:
        conn.execute(f'CREATE INDEX IF NOT EXISTS "ix_audit_entries_{c}" ON audit_entries ("{c}")')


# STEPS[v] upgrades schema version v to v + 1; append, never edit.
STEPS: tuple[Step, ...] = (
    _v1_create_entries,
    _v2_chain,
    _v3_maintenance_chains,
    _v4_integrity,
    _v5_guard,
    _v6_indexes_in_id_order,
)

LAST_USER_VERSION = 3  # the newest schema version release 0.1.0's user_version could name


def create_engine_tables(conn: sqlite3.Connection) -> None:
    """The bookkeeping tables, on a file that has none (new, or made by release 0.1.0). Its
    entries, and those steps up to version 3 chain, are chain version "1" from the first id."""
    conn.execute(f"CREATE TABLE {META} (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute(
        f"CREATE TABLE {CHAIN_VERSIONS} (first_id INTEGER PRIMARY KEY, version TEXT NOT NULL)"
    )
    conn.execute(f"INSERT INTO {META} (key, value) VALUES ('schema_version', '0')")
    conn.execute(f"INSERT INTO {CHAIN_VERSIONS} (first_id, version) VALUES (1, '1')")


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return found is not None


def has_engine_tables(conn: sqlite3.Connection) -> bool:
    """Whether ``conn`` has the engine's meta table (made by a release after 0.1.0)."""
    return _has_table(conn, META)


def stored_version(conn: sqlite3.Connection) -> int:
    """The schema version of the audit tables on ``conn`` (0: none yet): from the meta table;
    else, with audit tables, the ``user_version`` release 0.1.0 wrote; else 0 (the host's)."""
    if _has_table(conn, META):
        row = conn.execute(f"SELECT value FROM {META} WHERE key = 'schema_version'").fetchone()
        return 0 if row is None else int(row[0])
    if _has_table(conn, "audit_entries"):
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        return version
    return 0


def set_stored_version(conn: sqlite3.Connection, version: int) -> None:
    """Record ``version`` in the meta table (in the migration's transaction)."""
    sql = f"INSERT OR REPLACE INTO {META} (key, value) VALUES ('schema_version', ?)"
    conn.execute(sql, (str(version),))
