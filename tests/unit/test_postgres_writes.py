"""The PostgreSQL backend with a real server: a psycopg connection passed to ``record``, verify
streaming through a server-side cursor, purge in batches under the chain's advisory lock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import trails
from psycopg.rows import dict_row

from audit_engine import AuditEntry, AuditService, AuditSettings, AuditStore
from audit_engine.errors import AuditWriteError
from audit_engine.storage import store as store_module
from audit_engine.storage.chain import VerifyReport
from audit_engine.storage.postgres import PgTrail
from audit_engine.storage.postgres.connection import CHAIN_LOCK_CLASS

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def service(pg_url: str) -> Iterator[AuditService]:
    made = AuditService(AuditSettings(database=pg_url, cleanup_enabled=False))
    yield made
    made.close(timeout=10)


@pytest.fixture
def app_conn(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    """The application's own connection (not autocommit), with a business table."""
    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY)")
        conn.commit()
        yield conn


def _event_ids(url: str) -> list[str]:
    return [row[0] for row in trails.query(url, "SELECT event_id FROM audit_entries ORDER BY id")]


def _verify(url: str) -> VerifyReport:
    with AuditStore(url) as reader:
        return reader.verify(min_retention=timedelta(0))


# -- an injected psycopg connection -------------------------------------------------------------


def test_an_entry_recorded_in_the_callers_transaction_commits_with_it(
    pg_url: str, service: AuditService, app_conn: psycopg.Connection[Any]
) -> None:
    app_conn.execute("INSERT INTO orders VALUES (1)")
    service.record(action="order.create", event_id="order-1", connection=app_conn)

    assert _event_ids(pg_url) == []  # not visible before the caller commits
    app_conn.commit()

    assert _event_ids(pg_url) == ["order-1"]
    assert trails.query(pg_url, "SELECT id FROM orders") == [(1,)]
    assert _verify(pg_url).ok is True


def test_a_rolled_back_entry_is_gone_and_the_chain_goes_on(
    pg_url: str, service: AuditService, app_conn: psycopg.Connection[Any]
) -> None:
    service.record(action="order.create", event_id="kept-1", connection=app_conn)
    app_conn.commit()
    app_conn.execute("INSERT INTO orders VALUES (2)")
    service.record(action="order.create", event_id="undone", connection=app_conn)
    app_conn.rollback()

    assert _event_ids(pg_url) == ["kept-1"]
    assert trails.query(pg_url, "SELECT id FROM orders") == []
    service.record(action="order.create", event_id="kept-2", connection=app_conn)
    app_conn.commit()
    service.record(action="later", event_id="async-1")
    assert service.flush(timeout=10) is True

    assert _event_ids(pg_url) == ["kept-1", "kept-2", "async-1"]
    report = _verify(pg_url)
    assert (report.ok, report.rows_checked) == (True, 3)


def test_an_entry_in_an_open_transaction_is_in_a_savepoint(
    pg_url: str, service: AuditService, app_conn: psycopg.Connection[Any]
) -> None:
    # The caller's transaction is open (it inserted); a failing audit insert must not spoil it.
    service.record(action="a", event_id="dup", connection=app_conn)
    app_conn.commit()
    app_conn.execute("INSERT INTO orders VALUES (3)")

    with pytest.raises(AuditWriteError, match=r"^could not write audit entry dup: UniqueViolation"):
        service.record(action="a", event_id="dup", connection=app_conn)

    app_conn.execute("INSERT INTO orders VALUES (4)")  # the transaction is still usable
    app_conn.commit()
    assert trails.query(pg_url, "SELECT id FROM orders ORDER BY id") == [(3,), (4,)]
    assert _event_ids(pg_url) == ["dup"]


def test_an_autocommit_connection_commits_the_entry_at_once(
    pg_url: str, service: AuditService
) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        service.record(action="a", event_id="now", connection=conn)

        assert _event_ids(pg_url) == ["now"]
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert _verify(pg_url).ok is True


