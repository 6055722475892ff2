"""Steps for loading settings from code and from AUDIT_TRAIL_* environment variables."""

import os
from pathlib import Path

from behave import given, then, when
from behave.runner import Context

from audit_engine import AuditService, AuditSettings, SettingsError


def _shown(value: object) -> str:
    """A setting's value as an operator writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _load(context: Context, **values: object) -> None:
    world = context.world
    world.attempt(lambda: AuditSettings(**values))
    world.loaded = world.returned


@given("no AUDIT_TRAIL_ environment variables are set")
def given_clean_env(context: Context) -> None:
    found = sorted(name for name in os.environ if name.startswith("AUDIT_TRAIL_"))
    assert found == [], f"left over from outside the scenario: {found}"


@given('the environment variable {variable} is set to "{value}"')
def given_env(context: Context, variable: str, value: str) -> None:
    assert variable.startswith("AUDIT_TRAIL_"), variable
    os.environ[variable] = value  # after_scenario restores the environment


@given("the environment variable AUDIT_TRAIL_DATABASE names a file in the tool's folder")
def given_env_database(context: Context) -> None:
    world = context.world
    world.database = world.root / "from-env" / "tool-audit.db"
    world.database.parent.mkdir()
    os.environ["AUDIT_TRAIL_DATABASE"] = str(world.database)


@when("the tool loads its audit settings")
def when_load(context: Context) -> None:
    _load(context)


@when("the tool loads its audit settings with {setting} set to {value} in code")
def when_load_with(context: Context, setting: str, value: str) -> None:
    _load(context, **{setting: value})


@when("the tool starts its audit service without settings")
def when_start_from_env(context: Context) -> None:
    world = context.world
    world.service = world.track(AuditService())
    assert Path(world.service.settings.database) == world.database


@then("the audit settings are:")
def then_settings_table(context: Context) -> None:
    world = context.world
    assert world.error is None, f"loading failed: {world.error}"
    for row in context.table:
        found = _shown(getattr(world.loaded, row["setting"]))
        assert found == row["value"], f"{row['setting']} is {found!r}, expected {row['value']!r}"


@then('the setting {setting} is "{expected}"')
def then_setting(context: Context, setting: str, expected: str) -> None:
    world = context.world
    assert world.error is None, f"loading failed: {world.error}"
    found = _shown(getattr(world.loaded, setting))
    assert found == expected, f"{setting} is {found!r}, expected {expected!r}"


@then('loading fails with a settings error that says "{text}"')
def then_settings_error(context: Context, text: str) -> None:
    error = context.world.error
    assert isinstance(error, SettingsError), f"expected SettingsError, got {error!r}"
    assert text in str(error), f"{text!r} is not in {str(error)!r}"


@then('the settings error quotes the bad value "{value}"')
def then_error_quotes(context: Context, value: str) -> None:
    message = str(context.world.error)
    assert repr(value) in message, f"{value!r} is not quoted in {message!r}"


@then("the audit service runs no writer thread")
def then_no_writer(context: Context) -> None:
    audit = context.world.audit
    assert not audit.settings.async_writes
    assert not audit.stats().writer_alive


@when('the tool starts its audit service on "{name}" with {setting} set to {value} in code')
def when_start_on_path(context: Context, name: str, setting: str, value: str) -> None:
    world = context.world
    world.database = world.root / name
    world.attempt(lambda: world.open_service(str(world.database), **{setting: value}))


@then('the service setting {setting} is "{expected}"')
def then_service_setting(context: Context, setting: str, expected: str) -> None:
    found = _shown(getattr(context.world.audit.settings, setting))
    assert found == expected, f"{setting} is {found!r}, expected {expected!r}"


@then('starting fails with a type error that says "{text}"')
def then_type_error(context: Context, text: str) -> None:
    error = context.world.error
    assert isinstance(error, TypeError), f"expected TypeError, got {error!r}"
    assert str(error) == text, f"{str(error)!r} is not {text!r}"


@then("the tool's folder holds no audit database")
def then_no_database(context: Context) -> None:
    found = sorted(path.name for path in context.world.root.iterdir())
    assert not any(name.startswith("tool-audit.db") for name in found), found
