"""The PostgreSQL backend against a real server: the schema as the engine creates and migrates
it, values whose server form differs from what the chain hashes, settings and connection errors
(no psycopg, no password in messages). Injected connections, streaming and purge:
test_postgres_writes.py."""

from __future__ import annotations

import socket
import sys
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
import trails

from audit_engine import AuditEntry, AuditService, AuditSettings, AuditStore, AuditStoreError
from audit_engine.errors import SettingsError
from audit_engine.storage import backends
from audit_engine.storage.postgres import schema

TABLES = {
    "audit_entries",
    "audit_anchors",
    "audit_cleanup_runs",
    "audit_chain_versions",
    "audit_checkpoints",
}
EXPECTED_COLUMNS = [
    # (name, type, nullable, generated)
    ("id", "bigint", "NO", "NEVER"),
    ("event_id", "text", "NO", "NEVER"),
    ("timestamp", "timestamp with time zone", "NO", "NEVER"),
    ("actor", "text", "YES", "NEVER"),
    ("action", "text", "NO", "NEVER"),
    ("operation", "text", "NO", "NEVER"),
    ("outcome", "text", "NO", "NEVER"),
    ("resource_type", "text", "YES", "NEVER"),
    ("resource_id", "text", "YES", "NEVER"),
    ("correlation_id", "text", "YES", "NEVER"),
    ("details_text", "text", "NO", "NEVER"),
    ("details", "jsonb", "YES", "ALWAYS"),
    ("critical", "boolean", "NO", "NEVER"),
    ("prev_hash", "text", "NO", "NEVER"),
    ("hash", "text", "NO", "NEVER"),
]
EXPECTED_INDEXES = {
    "audit_entries_pkey": "(id)",
    "ux_audit_entries_event_id": "(event_id)",
    # schema version 4: every filter's index ends in id (rows of a value come in id order)
    "ix_audit_entries_timestamp_id": '("timestamp", id)',
    "ix_audit_entries_actor": "(actor, id)",
    "ix_audit_entries_action": "(action, id)",
    "ix_audit_entries_operation": "(operation, id)",
    "ix_audit_entries_outcome": "(outcome, id)",
    "ix_audit_entries_resource_type": "(resource_type, id)",
    "ix_audit_entries_resource_type_id": "(resource_type, resource_id, id)",
}


def _tables(url: str, schema_name: str = "public") -> set[str]:
    rows = trails.query(
        url,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = ?",
        (schema_name,),
    )
    return {name for (name,) in rows}


def _record(url: str, *entries: AuditEntry) -> None:
    service = AuditService(AuditSettings(database=url, cleanup_enabled=False))
    try:
        for entry in entries:
            service.record(entry)
    finally:
        assert service.close(timeout=10) is True


def _verified(url: str) -> list[AuditEntry]:
    with AuditStore(url) as reader:
        report = reader.verify(min_retention=timedelta(0))
        assert report.ok is True, report
        return list(reader.query())


# -- the schema ---------------------------------------------------------------------------------


def test_the_engine_creates_the_tables_in_postgresql_types(pg_url: str) -> None:
    AuditStore(pg_url, create=True).close()

    columns = trails.query(
        pg_url,
        "SELECT column_name, data_type, is_nullable, is_generated FROM information_schema.columns "
        "WHERE table_name = 'audit_entries' ORDER BY ordinal_position",
    )
    assert columns == EXPECTED_COLUMNS
    [(expression,)] = trails.query(
        pg_url,
        "SELECT generation_expression FROM information_schema.columns "
        "WHERE table_name = 'audit_entries' AND column_name = 'details'",
    )
    assert expression == "(details_text)::jsonb"
    assert _tables(pg_url) == TABLES | {"audit_engine_meta"}