def test_the_first_injected_write_creates_the_schema_in_the_callers_transaction(
    pg_url: str,
) -> None:
    service = AuditService(
        AuditSettings(database=pg_url, cleanup_enabled=False, async_writes=False)
    )
    try:
        with psycopg.connect(pg_url) as conn:
            service.record(action="a", event_id="first", connection=conn)
            conn.rollback()
            assert _event_ids(pg_url) == []
            service.record(action="a", event_id="second", connection=conn)
            conn.commit()
    finally:
        service.close(timeout=10)

    assert _event_ids(pg_url) == ["second"]
    assert _verify(pg_url).ok is True


@pytest.mark.parametrize("bad", [object(), "postgresql://x@127.0.0.1/db", 42])
def test_a_connection_of_another_type_names_both_supported_types(
    service: AuditService, bad: object
) -> None:
    with pytest.raises(TypeError) as exc:
        service.record(action="a", connection=bad)

    assert "sqlite3.Connection" in str(exc.value)
    assert "psycopg.Connection" in str(exc.value)
    assert type(bad).__name__ in str(exc.value)


# -- verify streams -----------------------------------------------------------------------------

STREAMED_ROWS = 12_000  # more than two fetches of the server-side cursor


def test_verify_reads_through_a_server_side_cursor_a_batch_at_a_time(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = [
        AuditEntry(action="bulk", event_id=f"e{n}", timestamp=T0 + timedelta(microseconds=n))
        for n in range(STREAMED_ROWS)
    ]
    trails.write(pg_url, entries)
    seen: dict[str, Any] = {}
    real_verify_rows = store_module.verify_rows

    def spying(rows: Any, *args: Any) -> VerifyReport:
        # On the first row, the server still holds the cursor and most rows are unsent.
        iterator = iter(rows)
        first = next(iterator)
        conn = reader._conn
        assert isinstance(conn, PgTrail)
        seen["cursors"] = conn.conn.execute(
            "SELECT name FROM pg_cursors WHERE name LIKE 'audit_engine_stream_%'"
        ).fetchall()

        def chained() -> Iterator[Any]:
            yield first
            yield from iterator

        return real_verify_rows(chained(), *args)

    monkeypatch.setattr(store_module, "verify_rows", spying)
    with AuditStore(pg_url) as reader:
        report = reader.verify(min_retention=timedelta(0))

    assert (report.ok, report.rows_checked) == (True, STREAMED_ROWS)
    assert len(seen["cursors"]) == 1


def test_stream_fetches_in_pages_not_all_rows(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    trails.write(pg_url, [AuditEntry(action="a", event_id=f"p{n}") for n in range(40)])
    monkeypatch.setattr("audit_engine.storage.postgres.trail._STREAM_ROWS", 7)
    fetched: list[int] = []
    # psycopg's server cursor fetches each page of its iteration through this generator.
    real_fetch = psycopg.ServerCursor._fetch_gen

    def counting(self: psycopg.ServerCursor[Any], num: int | None) -> Any:
        rows = yield from real_fetch(self, num)
        fetched.append(len(rows))
        return rows

    monkeypatch.setattr(psycopg.ServerCursor, "_fetch_gen", counting)
    with AuditStore(pg_url) as reader:
        assert reader.verify(min_retention=timedelta(0)).rows_checked == 40
        assert sum(1 for _ in reader.export()) == 40

    # 40 rows in pages of 7 for verify: 5 full pages and a last one. export pages by keyset
    # (one plain statement per page, tests/unit/test_store_paging.py), not through this cursor.
    assert fetched == [7] * 5 + [5]


# -- purge --------------------------------------------------------------------------------------


def _old_and_new(url: str, old: int, new: int) -> None:
    now = datetime.now(UTC)
    entries = [
        AuditEntry(action="old", event_id=f"old-{n}", timestamp=T0 + timedelta(seconds=n))
        for n in range(old)
    ] + [AuditEntry(action="new", event_id=f"new-{n}", timestamp=now) for n in range(new)]
    trails.write(url, entries)


def test_purge_deletes_in_batches_with_anchors_and_the_rest_verifies(pg_url: str) -> None:
    _old_and_new(pg_url, old=30, new=5)
    head_before = AuditStore(pg_url)
    try:
        head = head_before.head()
    finally:
        head_before.close()

    with AuditStore(pg_url) as store:
        report = store.purge(datetime(2025, 1, 1, tzinfo=UTC), batch_size=7)
        verified = store.verify(expected_head=head, min_retention=timedelta(0))

    assert (report.rows_deleted, report.batches) == (30, 5)
    assert trails.query(pg_url, "SELECT count(*) FROM audit_anchors") == [(1,)]
    assert trails.query(pg_url, "SELECT last_deleted_id, rows_deleted FROM audit_anchors") == [
        (30, 30)
    ]
    assert trails.query(pg_url, "SELECT rows_deleted, batches FROM audit_cleanup_runs") == [(30, 5)]
    assert (verified.ok, verified.rows_checked, verified.anchors_checked) == (True, 5, 1)
    trails.write(pg_url, [AuditEntry(action="after", event_id="after-1")])
    assert _verify(pg_url).ok is True


def test_purge_lets_a_writer_in_between_two_batches(pg_url: str) -> None:
    _old_and_new(pg_url, old=20, new=1)
    [(oid,)] = trails.query(pg_url, "SELECT 'audit_entries'::regclass::oid::bigint")
    between: list[tuple[bool, int]] = []
    other = psycopg.connect(pg_url, autocommit=True)

    def write_between(rows: int) -> None:
        # The purge committed a batch: the chain's lock must be free for another writer now.
        with other.transaction():
            [(free,)] = other.execute(
                "SELECT pg_try_advisory_xact_lock(%s, %s)", (CHAIN_LOCK_CLASS, oid)
            ).fetchall()
        between.append((bool(free), rows))
        if free:
            trails.write(pg_url, [AuditEntry(action="between", event_id=f"b{len(between)}")])

    try:
        with AuditStore(pg_url) as store:
            report = store.purge(
                datetime(2025, 1, 1, tzinfo=UTC), batch_size=6, on_batch=write_between
            )
    finally:
        other.close()

    assert between == [(True, 6), (True, 6), (True, 6), (True, 2)]
    assert report.rows_deleted == 20
    assert _event_ids(pg_url) == ["new-0", "b1", "b2", "b3", "b4"]
    assert _verify(pg_url).ok is True


def test_purge_holds_the_chain_lock_while_it_deletes(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The other side of the test above: inside a batch, another writer cannot take the lock.
    _old_and_new(pg_url, old=4, new=1)
    [(oid,)] = trails.query(pg_url, "SELECT 'audit_entries'::regclass::oid::bigint")
    held: list[bool] = []
    real_extend = store_module.purge.__globals__["extend_anchor"]

    def checking(*args: Any, **kwargs: Any) -> Any:
        with psycopg.connect(pg_url, autocommit=True) as other, other.transaction():
            [(free,)] = other.execute(
                "SELECT pg_try_advisory_xact_lock(%s, %s)", (CHAIN_LOCK_CLASS, oid)
            ).fetchall()
        held.append(not free)
        return real_extend(*args, **kwargs)

    monkeypatch.setitem(store_module.purge.__globals__, "extend_anchor", checking)
    with AuditStore(pg_url) as store:
        assert store.purge(datetime(2025, 1, 1, tzinfo=UTC), batch_size=2).batches == 2

    assert held == [True, True]


def test_an_application_connection_with_dict_rows_takes_entries_and_keeps_its_rows(
    pg_url: str,
) -> None:
    with (
        AuditService(pg_url, cleanup_enabled=False) as audit,
        psycopg.connect(pg_url, row_factory=dict_row) as conn,
    ):
        event_id = audit.record(action="note.save", connection=conn)
        assert conn.execute("SELECT 1 AS one").fetchone() == {"one": 1}  # still its own
    with AuditStore(pg_url) as store:
        assert [entry.event_id for entry in store.query()] == [event_id]
        assert store.verify().ok


def test_a_connection_whose_encoding_cannot_carry_the_entry_raises_audit_write_error(
    pg_url: str,
) -> None:
    with (
        AuditService(pg_url, cleanup_enabled=False) as audit,
        psycopg.connect(f"{pg_url}?client_encoding=LATIN1") as conn,
    ):
        with pytest.raises(AuditWriteError, match=r"client_encoding .* use UTF8"):
            audit.record(action="note.save", actor="\u03a9mega", connection=conn)
        conn.execute("SELECT 1")  # the application's transaction is still usable
    with AuditStore(pg_url) as store:
        assert store.count() == 0
