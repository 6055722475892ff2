"""Inclusion proofs: one entry proven against a signed checkpoint and checked offline; a changed
byte of the entry, the path or the checkpoint fails — on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trails
from checkpointed import KEY, OTHER_KEY, checkpoint_line, checkpointed, entries, forge_anchor
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit_engine import AuditService, AuditStore, AuditStoreError
from audit_engine.storage import backends, checkpoints, keys
from audit_engine.storage.dialect import snapshot
from audit_engine.storage.leaves import frontier_through
from audit_engine.storage.proofs import PROOF_FORMAT, ProofReport, prove, verify_proof


def _prove(database: Path | str, event_id: str, lines: list[str] | None = None) -> dict[str, Any]:
    conn = backends.open_trail(database)
    try:
        with snapshot(conn):
            return prove(conn, event_id, lines)
    finally:
        conn.close()


@pytest.mark.parametrize("row_id", [1, 7, 16, 17, 23])
def test_a_proof_of_any_entry_verifies_offline(trail_db: Path | str, row_id: int) -> None:
    lines = checkpointed(trail_db, 30, (10, 23))

    proof = _prove(trail_db, f"evt-{row_id}", lines)

    assert proof["format"] == PROOF_FORMAT
    assert (proof["leaf_index"], proof["tree_size"], proof["chain_version"]) == (
        row_id - 1,
        23,
        "1",
    )
    assert proof["entry"]["id"] == row_id
    assert proof["entry"]["details"] == {"n": row_id, "note": "zoë"}
    report = verify_proof(json.dumps(proof), KEY.public_key())
    assert report.ok, report.reason
    assert (report.entry_id, report.event_id, report.head_id) == (row_id, f"evt-{row_id}", 23)
    assert str(report.origin).startswith("audit-engine/")


def test_a_proof_uses_the_newest_checkpoint_that_covers_the_entry(trail_db: Path | str) -> None:
    lines = checkpointed(trail_db, 30, (10, 20, 25))

    assert _prove(trail_db, "evt-5", lines)["tree_size"] == 25
    with pytest.raises(AuditStoreError, match="no checkpoint in the checkpoint log covers row 26"):
        _prove(trail_db, "evt-26", lines)
    with pytest.raises(AuditStoreError, match="no entry has the event id 'evt-99'"):
        _prove(trail_db, "evt-99", lines)


def test_a_proof_after_a_purge_starts_from_the_anchor_frontier(trail_db: Path | str) -> None:
    lines = checkpointed(trail_db, 30, (12, 30))
    conn = backends.open_trail(trail_db)
    try:
        frontier = frontier_through(conn, 8)
    finally:
        conn.close()
    forge_anchor(trail_db, 8, frontier)  # an honest purge of rows 1..8

    report = verify_proof(_prove(trail_db, "evt-9", lines), KEY.public_key())
    assert report.ok, report.reason
    with pytest.raises(
        AuditStoreError,
        match=r"no entry has the event id 'evt-3' \(the rows up to id 8 were purged: a proof "
        "made before the purge still verifies",
    ):
        _prove(trail_db, "evt-3", lines)


def _mutations(proof: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []

    def changed(label: str, edit: Any) -> None:
        copy = json.loads(json.dumps(proof))
        edit(copy)
        out.append((label, copy))

    for name in proof["entry"]:

        def edit_entry(p: dict[str, Any], name: str = name) -> None:
            value = p["entry"][name]
            if isinstance(value, bool):
                p["entry"][name] = not value
            elif isinstance(value, int):
                p["entry"][name] = value + 1
            elif isinstance(value, dict):
                p["entry"][name] = {**value, "n": -1}
            elif value is None:
                p["entry"][name] = "x"
            else:
                p["entry"][name] = ("0" if value[0] != "0" else "1") + value[1:]

        changed(f"entry.{name}", edit_entry)
    for index in range(len(proof["path"])):

        def edit_path(p: dict[str, Any], index: int = index) -> None:
            node = p["path"][index]
            p["path"][index] = ("0" if node[0] != "0" else "1") + node[1:]

        changed(f"path[{index}]", edit_path)
    changed("leaf_index", lambda p: p.update(leaf_index=p["leaf_index"] + 1))
    changed("tree_size", lambda p: p.update(tree_size=p["tree_size"] - 1))
    changed("path shorter", lambda p: p["path"].pop())
    changed("chain_version", lambda p: p.update(chain_version="2"))
    changed("extra entry field", lambda p: p["entry"].update(extra=1))
    note = proof["checkpoint"]
    for position in range(0, note.index("\n\n")):

        def edit_note(p: dict[str, Any], position: int = position) -> None:
            text = p["checkpoint"]
            p["checkpoint"] = text[:position] + chr(ord(text[position]) ^ 1) + text[position + 1 :]

        changed(f"checkpoint byte {position}", edit_note)
    return out


def test_a_changed_byte_of_the_entry_path_or_checkpoint_fails(trail_db: Path | str) -> None:
    lines = checkpointed(trail_db, 13, (13,))
    proof = _prove(trail_db, "evt-6", lines)
    assert verify_proof(proof, KEY.public_key()).ok

    for label, changed in _mutations(proof):
        report = verify_proof(changed, KEY.public_key())
        assert not report.ok, label
        assert report.reason, label


def test_a_proof_checked_with_another_key_fails(trail_db: Path | str) -> None:
    lines = checkpointed(trail_db, 5, (5,))
    proof = _prove(trail_db, "evt-5", lines)

    report = verify_proof(proof, OTHER_KEY.public_key())

    assert not report.ok
    assert report.reason is not None
    assert report.reason.startswith("its signature does not verify with the public key")


def test_a_proof_from_a_rewritten_trail_fails(trail_db: Path | str) -> None:
    lines = checkpointed(trail_db, 10, (10,))
    trails.execute(trail_db, "UPDATE audit_entries SET actor = 'mallory' WHERE id = 4")

    report = verify_proof(_prove(trail_db, "evt-4", lines), KEY.public_key())

    assert (report.ok, report.reason) == (False, "row 4's hash does not match its contents")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not json", "not an inclusion proof: Expecting value: line 1 column 1 (char 0)"),
        ("[1]", "it is not a JSON object"),
        (
            '{"format": "x"}',
            "not an inclusion proof of this engine (format 'audit-engine-proof/1')",
        ),
        (
            '{"format": "audit-engine-proof/1"}',
            "the proof's 'entry' is missing or not a dict",
        ),
    ],
)
def test_a_text_that_is_not_a_proof_says_so(text: str, reason: str) -> None:
    assert verify_proof(text, KEY.public_key()) == ProofReport(ok=False, reason=reason)


def test_a_proof_against_the_checkpoints_kept_in_the_trail(trail_db: Path | str) -> None:
    lines = checkpointed(trail_db, 12, (12,))
    record = json.loads(lines[0])
    trails.execute(
        trail_db,
        (
            "INSERT INTO audit_checkpoints (id, head_id, head_hash, tree_size, root, merkle, "
            "note, created_at) VALUES (1, ?, ?, ?, ?, ?, ?, ?)",
            (12, record["head_hash"], 12, record["root"], "{}", record["note"], record["time"]),
        ),
    )

    # A stored frontier that does not parse is not used: the proof starts from the anchor.
    assert verify_proof(_prove(trail_db, "evt-12"), KEY.public_key()).ok


def test_store_prove_reads_in_a_snapshot_and_verifies(trail_db: Path | str) -> None:
    lines = checkpointed(trail_db, 12, (12,))
    with AuditStore(trail_db) as store:
        proof = store.prove("evt-4", checkpoints=lines)
        with pytest.raises(AuditStoreError, match="no entry has the event id 'nope'"):
            store.prove("nope", checkpoints=lines)
    assert verify_proof(proof, KEY.public_key()).ok


def test_a_proof_of_a_keyed_entry_verifies_without_the_chain_key(
    trail_db: Path | str, tmp_path: Path
) -> None:
    # Rows 1..3 unkeyed, 4..9 keyed (chain version "2"), checkpoints signed by the writer.
    chain_key, signing_key, public = keys.generate_keys(tmp_path / "keys")
    log = tmp_path / "checkpoints.jsonl"
    trails.write(trail_db, entries(3))
    with AuditService(
        database=trail_db,
        chain_key_file=chain_key,
        signing_key_file=signing_key,
        checkpoint_file=log,
        checkpoint_every=4,
        cleanup_enabled=False,
    ) as service:
        for entry in entries(6, start=4):
            service.record(entry)

    proof = _prove(trail_db, "evt-6", log.read_text().splitlines())

    assert (proof["chain_version"], proof["leaf_index"], proof["tree_size"]) == ("2", 5, 9)
    assert "hash" not in proof["entry"]  # an HMAC: nobody without the chain key could check it
    assert verify_proof(proof, keys.load_public_key(public)).ok
    assert verify_proof(proof, public).ok  # the PEM file, as --public-key gives it
    unkeyed = _prove(trail_db, "evt-2", log.read_text().splitlines())
    assert (unkeyed["chain_version"], "hash" in unkeyed["entry"]) == ("1", True)
    assert verify_proof(unkeyed, public).ok
    changed = json.loads(json.dumps(proof))
    changed["entry"]["actor"] = "mallory"
    assert not verify_proof(changed, public).ok
    relabelled = {**proof, "chain_version": "1"}  # read as unkeyed it needs a hash it lacks
    assert not verify_proof(relabelled, public).ok


def _with_note(line: str, note: str) -> str:
    return json.dumps({**json.loads(line), "note": note})


def _resigned(line: str, **changes: Any) -> str:
    """``line`` with its checkpoint changed and signed again by KEY: a well-signed lie."""
    signed = checkpoints.parse(json.loads(line)["note"])
    return _with_note(line, checkpoints.sign(replace(signed, **changes), "audit-engine", KEY))


def test_prove_refuses_a_log_line_that_is_not_a_well_formed_checkpoint(
    trail_db: Path | str,
) -> None:
    lines = checkpointed(trail_db, 12, (10,))
    note = json.loads(lines[0])["note"]
    negative = _with_note(lines[0], note.replace("\n10\n", "\n-5\n", 1))
    assert negative != lines[0]
    cases = {
        negative: "a checkpoint's size must be a decimal number (got '-5')",
        _with_note(
            lines[0], "hello"
        ): "not a signed note: no blank line between the text and signatures",
        _with_note(lines[0], note + "\n"): "not a signed note: after the text and one blank",
        _resigned(lines[0], size=7): (
            "its size 7 does not match its head id 10 (this trail's tree starts after row 0: "
            "a checkpoint of that head has size 10)"
        ),
    }
    for line, reason in cases.items():
        with pytest.raises(AuditStoreError) as raised:
            _prove(trail_db, "evt-3", [lines[0], line])
        assert str(raised.value).startswith(
            f"checkpoint line 2 is not a signed checkpoint of this trail: {reason}"
        )


def test_prove_with_a_public_key_uses_only_checkpoints_it_signed(trail_db: Path | str) -> None:
    trails.write(trail_db, entries(20))
    lines = [checkpoint_line(trail_db, 10), checkpoint_line(trail_db, 20, key=OTHER_KEY)]

    def proved(key: Any) -> dict[str, Any]:
        conn = backends.open_trail(trail_db)
        try:
            with snapshot(conn):
                return prove(conn, "evt-3", lines, key)
        finally:
            conn.close()

    assert proved(None)["tree_size"] == 20  # the newest, whoever signed it
    proof = proved(KEY.public_key())
    assert proof["tree_size"] == 10
    assert verify_proof(proof, KEY.public_key()).ok
    third = Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34)))
    with pytest.raises(AuditStoreError, match=r"^no checkpoint signed with that public key in "):
        proved(third.public_key())


def test_prove_from_the_trail_skips_a_stored_note_that_is_not_well_formed(
    trail_db: Path | str,
) -> None:
    lines = checkpointed(trail_db, 12, (10, 12))
    for ident, line in enumerate(lines, start=1):
        record = json.loads(line)
        note = record["note"] if ident == 1 else "garbage"
        trails.execute(
            trail_db,
            (
                "INSERT INTO audit_checkpoints (id, head_id, head_hash, tree_size, root, merkle, "
                "note, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (ident, record["head_id"], record["head_hash"], record["size"], record["root"],
                 "{}", note, record["time"]),
            ),
        )  # fmt: skip

    proof = _prove(trail_db, "evt-4")

    assert proof["tree_size"] == 10  # the newest copy is garbage: the one before it is used
    assert verify_proof(proof, KEY.public_key()).ok


def test_a_proof_with_a_wrong_type_or_an_unknown_field_names_it(trail_db: Path | str) -> None:
    lines = checkpointed(trail_db, 8, (8,))
    proof = _prove(trail_db, "evt-6", lines)
    note = proof["checkpoint"]
    cases = [
        ({"entry": {**proof["entry"], "id": "6"}}, "entry.id must be an integer"),
        ({"entry": {**proof["entry"], "id": 6.0}}, "entry.id must be an integer"),
        ({"entry": {**proof["entry"], "critical": 0}}, "entry.critical must be true or false"),
        ({"comment": "x"}, "the proof has unknown fields: ['comment']"),
        ({"checkpoint": note.replace("\n\n", "\n\n\n")}, "its signature does not verify"),
        ({"checkpoint": note + "\n"}, "its signature does not verify"),
    ]
    assert verify_proof(proof, KEY.public_key()).ok
    for change, reason in cases:
        report = verify_proof({**proof, **change}, KEY.public_key())
        assert not report.ok
        assert str(report.reason).startswith(reason), (change, report.reason)