def test_the_filter_indexes_exist(pg_url: str) -> None:
    AuditStore(pg_url, create=True).close()

    rows = trails.query(
        pg_url, "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'audit_entries'"
    )
    found = {name: definition.rsplit(" USING btree ", 1)[1] for name, definition in rows}
    assert found == EXPECTED_INDEXES
    [(unique,)] = trails.query(
        pg_url, "SELECT indexdef FROM pg_indexes WHERE indexname = 'ux_audit_entries_event_id'"
    )
    assert unique.startswith("CREATE UNIQUE INDEX")


def test_the_meta_table_holds_the_schema_version(pg_url: str) -> None:
    with AuditStore(pg_url, create=True) as reader:
        assert reader.schema_version == schema.SCHEMA_VERSION

    meta = dict(trails.query(pg_url, "SELECT key, value FROM audit_engine_meta"))
    assert meta.pop("schema_version") == str(schema.SCHEMA_VERSION)
    assert len(meta.pop("trail_id")) == 32  # the origin its checkpoints name
    assert meta == {}
    assert trails.query(pg_url, "SELECT first_id, version FROM audit_chain_versions") == [(1, "1")]


def test_creating_twice_changes_nothing(pg_url: str) -> None:
    _record(pg_url, AuditEntry(action="a", event_id="one"))
    before = trails.query(
        pg_url, "SELECT table_name FROM information_schema.tables ORDER BY table_name"
    )

    AuditStore(pg_url, create=True).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        schema.migrate(conn)

    assert (
        trails.query(pg_url, "SELECT table_name FROM information_schema.tables ORDER BY table_name")
        == before
    )
    assert trails.query(pg_url, "SELECT count(*) FROM audit_chain_versions") == [(1,)]
    assert [entry.event_id for entry in _verified(pg_url)] == ["one"]


@pytest.mark.parametrize("create", [True, False])
def test_a_newer_schema_version_is_refused(pg_url: str, create: bool) -> None:
    AuditStore(pg_url, create=True).close()
    trails.execute(pg_url, "UPDATE audit_engine_meta SET value = '99'")

    with pytest.raises(AuditStoreError) as exc:
        AuditStore(pg_url, create=create)

    assert str(exc.value) == (
        f"the audit trail has PostgreSQL schema version 99; this audit_engine supports up to "
        f"{schema.SCHEMA_VERSION}: upgrade audit_engine"
    )


def test_reading_a_database_without_the_tables_creates_nothing(pg_url: str) -> None:
    with pytest.raises(AuditStoreError) as exc:
        AuditStore(pg_url)

    assert str(exc.value) == (
        f"no audit trail at {pg_url} (the database has no audit_engine tables; "
        "`audit-engine --db URL init` creates them)"
    )
    assert _tables(pg_url) == set()


def test_a_database_that_holds_other_tables_is_fine(pg_url: str) -> None:
    trails.execute(
        pg_url,
        "CREATE TABLE invoices (id bigint PRIMARY KEY, total numeric)",
        "INSERT INTO invoices VALUES (1, 9.5)",
    )

    _record(pg_url, AuditEntry(action="invoice.pay", event_id="pay-1"))

    assert [entry.event_id for entry in _verified(pg_url)] == ["pay-1"]
    assert _tables(pg_url) == TABLES | {"audit_engine_meta", "invoices"}
    assert trails.query(pg_url, "SELECT id, total::text FROM invoices") == [(1, "9.5")]


def test_a_table_of_another_application_named_like_the_engines_is_refused_untouched(
    pg_url: str,
) -> None:
    trails.execute(pg_url, "CREATE TABLE audit_entries (id serial PRIMARY KEY, who text)")

    with pytest.raises(AuditStoreError) as exc:
        AuditService(pg_url)

    assert str(exc.value) == (
        "this database's schema already holds a table named audit_entries that audit_engine did "
        "not create; give the trail a schema of its own (add ?options=-csearch_path%3D<schema> "
        "to the URL)"
    )
    assert _tables(pg_url) == {"audit_entries"}  # nothing created beside it
    assert trails.query(pg_url, "SELECT count(*) FROM audit_entries") == [(0,)]
    with pytest.raises(AuditStoreError) as read:  # a read says the same, not "run init"
        AuditStore(pg_url)
    assert str(read.value) == str(exc.value)


