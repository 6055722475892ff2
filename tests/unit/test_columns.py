"""The stored columns are defined once (audit_engine.columns); every other form agrees with it.

Adding a column is one :class:`~audit_engine.columns.Column` plus a migration step: each test
here that fails then names a form still to change — ``Row``, ``AuditEntry``, the table a fresh
file gets, the insert, the chain's canonical form and its documentation, the query filters and
their options, the export's fields.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from audit_engine import AuditEntry, AuditStore, formats
from audit_engine.cli import bench_modes
from audit_engine.cli import main as cli
from audit_engine.columns import (
    CHAIN_FIELDS,
    ENTRY_COLUMNS,
    FILTER_COLUMNS,
    STORED_COLUMNS,
    STORED_ROW,
    Column,
)
from audit_engine.pipeline.intake import plain_row
from audit_engine.rows import Row, entry_row
from audit_engine.storage import chain, exported
from audit_engine.storage import sqlite as store
from audit_engine.storage.reads import FILTER_NAMES
from audit_engine.storage.sqlite import schema

DOCS = Path(__file__).resolve().parents[2] / "docs"
BY_NAME = {column.name: column for column in ENTRY_COLUMNS}
PYTHON_TYPE = {"TEXT": str, "INTEGER": int}
# Query's keyword arguments that are not an equality filter on one column.
NOT_FILTERS = {"since", "until", "limit", "newest_first"}
# A value of each enumerated filter column that the rows written here do not have.
OTHER_VALUES = {"operation": "read", "outcome": "success"}


def _entry(**changes: Any) -> AuditEntry:
    fields: dict[str, Any] = {
        "event_id": "evt-1",
        "timestamp": datetime(2026, 11, 23, 9, 30, 15, 123456, tzinfo=UTC),
        "actor": "alice",
        "action": "doc.save",
        "operation": "update",
        "outcome": "failure",
        "resource_type": "doc",
        "resource_id": "42",
        "correlation_id": "req-7",
        "details": {"title": "Plan", "n": 3},
        "critical": True,
    }
    return AuditEntry.model_validate({**fields, **changes})


@pytest.fixture
def written(tmp_path: Path) -> Path:
    path = tmp_path / "audit.db"
    conn = store.open_connection(path, create=True)
    try:
        store.write_batch(conn, [entry_row(_entry()), entry_row(_entry(event_id="evt-2"))])
    finally:
        conn.close()
    return path


# -- the definition itself ----------------------------------------------------------------------


def test_the_definition_is_consistent() -> None:
    assert len(set(STORED_COLUMNS)) == len(STORED_COLUMNS)
    assert tuple(column.name for column in ENTRY_COLUMNS) == STORED_COLUMNS
    assert ("id", *STORED_COLUMNS, "prev_hash", "hash") == STORED_ROW
    assert ("chain_version", "id", *STORED_COLUMNS, "prev_hash") == CHAIN_FIELDS
    assert tuple(c.name for c in ENTRY_COLUMNS if c.filter) == FILTER_COLUMNS
    for column in ENTRY_COLUMNS:
        assert column.name.isidentifier(), column
        assert column.sql_type in PYTHON_TYPE, column
        assert column.render in ("text", "json", "flag"), column


def test_a_column_is_frozen() -> None:
    column = Column("x", "TEXT")
    with pytest.raises(AttributeError):
        column.name = "y"  # type: ignore[misc]


# -- the entry's forms --------------------------------------------------------------------------


def _optional(annotation: Any) -> tuple[type, bool]:
    """(the type, whether None is allowed) of ``str`` or ``str | None``."""
    if isinstance(annotation, types.UnionType):
        others = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return others[0], len(others) < len(typing.get_args(annotation))
    return annotation, False


def test_row_has_the_stored_columns_in_order_with_their_types() -> None:
    assert Row._fields == STORED_COLUMNS
    hints = typing.get_type_hints(Row)
    for column in ENTRY_COLUMNS:
        assert _optional(hints[column.name]) == (PYTHON_TYPE[column.sql_type], column.nullable), (
            column.name
        )


def test_audit_entry_has_a_field_per_column_and_only_nullable_ones_default_to_none() -> None:
    assert tuple(AuditEntry.model_fields) == STORED_COLUMNS
    for column in ENTRY_COLUMNS:
        info = AuditEntry.model_fields[column.name]
        takes_none = _optional(info.annotation)[1]
        assert takes_none == column.nullable, column.name
        if column.nullable:
            assert info.default is None, column.name


def test_entry_row_puts_each_value_under_its_own_column() -> None:
    entry = _entry()
    row = entry_row(entry)._asdict()
    assert row == {
        "event_id": "evt-1",
        "timestamp": "2026-11-23T09:30:15.123456Z",
        "actor": "alice",
        "action": "doc.save",
        "operation": "update",
        "outcome": "failure",
        "resource_type": "doc",
        "resource_id": "42",
        "correlation_id": "req-7",
        "details": '{"n":3,"title":"Plan"}',
        "critical": 1,
    }
    assert tuple(row) == STORED_COLUMNS


def test_intake_fast_path_builds_the_row_the_model_would() -> None:
    # plain_row builds the tuple by position (for speed): a column it misses shows up here.
    fields = _entry().model_dump()
    row, _ = plain_row(fields, 65536)
    assert len(row) == len(STORED_COLUMNS)
    assert row._asdict() == entry_row(AuditEntry.model_validate(fields))._asdict()


# -- the schema and the insert ------------------------------------------------------------------


def test_the_schema_module_takes_its_columns_from_the_definition() -> None:
    assert schema.STORED_COLUMNS is STORED_COLUMNS
    assert store.STORED_COLUMNS is STORED_COLUMNS


def test_a_fresh_file_has_one_table_column_per_definition(written: Path) -> None:
    conn = store.open_connection(written)
    try:
        info = conn.execute(f"PRAGMA table_info({schema.TABLE})").fetchall()
        leading = {
            conn.execute(f"PRAGMA index_info({index[1]})").fetchone()[2]
            for index in conn.execute(f"PRAGMA index_list({schema.TABLE})")
        }
    finally:
        conn.close()
    assert tuple(row[1] for row in info) == STORED_ROW
    declared = {row[1]: (row[2], not row[3]) for row in info}
    for column in ENTRY_COLUMNS:
        assert declared[column.name] == (column.sql_type, column.nullable), column.name
    assert leading == {column.name for column in ENTRY_COLUMNS if column.indexed}


def test_the_insert_stores_each_value_of_a_row_in_its_column(written: Path) -> None:
    conn = store.open_connection(written)
    try:
        stored = conn.execute(
            f"SELECT {', '.join(STORED_COLUMNS)} FROM {schema.TABLE} ORDER BY id LIMIT 1"
        ).fetchone()
    finally:
        conn.close()
    assert stored == tuple(entry_row(_entry()))


def test_the_benchmark_inserts_the_stored_columns() -> None:
    assert tuple(bench_modes._COLUMNS.split(", ")) == STORED_COLUMNS
    assert bench_modes.INSERT_ROW.count("?") == len(STORED_COLUMNS)
    assert bench_modes.INSERT_STORED.count("?") == len(STORED_ROW)


# -- the chain ----------------------------------------------------------------------------------


def _canonical_by_name(record: dict[str, Any]) -> bytes:
    # The documented form, built by column name from the definition.
    values = {"chain_version": chain.CHAIN_VERSION, **record}
    return "\x1f".join(
        "\x00" if values[name] is None else str(values[name]) for name in CHAIN_FIELDS
    ).encode("utf-8")


@pytest.mark.parametrize("null", [None, *(c.name for c in ENTRY_COLUMNS if c.nullable)])
def test_link_and_verify_hash_the_canonical_form_of_the_columns(null: str | None) -> None:
    fields = entry_row(_entry() if null is None else _entry(**{null: None}))
    (row,) = chain.link([fields], 41, "ab" * 32)
    record = dict(zip(STORED_ROW, row, strict=True))
    assert record["hash"] == chain._sha256(_canonical_by_name(record)).hexdigest()
    assert chain.canonical(row[:-1]) == _canonical_by_name(record)
    report = chain.verify_rows([row], chain.ChainHead(id=41, hash="ab" * 32))
    assert report.ok
    assert report.rows_checked == 1


def test_the_generated_loops_name_every_column_once() -> None:
    for source in (chain._LINK_SOURCE, chain._CHECK_SOURCE):
        for column in ENTRY_COLUMNS:
            # Unpacked once, then used once in the canonical form (twice in a None test).
            uses = 3 if column.nullable else 2
            assert len(re.findall(rf"\bv_{column.name}\b", source)) == uses, column.name


def _documented_fields(text: str) -> tuple[str, ...]:
    # The names of a "fields = [ ... ]" block, without its comments.
    block = text[text.index("fields = [") : text.index("]", text.index("fields = ["))]
    block = re.sub(r"#[^\n]*", "", block.removeprefix("fields = ["))
    return tuple(re.findall(r"[A-Za-z_]+", block.replace('"1"', "chain_version")))


def test_the_documented_canonical_form_lists_the_columns() -> None:
    integrity = (DOCS / "integrity.md").read_text(encoding="utf-8")
    assert _documented_fields(integrity) == CHAIN_FIELDS
    assert f'"{", ".join(STORED_ROW)}"' in re.sub(r'"\s+"', "", integrity)
    doc = chain.__doc__ or ""
    listed = doc[doc.index("[CHAIN_VERSION,") + 1 : doc.index("prev_hash]") + len("prev_hash")]
    names = [name.strip() for name in listed.split(",")]
    assert ("chain_version", *names[1:]) == CHAIN_FIELDS


# -- reads, filters and export ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["query", "count", "export"])
def test_query_count_and_export_filter_on_the_filter_columns(method: str) -> None:
    # The filters arrive as **filters (typed by EntryFilters) and are read by reads.where.
    parameters = inspect.signature(getattr(AuditStore, method)).parameters
    assert parameters["filters"].kind is inspect.Parameter.VAR_KEYWORD
    assert tuple(name for name in FILTER_NAMES if name not in NOT_FILTERS) == FILTER_COLUMNS


def test_each_filter_column_filters_query_and_count(written: Path) -> None:
    entry = _entry()
    with AuditStore(written) as audit_store:
        for name in FILTER_COLUMNS:
            value = getattr(entry, name)
            value = getattr(value, "value", value)
            assert len(list(audit_store.query(**{name: value}))) == 2, name
            other = OTHER_VALUES.get(name, "no-such-value")
            assert audit_store.count(**{name: other}) == 0, name


@pytest.mark.parametrize("command", ["query", "export"])
def test_the_cli_has_an_option_per_filter_column(command: str) -> None:
    options = {
        option
        for param in cli.commands[command].params  # type: ignore[attr-defined]
        for option in param.opts
    }
    for name in FILTER_COLUMNS:
        assert "--" + name.replace("_", "-") in options, name
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0


def test_query_formats_list_the_stored_columns() -> None:
    entry = _entry()
    assert formats.ENTRY_FIELDS == STORED_COLUMNS
    assert tuple(formats.entry_object(entry)) == STORED_COLUMNS
    header, _ = formats.csv_lines([entry], header=True)
    assert tuple(header.split(",")) == STORED_COLUMNS


def test_export_lines_carry_the_stored_row_rendered_by_column(written: Path) -> None:
    with AuditStore(written) as audit_store:
        jsonl = list(audit_store.export("jsonl"))
        csv_header = next(iter(audit_store.export("csv")))
    record = json.loads(jsonl[0])
    assert tuple(record) == STORED_ROW
    assert tuple(csv_header.rstrip("\n").split(",")) == STORED_ROW
    expected = {"text": str, "json": dict, "flag": bool}
    for column in ENTRY_COLUMNS:
        assert type(record[column.name]) is expected[column.render], column.name
    assert exported.verify_exported_lines(jsonl).ok
