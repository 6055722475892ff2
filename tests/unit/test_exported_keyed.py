"""An export of a trail that switched to a keyed chain verifies offline with the chain key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from trails import chain_key_file

from audit_engine import AuditService, AuditStore, verify_exported_lines
from audit_engine.storage.chain import ChainHead, content_digest
from audit_engine.storage.exported import export_row
from audit_engine.storage.keys import load_chain_keys

KEY_A = "a1" * 32
KEY_B = "b2" * 32


def _record(database: Path | str, count: int, key_file: Path | None, action: str) -> None:
    with AuditService(
        database, cleanup_enabled=False, async_writes=False, chain_key_file=key_file
    ) as audit:
        for n in range(count):
            audit.record(action=f"{action}.{n}", actor="alice", details={"n": n})


def _export(database: Path | str) -> list[str]:
    with AuditStore(database) as store:
        return list(store.export("jsonl"))


@pytest.fixture
def switched(trail_db: Path | str, tmp_path: Path) -> tuple[Path | str, Path]:
    """Three unkeyed rows, then two under key A, then two under key B (a rotation)."""
    _record(trail_db, 3, None, "plain")
    _record(trail_db, 2, chain_key_file(tmp_path, KEY_A, name="a.key"), "keyed")
    both = chain_key_file(tmp_path, KEY_B, KEY_A)
    _record(trail_db, 2, both, "rotated")
    return trail_db, both


def test_an_export_across_the_switch_and_a_rotation_verifies_with_the_keys(
    switched: tuple[Path | str, Path],
) -> None:
    database, key_file = switched
    lines = _export(database)

    report = verify_exported_lines(lines, keys=load_chain_keys(key_file))

    assert (report.ok, report.rows_checked, report.reason) == (True, 7, None)
    assert report.head == ChainHead(id=7, hash=json.loads(lines[-1])["hash"])


def test_without_the_keys_the_keyed_rows_are_not_taken_for_good(
    switched: tuple[Path | str, Path],
) -> None:
    database, _ = switched

    report = verify_exported_lines(_export(database))

    assert (report.ok, report.first_bad_id) == (False, 4)
    assert report.reason == (
        "row 4 was modified (its hash does not match its contents); if the trail is keyed, "
        "verify the export with its chain key"
    )


def test_a_keyed_row_edited_and_relinked_without_the_key_fails_with_the_keys(
    switched: tuple[Path | str, Path],
) -> None:
    # Someone without the key edits row 5 and recomputes the chain from there on with the
    # public (unkeyed) form: each forged row then looks like an unkeyed one.
    database, key_file = switched
    records = [json.loads(line) for line in _export(database)]
    records[4]["actor"] = "mallory"
    prev = records[3]["hash"]
    for index in range(4, len(records)):
        records[index] = _rehashed_unkeyed({**records[index], "prev_hash": prev})
        prev = records[index]["hash"]
    forged = [json.dumps(record) for record in records]

    report = verify_exported_lines(forged, keys=load_chain_keys(key_file))

    assert (report.ok, report.first_bad_id) == (False, 5)
    assert report.reason == "the chain switches back to unkeyed at id 5 (after keyed rows)"
    # The same forgery over a keyed row that is edited in place (no relinking) shows as modified.
    records = [json.loads(line) for line in _export(database)]
    records[4]["actor"] = "mallory"
    edited = [json.dumps(record) for record in records]
    report = verify_exported_lines(edited, keys=load_chain_keys(key_file))
    assert (report.ok, report.first_bad_id) == (False, 5)
    assert report.reason == "row 5 was modified (its hash does not match its contents)"


def test_an_unkeyed_row_after_keyed_ones_is_refused(switched: tuple[Path | str, Path]) -> None:
    database, key_file = switched
    records = [json.loads(line) for line in _export(database)]
    records[-1] = _rehashed_unkeyed(records[-1])  # hashed correctly by the public form

    report = verify_exported_lines(
        [json.dumps(record) for record in records], keys=load_chain_keys(key_file)
    )

    assert (report.ok, report.first_bad_id) == (False, 7)
    assert report.reason == "the chain switches back to unkeyed at id 7 (after keyed rows)"


def test_a_key_that_made_none_of_the_rows_fails_them(
    switched: tuple[Path | str, Path], tmp_path: Path
) -> None:
    database, _ = switched
    other = chain_key_file(tmp_path, "c3" * 32, name="other.key")

    report = verify_exported_lines(_export(database), keys=load_chain_keys(other))

    assert (report.ok, report.rows_checked, report.first_bad_id) == (False, 3, 4)
    assert report.reason == "row 4 was modified (its hash does not match its contents)"


def _rehashed_unkeyed(record: dict[str, Any]) -> dict[str, Any]:
    row = export_row(record)
    return {**record, "hash": content_digest(row[:-1]).hex()}