def test_tables_go_to_the_schema_the_url_names(pg_url: str) -> None:
    trails.execute(pg_url, "CREATE SCHEMA tenant_a", "CREATE SCHEMA tenant_b")
    url_a = f"{pg_url}?options=-csearch_path%3Dtenant_a"
    url_b = f"{pg_url}?options=-csearch_path%3Dtenant_b"

    _record(url_a, AuditEntry(action="a", event_id="in-a"))
    _record(url_b, AuditEntry(action="b", event_id="in-b"), AuditEntry(action="b", event_id="b2"))

    assert _tables(pg_url, "public") == set()
    assert _tables(pg_url, "tenant_a") == TABLES | {"audit_engine_meta"}
    assert [entry.event_id for entry in _verified(url_a)] == ["in-a"]
    assert [entry.event_id for entry in _verified(url_b)] == ["in-b", "b2"]


# -- values whose server form is not the hashed form --------------------------------------------

TRICKY_DETAILS: list[dict[str, Any]] = [
    {"big": 1e16, "small": 1e-7, "third": 1 / 3},
    {"zero": -0.0, "int_like": 2.0},
    {"b": 1, "a": 2, "aa": {"z": None, "y": [3, 2, 1]}},
    {"zoë": "ünïcödé 🦊", "esc": 'tab\tquote" back\\slash \u2028'},
    {"deep": [[{"x": [{"y": {"z": [1.5, True, None, "s"]}}]}]]},
    {"n": 12345678901234567890, "neg": -1, "e": 1.0e300},
]


@pytest.mark.parametrize("details", TRICKY_DETAILS)
def test_details_jsonb_reorders_but_the_chain_and_the_entry_do_not_change(
    pg_url: str, details: dict[str, Any]
) -> None:
    entry = AuditEntry(action="a", details=details)
    _record(pg_url, entry)

    [(hashed,)] = trails.query(pg_url, "SELECT details_text FROM audit_entries")
    assert hashed == entry.details_json  # the exact text the chain hashed
    [stored] = _verified(pg_url)
    assert stored == entry
    assert stored.details_json == entry.details_json
    # The jsonb column holds the same value, in its own form (queryable by the server).
    assert trails.query(pg_url, "SELECT details = ?::jsonb FROM audit_entries", (hashed,)) == [
        (True,)
    ]


def test_the_jsonb_form_really_differs_from_the_hashed_text(pg_url: str) -> None:
    # Without this, the test above could pass on a server that kept the text as it came.
    entry = AuditEntry(action="a", details={"b": 1, "a": 1e16})
    _record(pg_url, entry)

    [(hashed, server)] = trails.query(
        pg_url, "SELECT details_text, details::text FROM audit_entries"
    )
    assert hashed != server
    assert _verified(pg_url) == [entry]


TIMESTAMPS = [
    datetime(1, 1, 1, 0, 0, tzinfo=UTC),
    datetime(99, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC),
    datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-3))),
    datetime(2026, 1, 31, 12, 0, 0, 120000, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
]


def test_timestamps_round_trip_exactly_and_keep_their_order(pg_url: str) -> None:
    entries = [AuditEntry(action="a", timestamp=moment) for moment in TIMESTAMPS]
    _record(pg_url, *entries)

    stored = _verified(pg_url)

    assert stored == entries
    assert [entry.timestamp for entry in stored] == [
        moment.astimezone(UTC) for moment in TIMESTAMPS
    ]
    with AuditStore(pg_url) as reader:
        assert reader.count(since=datetime(1970, 1, 1, tzinfo=UTC)) == 3
        assert reader.count(until=datetime(100, 1, 1, tzinfo=UTC)) == 2


# -- settings and connection errors -------------------------------------------------------------


def _without_psycopg(monkeypatch: pytest.MonkeyPatch) -> None:
    # As on a machine without the extra: importing psycopg fails, and the backend is not loaded.
    monkeypatch.setitem(sys.modules, "psycopg", None)
    for name in list(sys.modules):
        if name.startswith("audit_engine.storage.postgres"):
            monkeypatch.delitem(sys.modules, name)


