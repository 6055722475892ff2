"""A demo trail served by ``datasette serve`` with the engine's metadata reads as an audit viewer:
newest first, facets, hash columns hidden in the table, the engine's tables hidden."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from audit_engine.cli import main

DATASETTE = Path(sys.executable).parent / "datasette"
READY_S = 60.0  # a cold start on a busy 2-core machine imports a lot


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
    return body.decode("utf-8")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a datasette serving a demo trail with the engine's metadata."""
    directory = tmp_path_factory.mktemp("viewer")
    database, metadata = directory / "trail.db", directory / "meta.json"
    runner = CliRunner()
    for args in (["demo"], ["datasette-metadata", "--output", str(metadata)]):
        result = runner.invoke(main, ["--db", str(database), *args])
        assert result.exit_code == 0, result.output
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = (directory / "datasette.log").open("w")
    server = subprocess.Popen(
        [
            *(str(DATASETTE), "serve", str(database), "--metadata", str(metadata)),
            *("--host", "127.0.0.1", "--port", str(port)),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + READY_S
        while True:  # poll until it answers, it dies, or the deadline passes
            try:
                _get(f"{base}/-/versions.json")
                break
            except (urllib.error.URLError, ConnectionError):
                if server.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    output = (directory / "datasette.log").read_text()
                    pytest.fail(f"datasette did not start on {base}:\n{output}")
                time.sleep(0.1)  # one poll interval, bounded by the deadline above
        yield base
    finally:
        server.terminate()  # stopped by its own process, never by name
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        log.close()


def _table(served: str, query: str = "") -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_get(f"{served}/trail/audit_entries.json{query}"))
    return data


def test_the_entries_table_is_newest_first(served: str) -> None:
    table = _table(served, "?_size=20")

    ids = [row[0] for row in table["rows"]]
    assert table["human_description_en"] == "sorted by id descending"
    assert ids == sorted(ids, reverse=True)
    assert ids[0] == table["filtered_table_rows_count"]  # the newest row comes first


def test_the_facets_are_actor_operation_outcome_and_resource_type(served: str) -> None:
    facets = _table(served)["facet_results"]

    assert list(facets) == ["actor", "operation", "outcome", "resource_type"]
    assert {value["value"] for value in facets["operation"]["results"]} <= {
        "create",
        "read",
        "update",
        "delete",
        "execute",
    }
    assert facets["outcome"]["results"]


def test_the_hash_columns_are_hidden_in_the_html_table_only(served: str) -> None:
    page = _get(f"{served}/trail/audit_entries")

    assert '<body class="table db-trail table-audit_entries">' in page
    assert (
        '<link rel="stylesheet" href="data:text/css,body.table-audit_entries%20.col-prev_hash%20'
        "%7B%20display%3A%20none%3B%20%7D%20body.table-audit_entries%20.col-hash%20%7B%20"
        'display%3A%20none%3B%20%7D">'
    ) in page
    # The stylesheet's selectors match the page's header and cells of those columns.
    assert 'class="col-prev_hash" scope="col"' in page
    assert '<td class="col-hash type-str">' in page
    assert 'data-column-description="Who did it (user, service or process)"' in page
    # The data still carries them (verification needs them); ?_nocol= leaves them out.
    assert _table(served)["columns"][-2:] == ["prev_hash", "hash"]
    assert "hash" not in _table(served, "?_nocol=prev_hash&_nocol=hash")["columns"]


def test_the_engines_own_tables_are_hidden(served: str) -> None:
    tables = json.loads(_get(f"{served}/trail.json"))["tables"]

    shown = [table["name"] for table in tables if not table["hidden"]]
    assert shown == ["audit_entries"]
    assert {table["name"] for table in tables if table["hidden"]} >= {
        "audit_anchors",
        "audit_chain_versions",
        "audit_engine_meta",
    }
