"""The append-only guard (schema version 5 on SQLite, 3 on PostgreSQL): the audit tables refuse
UPDATE, DELETE and TRUNCATE from any connection and malformed entries, while the engine's purge
still deletes, and a chain version no entry was hashed with yet may still be replaced.

Statements here run on another program's connection *without* lifting the guard (unlike
``trails.execute``, which plays a forger who takes it out of the way first).
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import sqlite_utils
import trails
from click.testing import CliRunner

from audit_engine import AuditEntry, AuditService, AuditStore
from audit_engine.cli import main
from audit_engine.errors import AuditStoreError
from audit_engine.storage import backends, dialect, leaves
from audit_engine.storage.postgres.connection import mask_url, pg_sql
from audit_engine.storage.sqlite import schema

OLD = datetime(2024, 1, 1, tzinfo=UTC)
HEX = "a" * 64
ROOT = Path(__file__).resolve().parents[2]


def _refused(table: str, event: str) -> str:
    hint = "; purge with audit-engine purge" if table in ("audit_entries", "audit_anchors") else ""
    return f"{table} is append-only: {event} refused (audit_engine guard{hint})"


def _raw(database: Path | str, sql: str, params: Sequence[Any] = ()) -> None:
    """Run ``sql`` as another tool would, guard and all; committed if it passes."""
    if trails.is_pg(database):
        with psycopg.connect(str(database)) as conn:
            conn.execute(pg_sql(sql), tuple(params))
        return
    with contextlib.closing(sqlite3.connect(database)) as sqlite_conn:
        sqlite_conn.execute(sql, params)
        sqlite_conn.commit()


def _refusal(database: Path | str, sql: str, params: Sequence[Any] = ()) -> str:
    """The database's message refusing ``sql`` (the test fails if it is not refused)."""
    errors = (psycopg.Error, sqlite3.DatabaseError)
    with pytest.raises(errors) as exc:
        _raw(database, sql, params)
    message = str(exc.value)
    return message.splitlines()[0] if trails.is_pg(database) else message


def _trail(database: Path | str, old: int = 4, new: int = 2) -> None:
    entries = [
        AuditEntry(event_id=f"e-{n}", action="doc.save", timestamp=OLD + timedelta(seconds=n))
        for n in range(old)
    ]
    entries += [AuditEntry(event_id=f"n-{n}", action="doc.save") for n in range(new)]
    trails.write(database, entries)


def _count(database: Path | str) -> int:
    return int(trails.query(database, "SELECT count(*) FROM audit_entries")[0][0])


# -- refused changes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "table", "event"),
    [
        ("UPDATE audit_entries SET actor = 'mallory' WHERE id = 6", "audit_entries", "UPDATE"),
        ("DELETE FROM audit_entries WHERE id = 6", "audit_entries", "DELETE"),
        ("DELETE FROM audit_entries", "audit_entries", "DELETE"),
        ("UPDATE audit_anchors SET rows_deleted = 1", "audit_anchors", "UPDATE"),
        ("DELETE FROM audit_anchors", "audit_anchors", "DELETE"),
        ("UPDATE audit_cleanup_runs SET rows_deleted = 0", "audit_cleanup_runs", "UPDATE"),
        ("DELETE FROM audit_cleanup_runs", "audit_cleanup_runs", "DELETE"),
        ("UPDATE audit_checkpoints SET root = 'x'", "audit_checkpoints", "UPDATE"),
        ("DELETE FROM audit_checkpoints", "audit_checkpoints", "DELETE"),
        ("UPDATE audit_chain_versions SET version = '2'", "audit_chain_versions", "UPDATE"),
        ("DELETE FROM audit_chain_versions", "audit_chain_versions", "DELETE"),
    ],
)
def test_an_update_or_delete_from_another_connection_is_refused(
    trail_db: Path | str, sql: str, table: str, event: str
) -> None:
    _trail(trail_db)
    with AuditStore(trail_db) as store:  # an anchor and a cleanup run to aim at
        assert store.purge(timedelta(days=1)).rows_deleted == 4
    trails.execute(  # a checkpoint row (inserting is allowed)
        trail_db,
        "INSERT INTO audit_checkpoints (id, head_id, head_hash, tree_size, root, merkle, note, "
        f"created_at) VALUES (1, 6, '{HEX}', 6, '{HEX}', '{{}}', 'note', 'now')",
    )
    before = trails.query(trail_db, f"SELECT * FROM {table} ORDER BY 1")
    assert before

    assert _refusal(trail_db, sql).endswith(_refused(table, event))

    assert trails.query(trail_db, f"SELECT * FROM {table} ORDER BY 1") == before
    with AuditStore(trail_db) as store:
        assert store.verify(min_retention=timedelta(0)).ok


