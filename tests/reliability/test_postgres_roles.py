"""PostgreSQL as operators run it: a least-privilege role, a server turned read-only (what a client
still pointed at an old primary sees during a failover), a role that may not write, and a failed
audit write inside the application's own transaction.

Each test works in its own fresh database of the session's throwaway server (``pg_url``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from audit_engine import AuditService, AuditStore, AuditStoreError, AuditWriteError

WAIT_S = 30.0


def _as_role(url: str, role: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))


def _other_database(url: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/postgres"))


def _admin(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(url, autocommit=True)


@pytest.fixture
def app_role(pg_url: str) -> Iterator[str]:
    """A role that owns nothing: USAGE on the schema, and only what docs/postgresql.md lists on the
    engine's tables (SELECT, INSERT; UPDATE and DELETE for retention) — the tables were created
    once by the owner (``AuditStore(url, create=True)``, as ``audit-engine init`` does)."""
    AuditStore(pg_url, create=True).close()
    role = f"app_{urlsplit(pg_url).path.lstrip('/')}"
    with _admin(pg_url) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        admin.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        admin.execute(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON audit_entries, audit_anchors, "
            f"audit_cleanup_runs TO {role}"
        )
        admin.execute(f"GRANT SELECT ON audit_chain_versions, audit_engine_meta TO {role}")
    yield _as_role(pg_url, role)
    with _admin(pg_url) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
        )
        admin.execute(f"DROP OWNED BY {role}")
        admin.execute(f"DROP ROLE {role}")


def test_a_role_with_the_documented_privileges_records_reads_purges_and_verifies(
    app_role: str, tmp_path: Path
) -> None:
    with AuditService(
        app_role, cleanup_enabled=False, deadletter_path=tmp_path / "dl.jsonl"
    ) as audit:
        ids = [audit.record(action="note.save", resource_id=str(n)) for n in range(50)]
    assert audit.stats().written == 50
    assert audit.stats().dead_lettered == 0

    with AuditStore(app_role) as store:
        assert store.count() == 50
        report = store.purge(timedelta(seconds=1e-6), batch_size=20)  # everything, in batches
        assert report.rows_deleted == 50
        assert report.batches == 3
        verified = store.verify(min_retention=timedelta(0))
    assert verified.ok, verified.reason
    assert verified.anchors_checked == 1
    assert all(ids)


def test_a_role_that_may_not_write_has_its_entries_dead_lettered_not_retried(
    pg_url: str, tmp_path: Path
) -> None:
    AuditStore(pg_url, create=True).close()
    role = f"reader_{urlsplit(pg_url).path.lstrip('/')}"
    with _admin(pg_url) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        admin.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        admin.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    dead = tmp_path / "dl.jsonl"
    try:
        audit = AuditService(_as_role(pg_url, role), cleanup_enabled=False, deadletter_path=dead)
        for n in range(5):
            audit.record(action="note.save", resource_id=str(n))
        assert audit.flush(WAIT_S)  # set aside counts as handled: no endless retry
        audit.close(WAIT_S)
        stats = audit.stats()
        assert stats.dead_lettered == 5
        assert stats.written == 0
        assert "permission denied" in (stats.last_error or "")
        assert len(dead.read_text().splitlines()) == 5
    finally:
        with _admin(pg_url) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            admin.execute(f"DROP OWNED BY {role}")
            admin.execute(f"DROP ROLE {role}")

    with AuditStore(pg_url) as store:  # and a replay puts them back once the role may write
        report = store.replay_dead_letters(dead)
        assert report.replayed == 5
        assert store.verify().ok


def test_a_server_turned_read_only_is_waited_out_not_dead_lettered(
    pg_url: str, tmp_path: Path
) -> None:
    """A failover: the writer's server refuses writes (25006) until the new primary answers."""
    dbname = urlsplit(pg_url).path.lstrip("/")
    dead = tmp_path / "dl.jsonl"
    audit = AuditService(pg_url, cleanup_enabled=False, deadletter_path=dead)
    try:
        audit.record(action="before")
        assert audit.flush(WAIT_S)
        with _admin(pg_url) as admin:
            admin.execute(f"ALTER DATABASE {dbname} SET default_transaction_read_only = on")
            # New sessions see it; end the writer's, as a failover would.
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (dbname,),
            )
        for n in range(20):
            audit.record(action="during", resource_id=str(n))
        retried = threading.Event()

        def wait_for_retries() -> None:
            while audit.stats().retries < 3 and not retried.wait(0.01):
                pass
            retried.set()

        watcher = threading.Thread(target=wait_for_retries, daemon=True)
        watcher.start()
        assert retried.wait(WAIT_S)
        assert audit.stats().dead_lettered == 0
        assert "read-only" in (audit.stats().last_error or "")
        # From another database: a new session in this one is read-only now.
        with _admin(_other_database(pg_url)) as admin:
            admin.execute(f"ALTER DATABASE {dbname} SET default_transaction_read_only = off")
        assert audit.flush(WAIT_S)
    finally:
        assert audit.close(WAIT_S)
    assert audit.stats().written == 21
    assert audit.stats().dead_lettered == 0
    assert not dead.exists()
    with AuditStore(pg_url) as store:
        assert store.count(action="during") == 20
        assert store.verify().ok


