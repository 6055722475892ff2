"""Database URLs as every entry point takes them: the scheme in any case, another scheme refused,
a broken URL refused — never with the password in the message — and a dead-letter file of its own
for every trail of a server."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from audit_engine import AuditService, AuditSettings, AuditStore, AuditStoreError
from audit_engine.cli import main
from audit_engine.settings import mask_url
from audit_engine.storage.dialect import BackendError
from audit_engine.storage.postgres import connect

SECRET = "S3cretPw!"


def test_the_scheme_is_taken_in_any_case_and_written_in_lower_case(pg_url: str) -> None:
    shouting = pg_url.replace("postgresql://", "POSTGRESQL://")
    assert AuditSettings(database=shouting).database == pg_url
    with AuditService(shouting, cleanup_enabled=False) as audit:
        audit.record(action="note.save")
    with AuditStore(pg_url.replace("postgresql://", "Postgres://")) as store:
        assert store.count() == 1


@pytest.mark.parametrize(
    ("url", "why"),
    [
        (f"mysql://aud:{SECRET}@db/x", "must be a SQLite file path or a postgresql:// URL"),
        (f"sqlite://aud:{SECRET}@db/x", "must be a SQLite file path or a postgresql:// URL"),
        (f"postgresql://aud:{SECRET}@[::1:5432/x", "is not a valid PostgreSQL URL"),
    ],
)
def test_another_scheme_or_a_broken_url_is_refused_everywhere_without_the_password(
    url: str, why: str
) -> None:
    with pytest.raises(AuditStoreError) as store_error:
        AuditStore(url)
    with pytest.raises(ValueError, match="invalid setting database") as settings_error:
        AuditService(url)
    result = CliRunner().invoke(main, ["--db", url, "verify"])
    messages = [str(store_error.value), str(settings_error.value), result.output]
    assert all(why in message for message in messages), messages
    assert all(SECRET not in message for message in messages), messages
    assert result.exit_code == 2  # a usage error of --db


def test_a_connection_error_quoting_the_url_never_shows_the_password(pg_url: str) -> None:
    # libpq quotes the connection string for a query parameter it does not know.
    with_password = pg_url.replace("postgresql://postgres@", f"postgresql://postgres:{SECRET}@")
    with pytest.raises(BackendError) as raised:
        connect(f"{with_password}?no_such_option=1&password={SECRET}")
    assert "no_such_option" in str(raised.value)
    assert SECRET not in str(raised.value)


def test_two_trails_of_one_database_have_dead_letter_files_of_their_own(tmp_path: Path) -> None:
    base = "postgresql://aud@db.example.internal:5432/app"
    audit = AuditSettings(database=f"{base}?options=-csearch_path%3Daudit").deadletter_file
    other = AuditSettings(database=f"{base}?options=-csearch_path%3Dother").deadletter_file
    as_role = AuditSettings(database=base.replace("aud@", "ops@")).deadletter_file
    assert len({audit, other, as_role}) == 3
    assert audit.name.startswith("db.example.internal-5432-app-")
    # The password is not part of the trail's identity: changing it keeps the file.
    with_password = AuditSettings(database=base.replace("aud@", f"aud:{SECRET}@")).deadletter_file
    assert with_password == AuditSettings(database=base).deadletter_file


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql:///audit?host=/run/postgresql", "postgresql:///audit?host=/run/postgresql"),
        ("postgresql://u:pw@/audit?host=/tmp", "postgresql://u:***@/audit?host=/tmp"),
        (
            "postgresql://u@h/db?sslmode=require&password=pw",
            "postgresql://u@h/db?sslmode=require&password=***",
        ),
    ],
)
def test_a_url_is_shown_as_written_but_for_its_password(url: str, shown: str) -> None:
    assert mask_url(url) == shown