@pytest.mark.parametrize(
    "table",
    [
        "audit_entries",
        "audit_anchors",
        "audit_cleanup_runs",
        "audit_checkpoints",
        "audit_chain_versions",
    ],
)
def test_truncate_is_refused_even_to_the_owner(pg_url: str, table: str) -> None:
    _trail(pg_url)

    assert _refusal(pg_url, f"TRUNCATE {table} CASCADE") == (
        f"{table} is append-only: TRUNCATE refused (audit_engine guard)"
    )
    assert _count(pg_url) == 6


@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [
        ("operation", "steal", "operation"),
        ("outcome", "maybe", "outcome"),
        ("hash", "a" * 63, "hash"),
        ("hash", None, "hash"),
        ("prev_hash", "a" * 65, "prev_hash"),
    ],
)
def test_a_malformed_entry_is_refused(
    trail_db: Path | str, column: str, value: Any, problem: str
) -> None:
    _trail(trail_db, old=0, new=1)
    details = trails.details_column(trail_db)
    row = {"operation": "update", "outcome": "success", "hash": HEX, "prev_hash": HEX}
    row[column] = value
    sql = (
        "INSERT INTO audit_entries (id, event_id, timestamp, action, operation, outcome, "
        f"{details}, critical, prev_hash, hash) VALUES "
        "(2, 'forged', '2024-01-01T00:00:00.000000Z', 'a.b', ?, ?, '{}', ?, ?, ?)"
    )

    message = _refusal(
        trail_db,
        sql,
        (
            row["operation"],
            row["outcome"],
            not trails.is_pg(trail_db) and 0,
            row["prev_hash"],
            row["hash"],
        ),
    )

    if trails.is_pg(trail_db):  # a CHECK constraint (or NOT NULL) names the column
        assert problem in message
    else:
        assert message == (
            f"audit_entries refuses the row: {problem} must be "
            + {
                "operation": "one of 'create', 'read', 'update', 'delete', 'execute'",
                "outcome": "one of 'success', 'failure'",
            }.get(problem, "64 hex digits")
            + " (audit_engine guard)"
        )
    assert _count(trail_db) == 1


@pytest.mark.parametrize("value", ["A" * 64, "g" * 64])
def test_hash_digits_are_checked_by_postgresql_and_by_verify_on_sqlite(
    trail_db: Path | str, value: str
) -> None:
    # SQLite's guard checks the hashes' length only (testing each digit cost a quarter of the
    # insert rate); such a row is still no entry of the chain: verify() refuses it.
    _trail(trail_db, old=0, new=1)
    sql = (
        "INSERT INTO audit_entries (id, event_id, timestamp, action, operation, outcome, "
        f"{trails.details_column(trail_db)}, critical, prev_hash, hash) VALUES "
        "(2, 'forged', '2024-01-01T00:00:00.000000Z', 'a.b', 'update', 'success', '{}', ?, ?, ?)"
    )
    params = (not trails.is_pg(trail_db) and 0, HEX, value)

    if trails.is_pg(trail_db):
        assert "hash" in _refusal(trail_db, sql, params)
        return
    _raw(trail_db, sql, params)  # through the guard: accepted
    with AuditStore(trail_db) as store:
        report = store.verify()
    assert (report.ok, report.first_bad_id) == (False, 2)