def test_a_failed_audit_write_leaves_the_callers_transaction_usable(pg_url: str) -> None:
    with AuditService(pg_url, cleanup_enabled=False) as audit:
        audit.record(action="first", event_id="evt-1")
        assert audit.flush(WAIT_S)
        with psycopg.connect(pg_url) as conn:
            conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
            conn.execute("INSERT INTO notes VALUES (1, 'kept')")
            with pytest.raises(AuditWriteError) as raised:
                audit.record(action="again", event_id="evt-1", connection=conn)  # a duplicate
            assert "evt-1" in str(raised.value)
            conn.execute("INSERT INTO notes VALUES (2, 'also kept')")  # still usable
            audit.record(action="note.save", resource_id="2", connection=conn)
        # leaving the block committed the business rows and the second entry together
    with _admin(pg_url) as admin:
        assert admin.execute("SELECT count(*) FROM notes").fetchone() == (2,)
    with AuditStore(pg_url) as store:
        assert [e.action for e in store.query()] == ["first", "note.save"]
        assert store.verify().ok


@pytest.mark.parametrize("async_writes", [True, False])
def test_a_wrong_url_fails_when_the_service_starts_naming_why_without_the_password(
    pg_url: str, async_writes: bool
) -> None:
    parts = urlsplit(pg_url)
    wrong = urlunsplit(
        parts._replace(netloc=f"postgres:s3cret@{parts.hostname}:{parts.port}", path="/no_such_db")
    )
    with pytest.raises(AuditStoreError) as raised:
        AuditService(wrong, async_writes=async_writes)
    message = str(raised.value)
    assert message.startswith(
        f"cannot connect to postgresql://postgres:***@{parts.hostname}:{parts.port}/no_such_db: "
    )
    assert 'database "no_such_db" does not exist' in message
    assert "s3cret" not in message


def test_close_with_a_timeout_is_not_stuck_behind_another_sessions_chain_lock(
    pg_url: str, tmp_path: Path
) -> None:
    """An application transaction (or another host's long purge) holds the chain's lock."""
    dead = tmp_path / "dl.jsonl"
    audit = AuditService(pg_url, cleanup_enabled=False, deadletter_path=dead)
    with psycopg.connect(pg_url) as holder:  # not autocommit: the lock lasts until rollback
        audit.record(action="note.save", connection=holder)  # takes the chain's lock
        for n in range(10):
            audit.record(action="queued", resource_id=str(n))
        assert not audit.close(0.5)
        stats = audit.stats()
        assert not stats.writer_alive  # not left waiting for the lock
        assert stats.dead_lettered == 10
        assert len(dead.read_text().splitlines()) == 10
        holder.rollback()
    with AuditStore(pg_url) as store:  # nothing was committed behind close()'s back
        assert store.count() == 0
        assert store.replay_dead_letters(dead).replayed == 10
        assert store.verify().ok
