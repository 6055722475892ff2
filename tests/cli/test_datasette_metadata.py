"""``datasette-metadata``: the metadata that makes a trail a Datasette audit viewer."""

from __future__ import annotations

import json
import os
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from test_export_targets import LOOK_ALIKES, look_alike_reason, look_alikes

from audit_engine.columns import STORED_ROW
from audit_engine.errors import AuditStoreError
from audit_engine.storage.viewer import COLUMN_DESCRIPTIONS, datasette_metadata

if TYPE_CHECKING:
    from conftest import Cli, Trail

pytestmark = pytest.mark.sqlite_only  # Datasette serves SQLite files only

INTERNAL = {
    "audit_anchors",
    "audit_chain_versions",
    "audit_checkpoints",
    "audit_cleanup_runs",
    "audit_engine_meta",
    "audit_engine_purge",
}


def test_the_metadata_names_the_database_by_its_stem(cli: Cli, trail: Trail) -> None:
    trail.init()

    metadata = json.loads(cli.run("datasette-metadata").output)

    assert list(metadata["databases"]) == [Path(cli.database).stem]
    tables = metadata["databases"][Path(cli.database).stem]["tables"]
    entries = tables.pop("audit_entries")
    assert entries["sort_desc"] == "id"
    assert entries["facets"] == ["actor", "operation", "outcome", "resource_type"]
    assert list(entries["columns"]) == list(STORED_ROW)
    assert set(tables) == INTERNAL
    assert all(table == {"hidden": True} for table in tables.values())


def test_every_stored_column_has_a_description() -> None:
    assert list(COLUMN_DESCRIPTIONS) == list(STORED_ROW)
    assert all(text.strip() for text in COLUMN_DESCRIPTIONS.values())


def test_the_stylesheet_hides_the_hash_columns_of_the_entries_table(cli: Cli, trail: Trail) -> None:
    trail.init()

    [url] = json.loads(cli.run("datasette-metadata").output)["extra_css_urls"]

    assert url.startswith("data:text/css,")
    css = urllib.parse.unquote(url.removeprefix("data:text/css,"))
    assert css == (
        "body.table-audit_entries .col-prev_hash { display: none; } "
        "body.table-audit_entries .col-hash { display: none; }"
    )


def test_output_writes_a_private_file(cli: Cli, trail: Trail, tmp_path: Path) -> None:
    trail.init()
    target = tmp_path / "meta.json"

    result = cli.run("datasette-metadata", "--output", str(target))

    assert result.output == f"Datasette metadata written to {target}\n"
    assert json.loads(target.read_text(encoding="utf-8")) == datasette_metadata(cli.database)
    assert os.stat(target).st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("{db}", "is the audit database itself"),
        ("{db}-wal", "is the audit database's -wal file"),
        ("{db}.deadletter.jsonl", "is the audit database's dead-letter file"),
        ("chain.key", "is the chain key file"),
    ],
)
def test_output_refuses_the_database_and_key_files(
    cli: Cli, trail: Trail, tmp_path: Path, name: str, reason: str
) -> None:
    trail.init()
    key = tmp_path / "chain.key"
    key.write_text("keep me\n", encoding="utf-8")
    target = Path(name.format(db=cli.database)) if "{db}" in name else key
    before = target.read_bytes() if target.exists() else None

    result = cli.run(
        "datasette-metadata",
        "--output",
        str(target),
        code=2,
        env={"AUDIT_TRAIL_CHAIN_KEY_FILE": str(key)},
    )

    assert f"Error: Invalid value for '--output': {reason}" in result.output
    assert (target.read_bytes() if target.exists() else None) == before


@pytest.mark.parametrize("kind", LOOK_ALIKES)
def test_output_refuses_a_file_that_looks_like_a_key_a_log_or_a_database(
    cli: Cli, trail: Trail, tmp_path: Path, kind: str
) -> None:
    """A viewer command is given no key: the key files keygen wrote are refused all the same
    (review15b M2: keys/chain.key became the metadata, and the keyed chain unverifiable)."""
    trail.init()
    target = look_alikes(tmp_path)[kind]
    before = target.read_bytes()

    result = cli.run("datasette-metadata", "--output", str(target), code=2)

    assert result.output.endswith(
        f"\nError: Invalid value for '--output': {look_alike_reason(kind)}\n"
    )
    assert target.read_bytes() == before


def test_output_replaces_an_earlier_metadata_file(cli: Cli, trail: Trail, tmp_path: Path) -> None:
    trail.init()
    target = tmp_path / "meta.json"
    target.write_text('{"title": "an older metadata file"}\n', encoding="utf-8")

    cli.run("datasette-metadata", "--output", str(target))

    assert json.loads(target.read_text(encoding="utf-8")) == datasette_metadata(cli.database)


def test_a_missing_database_is_an_error(cli: Cli, tmp_path: Path) -> None:
    result = cli.run("datasette-metadata", code=1)

    assert result.output.startswith("Error: ")
    assert str(cli.database) in result.output
    assert not Path(cli.database).exists()


def test_a_postgresql_url_is_refused_by_the_command_and_the_library(cli: Cli) -> None:
    url = "postgresql://auditor@db.example:5432/trail"

    result = cli.run("--db", url, "datasette-metadata", code=1, db=False)

    message = (
        "Datasette serves SQLite files only, and postgresql://auditor@db.example:5432/trail "
        "is a PostgreSQL trail: copy it into a file first (audit-engine copy URL FILE)"
    )
    assert result.output == f"Error: {message}\n"
    with pytest.raises(AuditStoreError) as raised:
        datasette_metadata(url)
    assert str(raised.value) == message
