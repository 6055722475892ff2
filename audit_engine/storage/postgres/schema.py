"""The PostgreSQL schema: the same tables as on SQLite, in PostgreSQL's types, and its migrations.

The entries table has the same name and columns as SQLite's, with ``timestamptz`` timestamps, a
``boolean`` flag and ``jsonb`` details — plus ``details_text``, the exact text the chain hashed.
``jsonb`` keeps its own normal form (keys by length, numbers as ``numeric``: ``1e+16`` comes back
as ``10000000000000000``), from which the hashed text cannot always be rebuilt; so the text is
what is written, and ``details`` is generated from it by the server (``details_text::jsonb``),
for queries such as ``details->>'size'``. The purge anchors,
cleanup runs, chain versions and the engine's meta table are SQLite's, column for column (their
hashes are over their stored text).

The tables live in the connection's current schema (the first of its ``search_path``), so a
database or schema that holds other tables is fine. :func:`migrate` creates or upgrades them under
an advisory lock, in one transaction: several processes starting at once migrate once.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import psycopg

from audit_engine.errors import AuditStoreError
from audit_engine.storage.anchors import ANCHORS, CLEANUP_RUNS
from audit_engine.storage.postgres.connection import CHAIN_LOCK_CLASS

__all__ = [
    "SCHEMA_VERSION",
    "TABLE",
    "chain_versions",
    "keep_guard",
    "migrate",
    "refuse_foreign_tables",
    "schema_version",
    "table_oid",
    "trail_bytes",
]

TABLE = "audit_entries"
META = "audit_engine_meta"
CHAIN_VERSIONS = "audit_chain_versions"
CHECKPOINTS = "audit_checkpoints"
# The schema version of a PostgreSQL trail; it counts its own steps (SQLite's reached 3 before
# PostgreSQL existed).
SCHEMA_VERSION = 4
_MIGRATION_LOCK = 0  # the advisory lock (CHAIN_LOCK_CLASS, 0) serialises migrations
logger = logging.getLogger("audit_engine.schema")  # the documented logger name, as on SQLite

# Frozen: version 1 as it shipped. A change is a new step appended to _STEPS.
_V1 = (
    f"""CREATE TABLE {TABLE} (
    id bigint PRIMARY KEY,
    event_id text NOT NULL,
    timestamp timestamptz NOT NULL,
    actor text,
    action text NOT NULL,
    operation text NOT NULL,
    outcome text NOT NULL,
    resource_type text,
    resource_id text,
    correlation_id text,
    details_text text NOT NULL,
    details jsonb GENERATED ALWAYS AS (details_text::jsonb) STORED,
    critical boolean NOT NULL,
    prev_hash text NOT NULL,
    hash text NOT NULL
)""",
    f"CREATE UNIQUE INDEX ux_audit_entries_event_id ON {TABLE} (event_id)",
    f"CREATE INDEX ix_audit_entries_timestamp ON {TABLE} (timestamp)",
    f"CREATE INDEX ix_audit_entries_actor_timestamp ON {TABLE} (actor, timestamp)",
    f"CREATE INDEX ix_audit_entries_resource ON {TABLE} (resource_type, resource_id)",
    f"""CREATE TABLE {ANCHORS} (
    id bigint PRIMARY KEY,
    last_deleted_id bigint NOT NULL,
    last_deleted_hash text NOT NULL,
    rows_deleted bigint NOT NULL,
    cutoff text NOT NULL,
    created_at text NOT NULL,
    newest_purged text,
    older_than_us bigint,
    prev_hash text,
    hash text
)""",
    f"""CREATE TABLE {CLEANUP_RUNS} (
    id bigint PRIMARY KEY,
    started_at text NOT NULL,
    finished_at text NOT NULL,
    cutoff text NOT NULL,
    rows_deleted bigint NOT NULL,
    batches bigint NOT NULL,
    duration_s double precision NOT NULL,
    prev_hash text,
    hash text
)""",
    f"CREATE TABLE {CHAIN_VERSIONS} (first_id bigint PRIMARY KEY, version text NOT NULL)",
    f"INSERT INTO {CHAIN_VERSIONS} (first_id, version) VALUES (1, '1')",
)
# Version 2: keyed chains, Merkle state, signed checkpoints, the trail's identity (the same as
# SQLite's version 4; the trail_id row is added by migrate(), which makes the random value).
_V2 = (
    f"ALTER TABLE {CHAIN_VERSIONS} ADD COLUMN key_id text",
    f"ALTER TABLE {ANCHORS} ADD COLUMN merkle text",
    f"""CREATE TABLE {CHECKPOINTS} (
    id bigint PRIMARY KEY,
    head_id bigint NOT NULL,
    head_hash text NOT NULL,
    tree_size bigint NOT NULL,
    root text NOT NULL,
    merkle text NOT NULL,
    note text NOT NULL,
    created_at text NOT NULL
)""",
)
# Version 3: the append-only guard (SQLite's version 5). One trigger function refuses UPDATE and
# DELETE; its argument says when it lets a row through: 'purge' while the purge's transaction has
# set audit_engine.purge (SET LOCAL: no other session sees it), 'unused' for a chain version no
# entry was hashed with yet (first_id after the tail), 'identity' for the meta table (its trail_id
# row, which the checkpoints name, never changes; schema_version does), 'never' otherwise.
# TRUNCATE is refused on every table. New entries must carry a known operation and outcome and
# hex hashes (details_text is valid JSON already: the generated jsonb column parses it); NOT
# VALID: the rows already there are not scanned (they were written by the engine), new rows are
# checked. Frozen literals: the values models.Operation and models.Outcome had when this step
# shipped.
_V3_REFUSE = """CREATE FUNCTION audit_engine_guard() RETURNS trigger LANGUAGE plpgsql AS $guard$
DECLARE
    tail bigint;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        RAISE EXCEPTION '% is append-only: TRUNCATE refused (audit_engine guard)', TG_TABLE_NAME
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF TG_ARGV[0] = 'identity' THEN
        IF OLD.key <> 'trail_id' AND (TG_OP = 'DELETE' OR NEW.key <> 'trail_id') THEN
            RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
        END IF;
        RAISE EXCEPTION 'audit_engine_meta keeps the trail_id row: % refused (it is the identity '
            'the trail checkpoints name; audit_engine guard)', TG_OP
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF TG_ARGV[0] = 'purge' AND current_setting('audit_engine.purge', true) = 'on' THEN
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    END IF;
    IF TG_ARGV[0] = 'unused' THEN
        EXECUTE format(
            'SELECT coalesce((SELECT max(id) FROM %1$I.audit_entries), '
            '(SELECT max(last_deleted_id) FROM %1$I.audit_anchors), 0)', TG_TABLE_SCHEMA
        ) INTO tail;
        IF TG_OP = 'INSERT' THEN
            IF NEW.first_id > tail THEN
                RETURN NEW;
            END IF;
            RAISE EXCEPTION 'audit_chain_versions refuses the row: a chain version starts after '
                'the newest entry (audit_engine guard)' USING ERRCODE = 'restrict_violation';
        END IF;
        IF OLD.first_id > tail AND (TG_OP = 'DELETE' OR NEW.first_id > tail) THEN
            RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
        END IF;
    END IF;
    RAISE EXCEPTION '% is append-only: % refused (audit_engine guard%)', TG_TABLE_NAME, TG_OP,
        CASE WHEN TG_TABLE_NAME IN ('audit_entries', 'audit_anchors')
            THEN '; purge with audit-engine purge' ELSE '' END
        USING ERRCODE = 'restrict_violation';