def test_details_that_are_not_json_are_refused(db_path: Path) -> None:
    _trail(db_path, old=0, new=1)
    sql = (
        "INSERT INTO audit_entries (id, event_id, timestamp, action, operation, outcome, "
        "details, critical, prev_hash, hash) VALUES "
        f"(2, 'forged', 't', 'a.b', 'update', 'success', '{{not json', 0, '{HEX}', '{HEX}')"
    )

    assert _refusal(db_path, sql) == (
        "audit_entries refuses the row: details must be valid JSON (audit_engine guard)"
    )


def test_sqlite_utils_cannot_update_replace_or_insert_a_bad_entry(db_path: Path) -> None:
    _trail(db_path, old=0, new=3)
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        db = sqlite_utils.Database(conn)
        table = db.table("audit_entries")
        good = dict(next(iter(table.rows_where("id = 2"))))

        with pytest.raises(sqlite3.IntegrityError, match=re.escape(_refused(table.name, "UPDATE"))):
            table.update(2, {"actor": "mallory"})
        # A REPLACE over a stored entry is refused before it could delete it.
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE constraint failed: audit_entries"):
            table.insert({**good, "actor": "mallory"}, replace=True)
        with pytest.raises(sqlite3.IntegrityError, match="operation must be one of"):
            table.insert({**good, "id": 9, "event_id": "x", "operation": "steal"})
        with pytest.raises(sqlite3.IntegrityError, match="details must be valid JSON"):
            table.insert({**good, "id": 9, "event_id": "x", "details": "{"})
        with pytest.raises(sqlite3.IntegrityError, match=re.escape(_refused(table.name, "DELETE"))):
            table.delete_where()

    with AuditStore(db_path) as store:
        assert store.count() == 3
        assert store.verify().ok


@pytest.mark.parametrize("column", ["id", "event_id"])
def test_insert_or_replace_from_plain_sqlite3_cannot_replace_an_entry(
    db_path: Path, column: str
) -> None:
    # Without recursive_triggers (Python's sqlite3, the sqlite3 shell) REPLACE deletes the
    # stored row without firing DELETE triggers: the guard refuses the insert itself.
    _trail(db_path, old=0, new=3)
    before = trails.query(db_path, "SELECT * FROM audit_entries ORDER BY id")
    # The same row again, or a copy of it under a new id (so only its event_id collides).
    new_id = "id" if column == "id" else "9"
    sql = (
        f"INSERT OR REPLACE INTO audit_entries SELECT {new_id}, event_id, timestamp, actor, "
        "action, operation, outcome, resource_type, resource_id, correlation_id, details, "
        "critical, prev_hash, hash FROM audit_entries WHERE id = 2"
    )

    assert _refusal(db_path, sql) == f"UNIQUE constraint failed: audit_entries.{column}"
    assert trails.query(db_path, "SELECT * FROM audit_entries ORDER BY id") == before


# -- what still works -----------------------------------------------------------------------


def test_purge_through_the_api_still_deletes(trail_db: Path | str) -> None:
    _trail(trail_db)

    with AuditStore(trail_db) as store:
        report = store.purge(timedelta(days=1), batch_size=3)
        verified = store.verify(min_retention=timedelta(0))

    assert (report.rows_deleted, report.batches) == (4, 2)
    assert verified.ok, verified.reason
    assert _count(trail_db) == 2
    if not trails.is_pg(trail_db):  # the marker row went with the purge's transaction
        assert trails.query(trail_db, "SELECT count(*) FROM audit_engine_purge") == [(0,)]