NO_PSYCOPG = (
    "a postgresql:// database needs the PostgreSQL backend, which needs psycopg: "
    "pip install 'audit-engine[postgres]'"
)


def test_a_url_without_psycopg_names_the_extra_in_audit_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _without_psycopg(monkeypatch)

    with pytest.raises(SettingsError) as exc:
        AuditStore("postgresql://audit@127.0.0.1:1/trail")

    assert str(exc.value) == NO_PSYCOPG


def test_a_url_without_psycopg_names_the_extra_in_the_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _without_psycopg(monkeypatch)
    settings = AuditSettings(database="postgresql://audit@127.0.0.1:1/trail", async_writes=False)

    with pytest.raises(SettingsError) as exc:
        AuditService(settings).close()

    assert str(exc.value) == NO_PSYCOPG


def test_a_missing_module_other_than_psycopg_is_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    _without_psycopg(monkeypatch)
    monkeypatch.setitem(sys.modules, "psycopg", psycopg)
    monkeypatch.setitem(sys.modules, "audit_engine.storage.postgres.sink", None)

    with pytest.raises(ImportError):
        backends.postgres()


SECRET = "s3cr3t-pw"


@pytest.mark.parametrize(
    "database",
    [
        f"postgresql://audit:{SECRET}@db.example:notaport/trail",
        f"mysql://audit:{SECRET}@db.example/trail",
    ],
)
def test_a_settings_error_never_shows_the_password(database: str) -> None:
    with pytest.raises(SettingsError) as exc:
        AuditSettings(database=database)

    assert "database" in str(exc.value)
    assert SECRET not in str(exc.value)


def test_a_settings_error_from_the_environment_never_shows_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AUDIT_TRAIL_DATABASE", f"postgres://audit:{SECRET}@db.example:x/trail")

    with pytest.raises(SettingsError) as exc:
        AuditSettings()

    assert SECRET not in str(exc.value)


def test_a_connection_error_never_shows_the_password() -> None:
    # A loopback port nobody listens on (bound and released: free for the moment).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://audit:{SECRET}@127.0.0.1:{port}/trail"

    with pytest.raises(AuditStoreError) as exc:
        AuditStore(url)

    assert str(exc.value).startswith(f"cannot connect to postgresql://audit:***@127.0.0.1:{port}/")
    assert SECRET not in str(exc.value)


def test_the_store_names_its_url_without_the_password(pg_url: str) -> None:
    url = pg_url.replace("postgres@", f"postgres:{SECRET}@")
    AuditStore(pg_url, create=True).close()

    with AuditStore(url) as reader:
        assert reader.path == url.replace(SECRET, "***")
        assert SECRET not in repr(reader.summary())


# -- errors after opening -----------------------------------------------------------------------


def test_a_table_dropped_under_an_open_store_is_an_audit_store_error(pg_url: str) -> None:
    _record(pg_url, AuditEntry(action="a", event_id="one"))
    with AuditStore(pg_url) as reader:
        trails.execute(pg_url, "DROP TABLE audit_entries")

        with pytest.raises(AuditStoreError) as exc:
            reader.count()
        with pytest.raises(AuditStoreError) as verify_exc:
            reader.verify(min_retention=timedelta(0))

    assert str(exc.value).startswith(f"cannot count the entries of {pg_url}: UndefinedTable: ")
    assert str(verify_exc.value).startswith(f"cannot verify {pg_url}: UndefinedTable: ")


def test_a_meta_table_without_the_entries_table_is_named(pg_url: str) -> None:
    AuditStore(pg_url, create=True).close()
    trails.execute(pg_url, "DROP TABLE audit_entries")

    with pytest.raises(AuditStoreError) as exc:
        AuditStore(pg_url)

    assert str(exc.value) == "no audit_entries table in this PostgreSQL schema"