END
$guard$"""


def _v3_trigger(table: str, events: str, when: str, *, each: str = "ROW") -> str:
    name = f"audit_guard_{table.removeprefix('audit_')}_{events.split()[0].lower()}"
    return (
        f"CREATE TRIGGER {name} BEFORE {events} ON {table} "
        f"FOR EACH {each} EXECUTE FUNCTION audit_engine_guard('{when}')"
    )


_V3 = (
    _V3_REFUSE,
    _v3_trigger(TABLE, "UPDATE", "never"),
    _v3_trigger(TABLE, "DELETE", "purge"),
    _v3_trigger(ANCHORS, "UPDATE", "purge"),
    _v3_trigger(ANCHORS, "DELETE", "never"),
    _v3_trigger(CLEANUP_RUNS, "UPDATE OR DELETE", "never"),
    _v3_trigger(CHECKPOINTS, "UPDATE OR DELETE", "never"),
    _v3_trigger(CHAIN_VERSIONS, "INSERT OR UPDATE OR DELETE", "unused"),
    _v3_trigger(META, "UPDATE OR DELETE", "identity"),
    *(
        _v3_trigger(table, "TRUNCATE", "never", each="STATEMENT")
        for table in (TABLE, ANCHORS, CLEANUP_RUNS, CHECKPOINTS, CHAIN_VERSIONS, META)
    ),
    f"ALTER TABLE {TABLE} ADD CONSTRAINT audit_entries_operation_known CHECK "
    "(operation IN ('create', 'read', 'update', 'delete', 'execute')) NOT VALID",
    f"ALTER TABLE {TABLE} ADD CONSTRAINT audit_entries_outcome_known CHECK "
    "(outcome IN ('success', 'failure')) NOT VALID",
    f"ALTER TABLE {TABLE} ADD CONSTRAINT audit_entries_hash_hex CHECK "
    "(hash ~ '^[0-9a-f]{64}$') NOT VALID",
    f"ALTER TABLE {TABLE} ADD CONSTRAINT audit_entries_prev_hash_hex CHECK "
    "(prev_hash ~ '^[0-9a-f]{64}$') NOT VALID",
)
# Version 4 (SQLite's version 6): reads page in id order (ORDER BY id, keyset on id), so every
# filter's index ends in id: equality on its leading columns then walks the rows in id order and
# stops after the page, where (actor, timestamp) made the server sort all of an actor's rows.
# (timestamp, id) lets a time range's id bounds come from an index-only scan (reads.py).
_V4 = (
    # IF (NOT) EXISTS: a step run again on a trail that has it changes nothing.
    "DROP INDEX IF EXISTS ix_audit_entries_actor_timestamp",
    *(
        f"CREATE INDEX IF NOT EXISTS ix_audit_entries_{name} ON {TABLE} ({columns}, id)"
        for name, columns in (
            ("actor", "actor"),
            ("action", "action"),
            ("operation", "operation"),
            ("outcome", "outcome"),
            ("resource_type", "resource_type"),
            ("resource_type_id", "resource_type, resource_id"),
            ("timestamp_id", "timestamp"),
        )
    ),
    # Replaced by the two above, which end in id.
    "DROP INDEX IF EXISTS ix_audit_entries_resource",
    "DROP INDEX IF EXISTS ix_audit_entries_timestamp",
)
_STEPS: tuple[tuple[str, ...], ...] = (_V1, _V2, _V3, _V4)
assert len(_STEPS) == SCHEMA_VERSION

# The guard of the current version, kept in place by keep_guard(): trigger name -> (table, its
# statement), from the step's own statements. A later step that changes the guard updates this.
_GUARD_FUNCTION = _V3_REFUSE.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
_GUARD = {
    words[2]: (words[words.index("ON") + 1], statement)
    for statement in _V3
    if (words := statement.split())[:2] == ["CREATE", "TRIGGER"]
}
# The engine's tables in the entries table's schema, each with its guard triggers that fire: a
# disabled one (tgenabled 'D', or 'R': on replicas only) guards nothing and counts as missing.
_GUARD_SQL = (
    "SELECT c.relname, t.tgname FROM pg_catalog.pg_class c "
    "LEFT JOIN pg_catalog.pg_trigger t ON t.tgrelid = c.oid AND NOT t.tgisinternal "
    "AND t.tgenabled IN ('O', 'A') "
    "WHERE c.relnamespace = (SELECT relnamespace FROM pg_catalog.pg_class WHERE oid = %s) "
    "AND c.relname = ANY(%s)"
)


# The first table of this name along the search_path, read from pg_class with the statement's
# own snapshot. Not to_regclass: it resolves through the backend's catalog cache, which inside an
# open transaction (an injected connection) may still miss tables another session committed
# since; a migration re-checking under the lock would then create them a second time.
_LOOKUP_SQL = (
    "SELECT c.oid::bigint FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relname = %s AND n.nspname = ANY(current_schemas(false)) "
    "ORDER BY array_position(current_schemas(false), n.nspname) LIMIT 1"
)


def _lookup(conn: psycopg.Connection[Any], name: str) -> int | None:
    found = conn.execute(_LOOKUP_SQL, (name,)).fetchone()
    return None if found is None else int(found[0])


def _has_table(conn: psycopg.Connection[Any], name: str) -> bool:
    return _lookup(conn, name) is not None


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The schema version of the trail on ``conn`` (0: no engine tables here yet)."""
    if not _has_table(conn, META):
        return 0
    row = conn.execute(f"SELECT value FROM {META} WHERE key = 'schema_version'").fetchone()
    return 0 if row is None else int(row[0])


