"""The keyed chain (chain version "2") on both backends: what it catches and what it refuses."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from trails import chain_key_file, execute, query, stored_row

from audit_engine import AuditService
from audit_engine.columns import STORED_ROW
from audit_engine.errors import AuditStoreError
from audit_engine.storage import chain
from audit_engine.storage.keys import chain_key_id
from audit_engine.storage.store import AuditStore

KEY_A = "a1" * 32
KEY_B = "b2" * 32
ID_A = chain_key_id(bytes.fromhex(KEY_A))
ID_B = chain_key_id(bytes.fromhex(KEY_B))


def _record(database: Path | str, count: int, key_file: Path | None, action: str) -> None:
    with AuditService(
        database, cleanup_enabled=False, async_writes=False, chain_key_file=key_file
    ) as audit:
        for n in range(count):
            audit.record(action=f"{action}.{n}", actor="alice")


def _versions(database: Path | str) -> list[tuple[object, ...]]:
    return query(
        database, "SELECT first_id, version, key_id FROM audit_chain_versions ORDER BY first_id"
    )


def test_a_keyed_trail_verifies_with_its_key_only(trail_db: Path | str, tmp_path: Path) -> None:
    key = chain_key_file(tmp_path, KEY_A)
    _record(trail_db, 4, key, "keyed")

    assert _versions(trail_db) == [(1, "2", ID_A)]
    with AuditStore(trail_db, chain_key_file=key) as store:
        report = store.verify()
    assert (report.ok, report.rows_checked, report.unchecked_from) == (True, 4, None)

    with AuditStore(trail_db) as store:
        blind = store.verify()
    assert blind.ok is False
    assert blind.rows_checked == 0
    assert blind.unchecked_from == 1
    assert blind.first_bad_id is None
    assert blind.reason == (
        f"rows from id 1 on are keyed (key {ID_A}): they cannot be checked without the chain "
        "key (set AUDIT_TRAIL_CHAIN_KEY_FILE or pass --chain-key-file)"
    )
    assert blind.head == report.head  # its links were followed to the end


def test_a_row_edited_and_the_chain_recomputed_without_the_key_fails(
    trail_db: Path | str, tmp_path: Path
) -> None:
    key = chain_key_file(tmp_path, KEY_A)
    _record(trail_db, 6, key, "keyed")
    rows = query(trail_db, f"SELECT {stored_row(trail_db)} FROM audit_entries ORDER BY id")
    # The forger changes row 3 and recomputes every link after it by the documented algorithm,
    # with any key but ours (here: none, and a key of their own): the rows still chain.
    for forged_key in (None, bytes.fromhex(KEY_B)):
        fields = [list(row[1:-2]) for row in rows[2:]]
        fields[0][3] = "payroll.approve"  # the action
        relinked = chain.link(fields, 2, rows[1][-1], key=forged_key)
        execute(
            trail_db,
            ("UPDATE audit_entries SET action = ? WHERE id = 3", ("payroll.approve",)),
            *(
                (
                    "UPDATE audit_entries SET prev_hash = ?, hash = ? WHERE id = ?",
                    (r[-2], r[-1], r[0]),
                )
                for r in relinked
            ),
        )
        with AuditStore(trail_db, chain_key_file=key) as store:
            report = store.verify()
        assert report.ok is False
        assert report.first_bad_id == 3
        assert report.reason == "row 3 was modified (its hash does not match its contents)"


def test_unkeyed_then_keyed_then_rotated_all_verify(trail_db: Path | str, tmp_path: Path) -> None:
    old = chain_key_file(tmp_path, KEY_A, name="old.key")
    rotated = chain_key_file(tmp_path, KEY_B, KEY_A, name="rotated.key")  # new key first
    _record(trail_db, 3, None, "plain")
    _record(trail_db, 3, old, "keyed")
    _record(trail_db, 3, rotated, "rotated")

    assert _versions(trail_db) == [(1, "1", None), (4, "2", ID_A), (7, "2", ID_B)]
    with AuditStore(trail_db, chain_key_file=rotated) as store:
        report = store.verify()
    assert (report.ok, report.rows_checked, report.warnings) == (True, 9, ())

    # The old file alone checks up to the rotation, and says which key it lacks.
    with AuditStore(trail_db, chain_key_file=old) as store:
        partial = store.verify()
    assert (partial.ok, partial.rows_checked, partial.unchecked_from) == (False, 6, 7)
    assert partial.reason == (
        f"rows from id 7 on are keyed with key {ID_B}, which {old} does not hold: add that key "
        "to the file (old keys stay in it, below the one that writes)"
    )


def test_a_writer_reusing_the_newest_range_adds_none(trail_db: Path | str, tmp_path: Path) -> None:
    key = chain_key_file(tmp_path, KEY_A)
    _record(trail_db, 2, key, "one")
    _record(trail_db, 2, key, "two")
    assert _versions(trail_db) == [(1, "2", ID_A)]


@pytest.mark.parametrize("async_writes", [True, False], ids=["async", "sync"])
def test_a_writer_without_the_key_refuses_to_start_on_a_keyed_trail(
    trail_db: Path | str, tmp_path: Path, async_writes: bool
) -> None:
    key = chain_key_file(tmp_path, KEY_A)
    _record(trail_db, 1, None, "plain")
    _record(trail_db, 2, key, "keyed")

    with pytest.raises(AuditStoreError) as refused:
        AuditService(trail_db, cleanup_enabled=False, async_writes=async_writes)
    assert str(refused.value).startswith(
        f"this trail is keyed from id 2 on (key {ID_A}): set chain_key_file"
    )
    assert query(trail_db, "SELECT count(*) FROM audit_entries") == [(3,)]


def test_a_switch_back_to_unkeyed_rows_is_refused(trail_db: Path | str, tmp_path: Path) -> None:
    key = chain_key_file(tmp_path, KEY_A)
    _record(trail_db, 2, None, "plain")
    _record(trail_db, 2, key, "keyed")
    # A forger without the key appends unkeyed rows and says so in the versions table.
    rows = query(trail_db, f"SELECT {stored_row(trail_db)} FROM audit_entries ORDER BY id")
    fields = list(rows[-1][1:-2])
    fields[0] = "forged-event"
    (forged,) = chain.link([fields], 4, rows[-1][-1])
    if not isinstance(trail_db, Path):
        forged = (*forged[:11], bool(forged[11]), *forged[12:])  # PostgreSQL's boolean column
    columns = stored_row(trail_db).replace("details_text AS details", "details_text")
    execute(
        trail_db,
        ("INSERT INTO audit_chain_versions (first_id, version) VALUES (5, '1')", ()),
        (f"INSERT INTO audit_entries ({columns}) VALUES ({', '.join('?' * len(forged))})", forged),
    )
    with AuditStore(trail_db, chain_key_file=key) as store:
        report = store.verify()
    assert report.ok is False
    assert report.first_bad_id == 5
    assert report.reason == "the chain switches back to unkeyed at id 5 (after keyed rows)"


def test_a_key_given_for_an_unkeyed_trail_is_not_ok(trail_db: Path | str, tmp_path: Path) -> None:
    # What a forger without the key leaves of a keyed trail: every row rewritten unkeyed.
    _record(trail_db, 2, None, "plain")
    key = chain_key_file(tmp_path, KEY_A)
    with AuditStore(trail_db, chain_key_file=key) as store:
        report = store.verify()
    assert (report.ok, report.rows_checked, report.warnings) == (False, 2, ())
    assert report.reason is not None
    assert report.reason.startswith("a chain key was given but no row of this trail is keyed")
    with AuditStore(trail_db) as store:
        assert store.verify().ok  # never keyed: verified without the key, it is fine


def test_a_downgraded_copy_of_a_keyed_trail_fails_verify_with_the_key(
    trail_db: Path | str, tmp_path: Path
) -> None:
    key = chain_key_file(tmp_path, KEY_A)
    _record(trail_db, 3, key, "keyed")
    rows = query(trail_db, f"SELECT {stored_row(trail_db)} FROM audit_entries ORDER BY id")
    actor_at = STORED_ROW.index("actor")
    statements: list[tuple[str, tuple[object, ...]]] = [
        ("DELETE FROM audit_chain_versions", ()),
        ("INSERT INTO audit_chain_versions (first_id, version) VALUES (1, '1')", ()),
    ]
    prev = chain.GENESIS_HASH
    for row in rows:
        body = (*row[:-2], prev)
        edited = tuple("mallory" if value == "alice" else value for value in body)
        digest = chain.content_digest(edited).hex()
        statements.append(
            (
                "UPDATE audit_entries SET actor = ?, prev_hash = ?, hash = ? WHERE id = ?",
                (edited[actor_at], prev, digest, row[0]),
            )
        )
        prev = digest
    execute(trail_db, *statements)

    with AuditStore(trail_db, chain_key_file=key) as store:
        report = store.verify()

    assert report.ok is False
    assert report.reason is not None
    assert report.reason.startswith("a chain key was given but no row of this trail is keyed")


def test_the_key_never_appears_in_a_message_or_log(
    trail_db: Path | str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = chain_key_file(tmp_path, KEY_A)
    _record(trail_db, 2, key, "keyed")
    messages = []
    with AuditStore(trail_db) as store:
        messages.append(repr(store.verify()))
    with pytest.raises(AuditStoreError) as refused:
        AuditService(trail_db, cleanup_enabled=False)
    messages.append(str(refused.value))
    with AuditService(trail_db, cleanup_enabled=False, chain_key_file=key) as audit:
        messages.append(repr(audit.stats()))
    everything = "\n".join([*messages, caplog.text])
    assert ID_A in everything  # the id is what the messages name
    assert KEY_A not in everything.lower()
