"""On a keyed trail, the purge anchors over keyed rows are keyed too (both backends).

Without it, anyone who can write the database could delete recent keyed rows behind an anchor
with made-up dates and the right Merkle frontier (which needs no key): verify, with the key and
against the signed checkpoints, would find nothing wrong.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from trails import execute, query

from audit_engine import AuditService, AuditStore
from audit_engine.errors import AuditStoreError
from audit_engine.storage import retention
from audit_engine.storage.anchors import ANCHOR_COLUMNS, anchor_hash

KEY = "a1" * 32
OLD = "2020-01-01T00:00:00Z"
AGE = timedelta(days=100)


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "chain.key"
    path.write_text(f"{KEY}\n")
    path.chmod(0o600)
    return path


def _record(database: Path | str, key: Path | None, old: int, new: int) -> None:
    with AuditService(
        database, cleanup_enabled=False, async_writes=False, chain_key_file=key
    ) as audit:
        for n in range(old):
            audit.record(action="doc.save", actor="alice", timestamp=OLD, event_id=f"old-{n}")
        for n in range(new):
            audit.record(action="doc.save", actor="alice", event_id=f"new-{n}")


def _anchors(database: Path | str) -> list[tuple[object, ...]]:
    columns = ", ".join(ANCHOR_COLUMNS)
    return query(database, f"SELECT id, {columns}, prev_hash, hash FROM audit_anchors ORDER BY id")


def test_a_keyed_trails_purge_writes_a_keyed_anchor_that_verifies_with_the_key(
    trail_db: Path | str, key: Path
) -> None:
    _record(trail_db, key, old=4, new=2)

    with AuditStore(trail_db, chain_key_file=key) as store:
        assert store.purge(AGE).rows_deleted == 4
        report = store.verify()

    assert (report.ok, report.rows_checked, report.anchors_checked) == (True, 2, 1)
    [anchor] = _anchors(trail_db)
    assert anchor[-1] != anchor_hash(anchor[:-1])  # not the public, unkeyed form
    assert anchor[-1] == anchor_hash(anchor[:-1], bytes.fromhex(KEY))
    with AuditStore(trail_db) as store:
        blind = store.verify()
    assert blind.ok is False  # keyed rows and a keyed anchor: nothing to vouch for them
    assert "anchor 1 is keyed: its hash cannot be checked without the chain key" in blind.warnings


def test_purging_a_keyed_trail_without_the_key_is_refused(trail_db: Path | str, key: Path) -> None:
    _record(trail_db, key, old=3, new=1)

    with AuditStore(trail_db) as store, pytest.raises(AuditStoreError) as refused:
        store.purge(AGE)

    assert "this trail is keyed from id 1 on: purging its keyed rows needs the chain key" in str(
        refused.value
    )
    assert query(trail_db, "SELECT count(*) FROM audit_entries") == [(4,)]
    assert _anchors(trail_db) == []


def test_the_cleanup_thread_of_a_keyed_service_writes_keyed_anchors(
    trail_db: Path | str, key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _record(trail_db, key, old=3, new=1)
    finished = threading.Event()
    real = retention.purge

    def purge(*args: Any, **kwargs: Any) -> retention.CleanupReport:
        try:
            return real(*args, **kwargs)
        finally:
            finished.set()

    monkeypatch.setattr(retention, "purge", purge)

    audit = AuditService(trail_db, chain_key_file=key, retention_days=100)
    assert finished.wait(20)  # the run at start
    audit.close(timeout=10)  # joins the cleanup thread: its counters are final

    assert (audit.stats().cleanup_runs, audit.stats().rows_purged) == (1, 3)
    [anchor] = _anchors(trail_db)
    assert anchor[-1] == anchor_hash(anchor[:-1], bytes.fromhex(KEY))


def test_an_anchor_forged_without_the_key_over_keyed_rows_fails_verify(
    trail_db: Path | str, key: Path
) -> None:
    # The forger deletes the newest keyed rows' predecessors and writes an anchor in the public
    # form, with dates old enough for any retention, and the last deleted row's real hash.
    _record(trail_db, key, old=0, new=5)
    last_hash = query(trail_db, "SELECT hash FROM audit_entries WHERE id = 3")[0][0]
    values = (1, 3, last_hash, 3, OLD, "2020-02-01T00:00:00Z", None, "2020-06-01T00:00:00+00:00")
    forged = (*values, "0" * 64)
    execute(
        trail_db,
        "DELETE FROM audit_entries WHERE id <= 3",
        (
            f"INSERT INTO audit_anchors (id, {', '.join(ANCHOR_COLUMNS)}, prev_hash, hash) "
            f"VALUES ({', '.join('?' * (len(forged) + 1))})",
            (*forged, anchor_hash(forged)),
        ),
    )

    with AuditStore(trail_db, chain_key_file=key) as store:
        report = store.verify()

    assert report.ok is False
    assert report.reason == "anchor 1 was modified (its hash does not match its contents)"