def migrate(conn: psycopg.Connection[Any]) -> None:
    """Create or upgrade the engine's tables on ``conn`` to :data:`SCHEMA_VERSION`.

    In a transaction of its own (autocommit connection), or in a savepoint of the caller's open
    transaction (an injected connection): a rollback then undoes it with the caller's change.
    """
    version = schema_version(conn)
    if version == SCHEMA_VERSION:
        return
    _refuse_newer(version)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (CHAIN_LOCK_CLASS, _MIGRATION_LOCK))
        version = schema_version(conn)  # again, under the lock: another process may have won
        _refuse_newer(version)
        if version == 0:
            refuse_foreign_tables(conn)
        if not _has_table(conn, META):
            conn.execute(f"CREATE TABLE {META} (key text PRIMARY KEY, value text NOT NULL)")
        for step in _STEPS[version:]:
            for statement in step:
                conn.execute(statement)  # our own literal DDL
        conn.execute(
            f"INSERT INTO {META} (key, value) VALUES ('trail_id', %s) ON CONFLICT DO NOTHING",
            (uuid.uuid4().hex,),
        )
        conn.execute(
            f"INSERT INTO {META} (key, value) VALUES ('schema_version', %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(SCHEMA_VERSION),),
        )


def _missing_guard(conn: psycopg.Connection[Any]) -> list[str]:
    oid = _lookup(conn, TABLE)
    if oid is None:
        return []
    tables = sorted({table for table, _ in _GUARD.values()})
    rows = conn.execute(_GUARD_SQL, (oid, tables)).fetchall()
    present = {table for table, _ in rows}
    firing = {(table, name) for table, name in rows if name is not None}
    return [
        name
        for name, (table, _) in _GUARD.items()
        if table in present and (table, name) not in firing
    ]