def test_purge_from_the_command_line_still_deletes(trail_db: Path | str) -> None:
    _trail(trail_db)

    result = CliRunner().invoke(main, ["--db", str(trail_db), "purge", "--older-than", "1d"])

    assert result.exit_code == 0, result.output
    assert result.output.startswith("Purged 4 entries older than")
    assert _count(trail_db) == 2


def test_the_purge_marker_is_invisible_to_other_connections(trail_db: Path | str) -> None:
    _trail(trail_db)
    conn = backends.open_trail(trail_db)
    try:
        dialect.begin_write(conn)
        dialect.mark_purge(conn)
        # Another tool, meanwhile: its DELETE is still refused (SQLite: it cannot even start
        # writing while the purge holds the lock; PostgreSQL: the setting is the session's).
        if trails.is_pg(trail_db):
            assert _refusal(trail_db, "DELETE FROM audit_entries WHERE id = 6").endswith(
                _refused("audit_entries", "DELETE")
            )
        else:
            seen = trails.query(trail_db, "SELECT count(*) FROM audit_engine_purge")
            assert seen == [(0,)]
        conn.execute("DELETE FROM audit_entries WHERE id = 1")  # the purge itself may
        dialect.rollback_quietly(conn)
    finally:
        conn.close()
    assert _count(trail_db) == 6


def test_the_guard_survives_a_reopen_and_new_writes(trail_db: Path | str, tmp_path: Path) -> None:
    _trail(trail_db, old=0, new=2)
    with AuditService(
        trail_db, cleanup_enabled=False, deadletter_path=tmp_path / "dl.jsonl"
    ) as audit:
        audit.record(action="doc.save")
    with AuditStore(trail_db) as store:
        assert store.count() == 3

    assert _refusal(trail_db, "UPDATE audit_entries SET action = 'x' WHERE id = 3").endswith(
        _refused("audit_entries", "UPDATE")
    )


def test_a_chain_version_no_entry_was_hashed_with_may_be_replaced_not_an_earlier_one(
    trail_db: Path | str,
) -> None:
    _trail(trail_db, old=0, new=3)
    insert = "INSERT INTO audit_chain_versions (first_id, version, key_id) VALUES (?, '2', ?)"
    assert _refusal(trail_db, insert, (3, "k1")).endswith(
        "audit_chain_versions refuses the row: a chain version starts after the newest entry "
        "(audit_engine guard)"
    )

    _raw(trail_db, insert, (4, "k1"))  # a writer's new range, before its first row
    _raw(trail_db, "UPDATE audit_chain_versions SET key_id = 'k2' WHERE first_id = 4")
    _raw(trail_db, "DELETE FROM audit_chain_versions WHERE first_id = 4")
    assert _refusal(
        trail_db, "UPDATE audit_chain_versions SET first_id = 3 WHERE first_id = 1"
    ).endswith(_refused("audit_chain_versions", "UPDATE"))

    assert trails.query(trail_db, "SELECT first_id, version FROM audit_chain_versions") == [
        (1, "1")
    ]


def test_a_file_of_the_previous_version_gets_the_guard_when_opened(db_path: Path) -> None:
    _trail(db_path, old=0, new=3)
    with contextlib.closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
        conn.execute("BEGIN")
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE name LIKE 'audit_guard_%'"
        ).fetchall():
            conn.execute(f'DROP TRIGGER "{name}"')
        conn.execute("DROP TABLE audit_engine_purge")
        conn.execute("UPDATE audit_engine_meta SET value = '4' WHERE key = 'schema_version'")
        conn.execute("COMMIT")

    with AuditStore(db_path) as store:
        assert store.verify().ok

    assert _refusal(db_path, "DELETE FROM audit_entries").endswith(
        _refused("audit_entries", "DELETE")
    )
    assert trails.query(
        db_path, "SELECT value FROM audit_engine_meta WHERE key = ?", ("schema_version",)
    ) == [(str(schema.SCHEMA_VERSION),)]


# -- PostgreSQL: the documented roles -------------------------------------------------------


