"""A trail held to the signed checkpoints kept outside it: every way someone who can write the
database rewrites history is caught and the first checkpoint that disagrees is named — on
SQLite and PostgreSQL."""

from __future__ import annotations

import importlib
import json
import shutil
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trails
from checkpointed import (
    KEY,
    OTHER_KEY,
    checkpoint_line,
    checkpointed,
    entries,
    forge_anchor,
    rewrite_from,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit_engine import AuditStore, AuditStoreError
from audit_engine.errors import SettingsError
from audit_engine.storage import backends, checkpoints
from audit_engine.storage.checkpoint_verify import (
    CheckpointFindings,
    check,
    public_key_of,
    read_log,
    verify_note,
)
from audit_engine.storage.dialect import snapshot
from audit_engine.storage.leaves import frontier_through
from audit_engine.storage.merkle import Frontier

HEADS = (10, 20, 30)


def _check(
    database: Path | str, lines: list[str], key: Ed25519PrivateKey = KEY
) -> CheckpointFindings:
    with AuditStore(database) as store:
        head = store.head()
    tail = head.id if head is not None else 0
    conn = backends.open_trail(database)
    try:
        with snapshot(conn):
            return check(conn, read_log(lines), key.public_key(), tail)
    finally:
        conn.close()


def test_an_intact_trail_holds_every_checkpoint(trail_db: Path | str) -> None:
    lines = checkpointed(trail_db, 34, HEADS)

    assert _check(trail_db, lines) == CheckpointFindings(checked=3, purged=0)


def test_a_truncated_trail_fails_at_the_first_checkpoint_past_its_end(
    trail_db: Path | str,
) -> None:
    lines = checkpointed(trail_db, 30, HEADS)
    trails.execute(trail_db, "DELETE FROM audit_entries WHERE id > 25")

    found = _check(trail_db, lines)

    assert (found.line, found.size, found.checked) == (3, 30, 2)
    assert found.problem == (
        "checkpoint line 3 (size 30): the trail ends at id 25, before its head 30: rows were "
        "deleted from the end (truncated) or the trail was rolled back to an older copy"
    )


def test_a_rewritten_tail_with_the_chain_recomputed_fails_at_the_first_checkpoint_over_it(
    trail_db: Path | str,
) -> None:
    lines = checkpointed(trail_db, 30, HEADS)
    rewrite_from(trail_db, 15)
    with AuditStore(trail_db) as store:
        assert store.verify().ok  # the unkeyed chain alone cannot tell

    found = _check(trail_db, lines)

    assert (found.line, found.size, found.checked) == (2, 20, 1)
    assert found.problem is not None
    assert "differs from the signed root: rows up to id 20" in found.problem


def test_a_rewritten_head_row_fails_its_own_checkpoint(trail_db: Path | str) -> None:
    lines = checkpointed(trail_db, 30, HEADS)
    rewrite_from(trail_db, 30)

    found = _check(trail_db, lines)

    assert (found.line, found.checked) == (3, 2)


def test_a_forged_anchor_over_rewritten_rows_fails_at_the_first_checkpoint_after_it(
    trail_db: Path | str,
) -> None:
    lines = checkpointed(trail_db, 30, HEADS)
    rewrite_from(trail_db, 5)
    conn = backends.open_trail(trail_db)
    try:
        forged = frontier_through(conn, 12)  # the tree over the rewritten rows
    finally:
        conn.close()
    forge_anchor(trail_db, 12, forged)
    with AuditStore(trail_db) as store:  # the chain and the anchor pass their own checks
        assert store.verify(min_retention=timedelta(0)).ok

    found = _check(trail_db, lines)

    # Checkpoint 10 is purged (its signature only); 20 is recomputed from the forged frontier.
    assert (found.line, found.size, found.purged, found.checked) == (2, 20, 1, 0)


def test_an_anchor_frontier_changed_alone_is_caught(trail_db: Path | str) -> None:
    lines = checkpointed(trail_db, 30, (20, 30))
    forge_anchor(trail_db, 12, Frontier(base=0, size=12, nodes=[b"\x01" * 32, b"\x02" * 32]))

    found = _check(trail_db, lines)

    assert (found.line, found.size) == (1, 20)


def test_a_checkpoint_exactly_at_the_anchor_is_checked_against_it(trail_db: Path | str) -> None:
    lines = checkpointed(trail_db, 30, (12, 30))
    conn = backends.open_trail(trail_db)
    try:
        frontier = frontier_through(conn, 12)
    finally:
        conn.close()
    forge_anchor(trail_db, 12, frontier)  # an honest purge of rows 1..12

    assert _check(trail_db, lines) == CheckpointFindings(checked=2, purged=0)

    trails.execute(trail_db, ("UPDATE audit_anchors SET last_deleted_hash = ?", ("ab" * 32,)))
    found = _check(trail_db, lines)
    assert (
        found.problem == "checkpoint line 1 (size 12): row 12's hash differs from the signed head"
    )


def test_a_swapped_trail_fails_at_the_first_checkpoint(
    trail_db: Path | str, tmp_path: Path
) -> None:
    lines = checkpointed(trail_db, 30, HEADS)
    other = tmp_path / "other.db" if isinstance(trail_db, Path) else trail_db
    if isinstance(trail_db, Path):
        trails.write(other, entries(30))
    else:  # the same database given another identity: what a swapped server database shows
        trails.execute(trail_db, "UPDATE audit_engine_meta SET value = 'f' WHERE key = 'trail_id'")

    found = _check(other, lines)

    assert found.line == 1
    assert found.problem is not None
    assert "it was signed for another trail (audit-engine/" in found.problem


def test_a_rolled_back_copy_fails_at_the_first_checkpoint_it_lacks(tmp_path: Path) -> None:
    database = tmp_path / "audit.db"
    trails.write(database, entries(20))
    copy = tmp_path / "copy.db"
    shutil.copy(database, copy)
    trails.write(database, entries(10, start=21))
    lines = [checkpoint_line(database, head) for head in HEADS]
    trails.write(copy, entries(15, start=100))  # the old copy written on since

    found = _check(copy, lines)

    assert (found.line, found.size, found.checked) == (3, 30, 2)


def test_a_rolled_back_postgres_trail_fails(pg_url: str) -> None:
    lines = checkpointed(pg_url, 30, HEADS)
    trails.execute(pg_url, "DELETE FROM audit_entries WHERE id > 20")
    trails.write(pg_url, entries(15, start=100))  # written on since the rollback

    found = _check(pg_url, lines)

    assert (found.line, found.size, found.checked) == (3, 30, 2)
    assert found.problem is not None
    assert "differs from the signed root: rows up to id 30" in found.problem


def test_a_checkpoint_signed_by_another_key_or_changed_fails_its_signature(
    trail_db: Path | str,
) -> None:
    lines = checkpointed(trail_db, 30, HEADS)
    forged = [*lines[:1], checkpoint_line(trail_db, 20, key=OTHER_KEY), lines[2]]
    found = _check(trail_db, forged)
    assert (found.line, found.size) == (2, 20)
    assert found.problem is not None
    assert "its signature does not verify with the public key" in found.problem

    record = json.loads(lines[0])
    record["note"] = record["note"].replace("\n10\n", "\n11\n")
    found = _check(trail_db, [json.dumps(record), *lines[1:]])
    assert found.line == 1


def test_a_file_that_is_not_a_checkpoint_log_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(AuditStoreError, match=r"the checkpoint log line 2 is not a checkpoint"):
        read_log(['{"note": "x"}', "not json"])
    with pytest.raises(AuditStoreError, match="holds no checkpoint: there is nothing to verify"):
        read_log(["", "  "])
    path = tmp_path / "log.jsonl"
    path.write_text('{"size": 3}\n')
    with pytest.raises(AuditStoreError, match=rf"{path} line 1 is not a checkpoint"):
        read_log(path)


def test_store_verify_holds_the_trail_to_its_checkpoints(trail_db: Path | str) -> None:
    lines = checkpointed(trail_db, 34, HEADS)
    with AuditStore(trail_db) as store:
        report = store.verify(checkpoints=lines, public_key=KEY.public_key())
    assert report.ok, report.reason
    assert (report.rows_checked, report.checkpoints_checked, report.checkpoint_line) == (
        34,
        3,
        None,
    )

    trails.execute(trail_db, "DELETE FROM audit_entries WHERE id > 25")
    with AuditStore(trail_db) as store:
        assert store.verify().ok  # the chain alone cannot tell rows went from the end
        report = store.verify(checkpoints=lines, public_key=KEY.public_key())
    assert not report.ok
    assert (report.checkpoint_line, report.checkpoints_checked) == (3, 2)
    assert report.reason == report.checkpoint_problem
    assert str(report.reason).startswith("checkpoint line 3 (size 30): the trail ends at id 25")


def test_store_verify_wants_the_log_and_the_key_together(trail_db: Path | str) -> None:
    lines = checkpointed(trail_db, 10, (10,))
    with AuditStore(trail_db) as store:
        with pytest.raises(AuditStoreError, match="checkpoints and public_key go together"):
            store.verify(checkpoints=lines)
        with pytest.raises(AuditStoreError, match="checkpoints and public_key go together"):
            store.verify(public_key=KEY.public_key())
        with pytest.raises(AuditStoreError, match="line 1 is not a checkpoint"):
            store.verify(checkpoints=["{}"], public_key=KEY.public_key())


def _signed_line(line: str, **changes: Any) -> str:
    """``line`` with its checkpoint changed and signed again by KEY: a well-signed lie."""
    record = json.loads(line)
    signed = checkpoints.parse(record["note"])
    note = checkpoints.sign(replace(signed, **changes), "audit-engine", KEY)
    return json.dumps({**record, "note": note})


def test_a_signed_checkpoint_with_a_bad_head_or_size_is_named(db_path: Path) -> None:
    lines = checkpointed(db_path, 12, (10,))
    found = _check(db_path, [_signed_line(lines[0], head="ten abc")])
    assert found.problem == (
        "checkpoint line 1 (size 10): its head line is not '<id> <hash>' (got 'ten abc')"
    )
    found = _check(db_path, [_signed_line(lines[0], size=9)])
    assert found.problem == (
        # The signed size (9), not the line's "size" field (10): only the note is trusted.
        "checkpoint line 1 (size 9): its size does not match its head id 10 (this trail's "
        "tree starts after row 0: a checkpoint of that head has size 10)"
    )


def test_a_hole_in_the_ids_fails_the_first_checkpoint_over_it(db_path: Path) -> None:
    lines = checkpointed(db_path, 20, (5, 20))
    trails.execute(db_path, "DELETE FROM audit_entries WHERE id = 12")
    found = _check(db_path, lines)
    assert (found.line, found.checked) == (2, 1)
    assert str(found.problem).startswith("checkpoint line 2 (size 20): ")


def test_an_anchor_frontier_that_does_not_parse_is_named(db_path: Path) -> None:
    lines = checkpointed(db_path, 20, (20,))
    conn = backends.open_trail(db_path)
    try:
        frontier = frontier_through(conn, 8)
    finally:
        conn.close()
    forge_anchor(db_path, 8, frontier)
    trails.execute(db_path, "UPDATE audit_anchors SET merkle = 'garbage'")
    found = _check(db_path, lines)
    assert str(found.problem).startswith("the newest purge anchor: ")
    assert found.checked == 0


def test_a_checkpoint_log_that_cannot_be_read_or_has_no_text_note(tmp_path: Path) -> None:
    with pytest.raises(AuditStoreError) as caught:
        read_log(tmp_path)
    assert str(caught.value) == (
        f"cannot read the checkpoint file {tmp_path}: [Errno 21] Is a directory: '{tmp_path}'"
    )
    with pytest.raises(AuditStoreError) as caught:
        read_log(['{"note": 5}'])
    assert str(caught.value) == (
        "the checkpoint log line 1 is not a checkpoint (a JSON object with a signed 'note', as "
        "the writer appends to checkpoint_file): TypeError('its note is not text')"
    )


def test_a_public_key_of_the_wrong_kind_is_a_type_error() -> None:
    with pytest.raises(TypeError) as caught:
        public_key_of(KEY)  # the private key, passed by mistake
    assert str(caught.value) == (
        "public_key must be an Ed25519 public key or a PEM file (got Ed25519PrivateKey)"
    )


def test_checking_without_cryptography_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def import_module(name: str, package: str | None = None) -> ModuleType:
        if name == "audit_engine.storage.checkpoints":
            raise ModuleNotFoundError("No module named 'cryptography'", name="cryptography")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", import_module)
    with pytest.raises(SettingsError) as caught:
        verify_note("note", KEY.public_key())
    assert str(caught.value) == (
        "checking checkpoints needs the cryptography package: pip install 'audit-engine[signing]'"
    )
