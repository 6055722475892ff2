"""Review D16: an argument of the wrong kind or out of range raises the right error, naming it.

A value of the wrong type is a ``TypeError``, a value of the right type but out of range a
``ValueError``; both name the argument (never an ``OverflowError``, an ``AttributeError`` or a
comparison error from deep inside).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from audit_engine import AuditService, AuditSettings, AuditStore, SettingsError
from audit_engine.storage.chain import ChainHead

MakeService = Callable[..., AuditService]


@pytest.fixture
def store(db_path: Path) -> AuditStore:
    AuditStore(db_path, create=True).close()
    return AuditStore(db_path)


@pytest.mark.parametrize("method", ["query", "entries_after"])
@pytest.mark.parametrize(
    ("limit", "error", "message"),
    [
        (2**63, ValueError, f"limit must be at most {2**63 - 1} (got {2**63})"),
        (-1, ValueError, "limit must be zero or more (got -1)"),
        ("5", TypeError, "limit must be an int (got str)"),
        (5.0, TypeError, "limit must be an int (got float)"),
        (True, TypeError, "limit must be an int (got bool)"),
    ],
)
def test_a_bad_limit_names_limit(
    store: AuditStore, method: str, limit: Any, error: type[Exception], message: str
) -> None:
    read = store.query if method == "query" else lambda limit: store.entries_after(0, limit=limit)
    with store, pytest.raises(error) as raised:
        read(limit=limit)

    assert type(raised.value) is error
    assert str(raised.value) == message


def test_the_largest_limit_sqlite_takes_is_accepted(store: AuditStore) -> None:
    with store:
        assert list(store.query(limit=2**63 - 1)) == []
        assert store.entries_after(0, limit=2**63 - 1) == []


@pytest.mark.parametrize("head", ["1:abc", 1, ("1", "abc")])
def test_verify_takes_a_chain_head_only(store: AuditStore, head: Any) -> None:
    with store, pytest.raises(TypeError) as raised:
        store.verify(expected_head=head)

    assert str(raised.value) == (
        "expected_head must be a ChainHead (as head() returns) or None, got "
        f"{type(head).__name__}; ChainHead(id=ID, hash=HASH) makes one from a published ID:HASH"
    )


def test_verify_with_a_chain_head_built_from_id_and_hash(make_service: MakeService) -> None:
    service = make_service(cleanup_enabled=False)
    service.record(action="a")
    service.close()
    with AuditStore(service.settings.database) as reader:
        head = reader.head()
        assert head is not None
        published = f"{head.id}:{head.hash}"
        ident, _, digest = published.partition(":")
        assert reader.verify(expected_head=ChainHead(id=int(ident), hash=digest)).ok


@pytest.mark.parametrize("connection", ["nope", 3, object()])
def test_record_with_a_connection_that_is_not_one_names_it(
    make_service: MakeService, connection: Any
) -> None:
    service = make_service(cleanup_enabled=False)

    with pytest.raises(TypeError) as raised:
        service.record(action="x", connection=connection)

    assert str(raised.value) == (
        "record() connection must be None or the caller's transaction to write the entry in: a "
        "sqlite3.Connection, a psycopg.Connection, or a SQLAlchemy Session or Connection on "
        "either driver (sqlite+pysqlite, postgresql+psycopg); got "
        f"{type(connection).__name__}"
    )
    assert service.stats().accepted == 0


def test_a_bad_keyword_setting_names_the_argument_not_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    with pytest.raises(SettingsError) as raised:
        AuditService("x.db", queue_maxsize="lots")

    assert str(raised.value) == (
        "invalid setting queue_maxsize (the queue_maxsize= argument): Input should be a valid "
        "integer, unable to parse string as an integer (got 'lots')"
    )


def test_a_bad_environment_setting_still_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AUDIT_TRAIL_QUEUE_MAXSIZE", "lots")

    with pytest.raises(SettingsError) as raised:
        AuditSettings(block_timeout=-1)

    assert str(raised.value) == (
        "invalid setting queue_maxsize (AUDIT_TRAIL_QUEUE_MAXSIZE): Input should be a valid "
        "integer, unable to parse string as an integer (got 'lots'); invalid setting "
        "block_timeout (the block_timeout= argument): Input should be greater than or equal "
        "to 0 (got -1)"
    )


def test_a_bad_async_writes_argument_names_the_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError) as raised:
        AuditSettings(async_writes="maybe")
    assert str(raised.value).startswith("invalid setting async_writes (the async_writes= argument)")

    monkeypatch.setenv("AUDIT_TRAIL_ASYNC", "maybe")
    with pytest.raises(SettingsError) as raised:
        AuditSettings()
    assert str(raised.value).startswith("invalid setting async_writes (AUDIT_TRAIL_ASYNC)")