def keep_guard(conn: psycopg.Connection[Any], where: str) -> None:
    """Create the append-only guard again when a trigger of it is gone or disabled, logging a
    WARNING (on ``audit_engine.schema``) naming ``where`` and the triggers.

    One catalog query when all is in place; else, under the migration lock, every guard trigger
    is dropped and created again with the function, from the step's statements. Only the
    tables' owner may: another role (or a read-only server) gets the warning only.
    """
    gone = _missing_guard(conn)
    if not gone:
        return
    what = (
        f"the append-only guard of {where} was missing {len(gone)} "
        f"trigger{'s' if len(gone) > 1 else ''} ({', '.join(gone)})"
    )
    why = "a tool rebuilt or altered the audit tables — verify the trail"
    try:
        with conn.transaction():
            lock = (CHAIN_LOCK_CLASS, _MIGRATION_LOCK)
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", lock)
            if _missing_guard(conn):  # again, under the lock
                present = {table for table, _ in _GUARD.values() if _has_table(conn, table)}
                for name, (table, _) in _GUARD.items():
                    if table in present:
                        conn.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
                conn.execute(_GUARD_FUNCTION)
                for table, statement in _GUARD.values():
                    if table in present:
                        conn.execute(statement)  # our own literal DDL
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction) as exc:
        reason = str(exc).splitlines()[0]
        logger.warning("%s: NOT recreated (%s; the tables' owner can); %s", what, reason, why)
        return
    logger.warning("%s: recreated; %s", what, why)


def refuse_foreign_tables(conn: psycopg.Connection[Any]) -> None:
    """A schema without the engine's tables that holds a table of one of their names: another
    application's. The engine never writes into it; the trail needs a schema of its own."""
    for name in (TABLE, ANCHORS, CLEANUP_RUNS, CHAIN_VERSIONS, CHECKPOINTS):
        if _has_table(conn, name):
            raise AuditStoreError(
                f"this database's schema already holds a table named {name} that audit_engine "
                "did not create; give the trail a schema of its own (add "
                "?options=-csearch_path%3D<schema> to the URL)"
            )


def _refuse_newer(version: int) -> None:
    if version > SCHEMA_VERSION:
        raise AuditStoreError(
            f"the audit trail has PostgreSQL schema version {version}; this audit_engine "
            f"supports up to {SCHEMA_VERSION}: upgrade audit_engine"
        )


def table_oid(conn: psycopg.Connection[Any]) -> int:
    """The entries table's oid as a signed 32-bit integer: the second key of the chain's
    advisory lock, ``pg_advisory_xact_lock(int, int)`` (an oid is unsigned, up to 2**32 - 1)."""
    oid = _lookup(conn, TABLE)
    if oid is None:
        raise AuditStoreError(f"no {TABLE} table in this PostgreSQL schema")
    return oid - 2**32 if oid >= 2**31 else oid


def chain_versions(conn: psycopg.Connection[Any]) -> list[tuple[int, str]]:
    """``(first_id, version)`` pairs in id order, as on SQLite."""
    if not _has_table(conn, CHAIN_VERSIONS):
        return []
    rows = conn.execute(f"SELECT first_id, version FROM {CHAIN_VERSIONS} ORDER BY first_id")
    return [(int(first_id), str(version)) for first_id, version in rows]


def trail_bytes(conn: psycopg.Connection[Any]) -> int:
    """The bytes the engine's tables take on the server, with their indexes and TOAST."""
    tables = [TABLE, ANCHORS, CLEANUP_RUNS, CHAIN_VERSIONS, CHECKPOINTS, META]
    row = conn.execute(
        "SELECT coalesce(sum(pg_total_relation_size(to_regclass(name))), 0) "
        "FROM unnest(%s::text[]) AS name",
        (tables,),
    ).fetchone()
    return int(row[0]) if row is not None else 0
