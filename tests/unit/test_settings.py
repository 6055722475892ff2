"""AuditSettings: defaults, environment variables, keyword arguments and error messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from audit_engine import AuditSettings, SettingsError
from audit_engine.errors import AuditEngineError
from audit_engine.settings import env_var

DEFAULTS: dict[str, Any] = {
    "database": Path("audit.db"),
    "enabled": True,
    "async_writes": True,
    "queue_maxsize": 10000,
    "buffer_max_size": 500,
    "buffer_flush_interval": 1.0,
    "on_full": "block",
    "block_timeout": 10.0,
    "synchronous": "NORMAL",
    "busy_timeout": 5.0,
    "max_details_bytes": 65536,
}

ENV_VARS = {
    "database": "AUDIT_TRAIL_DATABASE",
    "enabled": "AUDIT_TRAIL_ENABLED",
    "async_writes": "AUDIT_TRAIL_ASYNC",
    "queue_maxsize": "AUDIT_TRAIL_QUEUE_MAXSIZE",
    "buffer_max_size": "AUDIT_TRAIL_BUFFER_MAX_SIZE",
    "buffer_flush_interval": "AUDIT_TRAIL_BUFFER_FLUSH_INTERVAL",
    "on_full": "AUDIT_TRAIL_ON_FULL",
    "block_timeout": "AUDIT_TRAIL_BLOCK_TIMEOUT",
    "synchronous": "AUDIT_TRAIL_SYNCHRONOUS",
    "busy_timeout": "AUDIT_TRAIL_BUSY_TIMEOUT",
    "max_details_bytes": "AUDIT_TRAIL_MAX_DETAILS_BYTES",
}


@pytest.mark.parametrize(("field", "default"), list(DEFAULTS.items()))
def test_default(field: str, default: object) -> None:
    value = getattr(AuditSettings(), field)

    assert value == default
    assert type(value) is type(default)


@pytest.mark.parametrize(("field", "variable"), list(ENV_VARS.items()))
def test_env_var_names_the_variable_of_each_setting(field: str, variable: str) -> None:
    assert env_var(field) == variable


# -- the environment ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "text", "field", "expected"),
    [
        (
            "AUDIT_TRAIL_DATABASE",
            "/var/lib/app/audit.db",
            "database",
            Path("/var/lib/app/audit.db"),
        ),
        ("AUDIT_TRAIL_ENABLED", "false", "enabled", False),
        ("AUDIT_TRAIL_ENABLED", "0", "enabled", False),
        ("AUDIT_TRAIL_ASYNC", "false", "async_writes", False),
        ("AUDIT_TRAIL_ASYNC", "no", "async_writes", False),
        ("AUDIT_TRAIL_ASYNC", "TRUE", "async_writes", True),
        ("AUDIT_TRAIL_QUEUE_MAXSIZE", "7", "queue_maxsize", 7),
        ("AUDIT_TRAIL_BUFFER_MAX_SIZE", "50", "buffer_max_size", 50),
        ("AUDIT_TRAIL_BUFFER_FLUSH_INTERVAL", "0.25", "buffer_flush_interval", 0.25),
        ("AUDIT_TRAIL_BUFFER_FLUSH_INTERVAL", "3600", "buffer_flush_interval", 3600.0),
        ("AUDIT_TRAIL_ON_FULL", "drop", "on_full", "drop"),
        ("AUDIT_TRAIL_ON_FULL", "DROP", "on_full", "drop"),
        ("AUDIT_TRAIL_ON_FULL", " Sync ", "on_full", "sync"),
        ("AUDIT_TRAIL_BLOCK_TIMEOUT", "0", "block_timeout", 0.0),
        ("AUDIT_TRAIL_BLOCK_TIMEOUT", "2.5", "block_timeout", 2.5),
        ("AUDIT_TRAIL_SYNCHRONOUS", "full", "synchronous", "FULL"),
        ("AUDIT_TRAIL_SYNCHRONOUS", "Normal", "synchronous", "NORMAL"),
        ("AUDIT_TRAIL_BUSY_TIMEOUT", "0.5", "busy_timeout", 0.5),
        ("AUDIT_TRAIL_MAX_DETAILS_BYTES", "1024", "max_details_bytes", 1024),
    ],
)
def test_environment_variable_sets_the_field(
    monkeypatch: pytest.MonkeyPatch, variable: str, text: str, field: str, expected: object
) -> None:
    monkeypatch.setenv(variable, text)

    assert getattr(AuditSettings(), field) == expected


def test_variable_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("audit_trail_queue_maxsize", "42")

    assert AuditSettings().queue_maxsize == 42


def test_one_variable_changes_only_its_own_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIT_TRAIL_QUEUE_MAXSIZE", "42")

    settings = AuditSettings()

    assert settings.queue_maxsize == 42
    assert {f: getattr(settings, f) for f in DEFAULTS if f != "queue_maxsize"} == {
        f: v for f, v in DEFAULTS.items() if f != "queue_maxsize"
    }


def test_unprefixed_async_writes_variable_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNC_WRITES", "false")

    assert AuditSettings().async_writes is True


# -- keyword arguments -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "env_text", "keyword"),
    [
        ("database", "/from/env.db", Path("from-code.db")),
        ("async_writes", "false", True),
        ("queue_maxsize", "7", 99),
        ("on_full", "drop", "sync"),
        ("synchronous", "FULL", "NORMAL"),
        ("max_details_bytes", "10", 2048),
    ],
)
def test_keyword_argument_beats_the_environment(
    monkeypatch: pytest.MonkeyPatch, field: str, env_text: str, keyword: object
) -> None:
    monkeypatch.setenv(ENV_VARS[field], env_text)

    assert getattr(AuditSettings(**{field: keyword}), field) == keyword


def test_keyword_argument_is_validated_like_the_environment() -> None:
    settings = AuditSettings(on_full="DROP", synchronous="full", database="x.db")

    assert settings.on_full == "drop"
    assert settings.synchronous == "FULL"
    assert settings.database == Path("x.db")


def test_settings_are_frozen() -> None:
    settings = AuditSettings()

    with pytest.raises(ValidationError):
        settings.queue_maxsize = 1  # type: ignore[misc]
    assert settings.queue_maxsize == 10000


# -- bad values --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("queue_maxsize", 0, "Input should be greater than 0 (got 0)"),
        (
            "queue_maxsize",
            "lots",
            "Input should be a valid integer, unable to parse string as an integer (got 'lots')",
        ),
        ("buffer_max_size", -1, "Input should be greater than 0 (got -1)"),
        ("buffer_flush_interval", 0, "Input should be greater than 0 (got 0)"),
        ("buffer_flush_interval", 3601, "Input should be less than or equal to 3600 (got 3601)"),
        ("on_full", "explode", "Input should be 'block', 'drop' or 'sync' (got 'explode')"),
        ("block_timeout", -0.5, "Input should be greater than or equal to 0 (got -0.5)"),
        ("synchronous", "off", "Input should be 'NORMAL' or 'FULL' (got 'OFF')"),
        ("busy_timeout", -1, "Input should be greater than or equal to 0 (got -1)"),
        ("max_details_bytes", 0, "Input should be greater than 0 (got 0)"),
        (
            "enabled",
            "perhaps",
            "Input should be a valid boolean, unable to interpret input (got 'perhaps')",
        ),
    ],
)
def test_bad_keyword_value_names_the_field_as_an_argument(
    field: str, value: object, message: str
) -> None:
    with pytest.raises(SettingsError) as exc:
        AuditSettings(**{field: value})

    assert str(exc.value) == f"invalid setting {field} (the {field}= argument): {message}"


@pytest.mark.parametrize(
    ("field", "text", "message"),
    [
        ("queue_maxsize", "0", "Input should be greater than 0 (got '0')"),
        ("queue_maxsize", "-1", "Input should be greater than 0 (got '-1')"),
        (
            "async_writes",
            "maybe",
            "Input should be a valid boolean, unable to interpret input (got 'maybe')",
        ),
        ("on_full", "explode", "Input should be 'block', 'drop' or 'sync' (got 'explode')"),
        ("synchronous", "extra", "Input should be 'NORMAL' or 'FULL' (got 'EXTRA')"),
        (
            "buffer_flush_interval",
            "soon",
            "Input should be a valid number, unable to parse string as a number (got 'soon')",
        ),
    ],
)
def test_bad_environment_value_names_the_field_and_its_variable(
    monkeypatch: pytest.MonkeyPatch, field: str, text: str, message: str
) -> None:
    monkeypatch.setenv(ENV_VARS[field], text)

    with pytest.raises(SettingsError) as exc:
        AuditSettings()

    assert str(exc.value) == f"invalid setting {field} ({ENV_VARS[field]}): {message}"


def test_every_bad_value_is_reported_at_once() -> None:
    with pytest.raises(SettingsError) as exc:
        AuditSettings(queue_maxsize=0, block_timeout=-1)

    assert str(exc.value) == (
        "invalid setting queue_maxsize (the queue_maxsize= argument): "
        "Input should be greater than 0 (got 0); "
        "invalid setting block_timeout (the block_timeout= argument): "
        "Input should be greater than or equal to 0 (got -1)"
    )


def test_settings_error_is_a_value_error_and_hides_pydantic() -> None:
    with pytest.raises(ValueError, match="invalid setting") as exc:
        AuditSettings(queue_maxsize=0)

    assert isinstance(exc.value, SettingsError)
    assert isinstance(exc.value, AuditEngineError)
    assert not isinstance(exc.value, ValidationError)
    assert exc.value.__cause__ is None
    assert exc.value.__suppress_context__ is True


def test_unknown_keyword_is_rejected() -> None:
    with pytest.raises(SettingsError) as exc:
        AuditSettings(queue_max_size=10)

    assert str(exc.value) == "invalid setting queue_max_size: Extra inputs are not permitted"
