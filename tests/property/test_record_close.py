"""Property: whatever several threads record, close() leaves exactly the accepted entries.

Each accepted entry is stored once, and the entries of one thread are stored in the order that
thread recorded them. A full queue either blocks (and waits long enough) or drops; a dropped
entry (``record()`` returned None) must not be stored.
"""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
import threading
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit_engine import AuditService, AuditSettings


def _stored(db_path: Path) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        return conn.execute("SELECT event_id, actor FROM audit_entries ORDER BY id").fetchall()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    per_thread=st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=4),
    buffer_max_size=st.integers(min_value=1, max_value=50),
    queue_maxsize=st.integers(min_value=1, max_value=100),
    on_full=st.sampled_from(["block", "drop"]),
)
def test_close_stores_exactly_the_accepted_entries_in_per_thread_order(
    per_thread: list[int], buffer_max_size: int, queue_maxsize: int, on_full: str
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(tmp) / "audit.db"
        service = AuditService(
            AuditSettings(
                database=db_path,
                buffer_max_size=buffer_max_size,
                queue_maxsize=queue_maxsize,
                buffer_flush_interval=0.01,
                on_full=on_full,
                block_timeout=30,
            )
        )
        start = threading.Barrier(len(per_thread))
        recorded: dict[str, list[str | None]] = {}
        failures: list[BaseException] = []

        def work(name: str, count: int) -> None:
            try:
                start.wait(10)
                recorded[name] = [
                    service.record(action="prop", actor=name, details={"i": i})
                    for i in range(count)
                ]
            except BaseException as exc:  # reported below, in the test's thread
                failures.append(exc)

        threads = [
            threading.Thread(target=work, args=(f"t{n}", count))
            for n, count in enumerate(per_thread)
        ]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
        finally:
            closed = service.close(timeout=30)

        assert failures == []
        assert not any(thread.is_alive() for thread in threads)
        assert closed is True
        rows = _stored(db_path)
        accepted = {name: [i for i in ids if i is not None] for name, ids in recorded.items()}

        # Exactly the accepted entries, each once.
        assert sorted(event_id for event_id, _ in rows) == sorted(
            i for ids in accepted.values() for i in ids
        )
        # Per-thread order.
        for name, ids in accepted.items():
            assert [event_id for event_id, actor in rows if actor == name] == ids

        stats = service.stats()
        dropped = sum(ids.count(None) for ids in recorded.values())
        assert (stats.accepted, stats.written, stats.dropped) == (len(rows), len(rows), dropped)
        if on_full == "block":
            assert dropped == 0