def _roles_sql() -> str:
    """The ```sql block of docs/postgresql.md's section on roles, as written."""
    text = (ROOT / "docs" / "postgresql.md").read_text(encoding="utf-8")
    section = text.split("## Roles: who may write what", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"^```sql\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    assert found is not None, "docs/postgresql.md: no sql block under 'Roles'"
    return found.group(1)


def _as_role(url: str, role: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))


@pytest.fixture
def roles(pg_url: str) -> Iterator[tuple[str, str]]:
    """The doc's roles, made unique to this test's database (roles are the cluster's); yields
    the URLs of the application's role and of retention's."""
    AuditStore(pg_url, create=True).close()  # `audit-engine init`, as the owner
    suffix = urlsplit(pg_url).path.lstrip("/")
    names = {"audit_app": f"app_{suffix}", "audit_retention": f"retention_{suffix}"}
    sql = _roles_sql()
    for doc_name, name in names.items():
        sql = re.sub(rf"\b{doc_name}\b", name, sql)
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(sql.encode())  # the statements as the doc gives them, in one go
    yield _as_role(pg_url, names["audit_app"]), _as_role(pg_url, names["audit_retention"])
    with psycopg.connect(pg_url, autocommit=True) as admin:
        for name in names.values():
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (name,),
            )
            admin.execute(f"DROP OWNED BY {name}")
            admin.execute(f"DROP ROLE {name}")


def test_the_documented_app_role_appends_but_cannot_change_anything(
    roles: tuple[str, str], tmp_path: Path
) -> None:
    app, _ = roles
    with AuditService(app, cleanup_enabled=False, deadletter_path=tmp_path / "dl.jsonl") as audit:
        for n in range(5):
            audit.record(action="doc.save", resource_id=str(n))
    assert audit.stats().written == 5

    for sql in (
        "UPDATE audit_entries SET actor = 'mallory'",
        "DELETE FROM audit_entries",
        "TRUNCATE audit_entries",
        "UPDATE audit_anchors SET rows_deleted = 0",
        "INSERT INTO audit_anchors (id, last_deleted_id, last_deleted_hash, rows_deleted, "
        "cutoff, created_at) VALUES (1, 1, 'x', 1, 'x', 'x')",
    ):
        assert "permission denied" in _refusal(app, sql), sql
    # Even with the purge's setting: the privilege is missing, not only the marker.
    with psycopg.connect(app) as conn:
        conn.execute("SET LOCAL audit_engine.purge = 'on'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM audit_entries")
    with AuditStore(app) as store:
        assert store.count() == 5
        assert store.verify().ok


def test_the_documented_retention_role_purges_but_cannot_edit(roles: tuple[str, str]) -> None:
    app, retention = roles
    trails.write(
        app,
        [AuditEntry(event_id=f"e-{n}", action="doc.save", timestamp=OLD) for n in range(3)]
        + [AuditEntry(event_id="new", action="doc.save")],
    )

    result = CliRunner().invoke(main, ["--db", retention, "purge", "--older-than", "1d"])

    assert result.exit_code == 0, result.output
    assert result.output.startswith("Purged 3 entries older than")
    assert _refusal(retention, "UPDATE audit_entries SET actor = 'mallory'").endswith(
        "permission denied for table audit_entries"
    )
    assert _refusal(retention, "DELETE FROM audit_entries").endswith(
        _refused("audit_entries", "DELETE")
    )
    with AuditStore(app) as store:
        assert store.count() == 1
        verified = store.verify(min_retention=timedelta(0))
    assert verified.ok, verified.reason
    assert verified.anchors_checked == 1


# -- the guard put back on open --------------------------------------------------------------


def _triggers(database: Path) -> list[tuple[str, str]]:
    """The guard's triggers in creation order (SQLite fires the newest first), with their text."""
    return trails.query(
        database,
        "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' "
        "AND name LIKE 'audit_guard_%' ORDER BY rowid",
    )


def _guard_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "audit_engine.schema" and "append-only guard" in record.getMessage()
    ]


def test_a_table_rebuilt_by_sqlite_utils_transform_gets_its_guard_back_on_open(
    db_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _trail(db_path, old=0, new=3)
    fresh = tmp_path / "fresh.db"
    _trail(fresh, old=0, new=1)
    db = sqlite_utils.Database(db_path)
    db["audit_entries"].transform(types={"actor": str})  # rebuilds the table: its triggers go
    db.conn.close()
    gone = {name for name, _ in _triggers(fresh)} - {name for name, _ in _triggers(db_path)}
    assert gone == {
        "audit_guard_entries_insert",
        "audit_guard_entries_update",
        "audit_guard_entries_delete",
        "audit_guard_entries_replace_event_id",
        "audit_guard_entries_replace_id",
    }

    with caplog.at_level("WARNING", logger="audit_engine.schema"), AuditStore(db_path) as store:
        assert store.verify().ok
    [warning] = _guard_warnings(caplog)
    assert warning.startswith(f"the append-only guard of {db_path} was missing 5 triggers (")
    assert all(name in warning for name in gone)
    assert warning.endswith(
        ": recreated; a tool rebuilt or altered the audit tables — verify the trail"
    )
    assert _triggers(db_path) == _triggers(fresh)  # all of it, in the step's order
    assert _refusal(db_path, "DELETE FROM audit_entries WHERE id = 3").endswith(
        _refused("audit_entries", "DELETE")
    )

    caplog.clear()
    with caplog.at_level("WARNING", logger="audit_engine.schema"), AuditStore(db_path) as store:
        assert store.count() == 3
    assert _guard_warnings(caplog) == []  # in place now: nothing to say


def test_a_dropped_trigger_is_put_back_by_the_next_service(
    db_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _trail(db_path, old=0, new=2)
    before = _triggers(db_path)
    _raw(db_path, 'DROP TRIGGER "audit_guard_entries_update"')
    with (
        caplog.at_level("WARNING", logger="audit_engine.schema"),
        AuditService(
            db_path, cleanup_enabled=False, deadletter_path=tmp_path / "dl.jsonl"
        ) as audit,
    ):
        audit.record(action="doc.save")
        audit.flush()
    assert [w.split(": ")[0] for w in _guard_warnings(caplog)] == [
        f"the append-only guard of {db_path} was missing 1 trigger (audit_guard_entries_update)"
    ]
    assert _triggers(db_path) == before
    assert _refusal(db_path, "UPDATE audit_entries SET actor = 'x'").endswith(
        _refused("audit_entries", "UPDATE")
    )


def test_a_read_only_connection_only_warns(db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _trail(db_path, old=0, new=1)
    _raw(db_path, 'DROP TRIGGER "audit_guard_entries_delete"')
    reader = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, isolation_level=None)
    with contextlib.closing(reader), caplog.at_level("WARNING", logger="audit_engine.schema"):
        schema.keep_guard(reader, db_path)
    [warning] = _guard_warnings(caplog)
    assert "(audit_guard_entries_delete): NOT recreated (the connection is read-only)" in warning
    _raw(db_path, "DELETE FROM audit_entries WHERE id = 1")  # still unguarded: nothing changed


def test_a_dropped_or_disabled_trigger_on_postgresql_is_put_back(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    _trail(pg_url, old=0, new=2)
    with psycopg.connect(pg_url) as owner:
        owner.execute("DROP TRIGGER audit_guard_entries_delete ON audit_entries")
        owner.execute("ALTER TABLE audit_entries DISABLE TRIGGER audit_guard_entries_update")
    _raw(pg_url, "DELETE FROM audit_entries WHERE id = 2")  # the guard is really gone
    with caplog.at_level("WARNING", logger="audit_engine.schema"), AuditStore(pg_url) as store:
        assert store.count() == 1
    [warning] = _guard_warnings(caplog)
    assert "was missing 2 triggers (audit_guard_entries_update, audit_guard_entries_delete)" in (
        warning
    )
    assert warning.startswith(f"the append-only guard of {mask_url(pg_url)} was missing")
    assert ": recreated;" in warning
    for sql, event in (
        ("DELETE FROM audit_entries", "DELETE"),
        ("UPDATE audit_entries SET actor = 'x'", "UPDATE"),
    ):
        assert _refusal(pg_url, sql).endswith(_refused("audit_entries", event))


# -- the trail's identity --------------------------------------------------------------------

_IDENTITY = "audit_engine_meta keeps the trail_id row: {} refused (it is the identity the trail "
_IDENTITY += "checkpoints name; audit_engine guard)"


def test_the_trail_id_row_cannot_be_changed_or_removed(trail_db: Path | str) -> None:
    _trail(trail_db, old=0, new=1)
    trail_id = trails.query(trail_db, "SELECT value FROM audit_engine_meta WHERE key = 'trail_id'")
    refused = {
        "UPDATE audit_engine_meta SET value = 'f' WHERE key = 'trail_id'": "UPDATE",
        "UPDATE audit_engine_meta SET key = 'trail_id' WHERE key = 'schema_version'": "UPDATE",
        "DELETE FROM audit_engine_meta": "DELETE",
    }
    if trails.is_pg(trail_db):
        upsert = "INSERT INTO audit_engine_meta VALUES ('trail_id', 'f') "
        refused[upsert + "ON CONFLICT (key) DO UPDATE SET value = excluded.value"] = "UPDATE"
    else:
        refused["INSERT OR REPLACE INTO audit_engine_meta VALUES ('trail_id', 'f')"] = "INSERT"
        refused["REPLACE INTO audit_engine_meta VALUES ('trail_id', 'f')"] = "INSERT"
    for sql, event in refused.items():
        assert _refusal(trail_db, sql).endswith(_IDENTITY.format(event)), sql
    if trails.is_pg(trail_db):
        assert _refusal(trail_db, "TRUNCATE audit_engine_meta").endswith(
            "audit_engine_meta is append-only: TRUNCATE refused (audit_engine guard)"
        )
    assert (
        trails.query(trail_db, "SELECT value FROM audit_engine_meta WHERE key = 'trail_id'")
        == trail_id
    )

    # Migrations still record the schema version, each backend in its own way.
    if trails.is_pg(trail_db):
        _raw(
            trail_db,
            "INSERT INTO audit_engine_meta VALUES ('schema_version', '3') "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
    else:
        _raw(trail_db, "INSERT OR REPLACE INTO audit_engine_meta VALUES ('schema_version', '5')")
    _raw(trail_db, "UPDATE audit_engine_meta SET value = value WHERE key = 'schema_version'")
    with AuditStore(trail_db) as store:
        assert store.verify().ok


def test_a_removed_trail_id_is_named_as_tampering_not_an_old_schema(trail_db: Path | str) -> None:
    _trail(trail_db, old=0, new=1)
    remove = "DELETE FROM audit_engine_meta WHERE key = 'trail_id'"
    if trails.is_pg(trail_db):  # a forger who owns the tables (tamper.GUARDED has no meta table)
        with psycopg.connect(str(trail_db)) as owner:
            owner.execute("ALTER TABLE audit_engine_meta DISABLE TRIGGER USER")
            owner.execute(remove)
            owner.execute("ALTER TABLE audit_engine_meta ENABLE TRIGGER USER")
    else:
        trails.execute(trail_db, remove)
    conn = backends.open_trail(trail_db, create=False)
    try:
        with pytest.raises(AuditStoreError) as exc:
            leaves.trail_id(conn)
    finally:
        conn.close()
    message = str(exc.value)
    assert "identity row (audit_engine_meta, key 'trail_id') was removed" in message
    assert "tampering or damage" in message
    assert "cannot be matched" in message
    assert "init" not in message  # opening or init cannot bring it back
