"""Steps for redaction: secrets in ``details`` are masked before they reach the database file."""

import json

from behave import then, when
from behave.runner import Context


def _doc_json(context: Context) -> dict[str, object]:
    assert context.text, 'this step needs a """ JSON """ block'
    value = json.loads(context.text)
    assert isinstance(value, dict), value
    return value


def _database_files(context: Context) -> dict[str, bytes]:
    """The raw bytes of the audit database and its companion files (-wal, -shm, ...)."""
    database = context.world.database
    files = {path.name: path.read_bytes() for path in database.parent.glob(f"{database.name}*")}
    assert database.name in files, f"there is no audit database file: {sorted(files)}"
    return files


@when('the tool records a change to user "{user}" with these details:')
def when_record_with_details(context: Context, user: str) -> None:
    world = context.world
    result = world.record_labelled(
        f"user.update {user}",
        action="user.update",
        operation="update",
        resource_type="user",
        resource_id=user,
        details=_doc_json(context),
    )
    assert result, "the change was not recorded"
    world.looked_at = result


@then("the stored details of that entry are:")
def then_stored_details(context: Context) -> None:
    world = context.world
    rows = [row for row in world.audit_rows() if row["event_id"] == world.looked_at]
    assert len(rows) == 1, f"the entry {world.looked_at} is not stored"
    expected = _doc_json(context)
    assert rows[0]["details"] == expected, f"stored {rows[0]['details']}, expected {expected}"


@then("the write-ahead log of the audit database is on disk")
def then_wal_on_disk(context: Context) -> None:
    files = _database_files(context)
    wal = f"{context.world.database.name}-wal"
    assert files.get(wal), f"no write-ahead log with content among {sorted(files)}"


@then("the audit database's files on disk contain none of these values:")
def then_not_on_disk(context: Context) -> None:
    assert context.table is not None, "this step needs a | value | table"
    files = _database_files(context)
    for row in context.table:
        needle = row["value"].encode("utf-8")
        leaks = [name for name, content in files.items() if needle in content]
        assert not leaks, f"{row['value']!r} is written in {leaks}"


@then('the audit database\'s files on disk do contain "{value}"')
def then_on_disk(context: Context, value: str) -> None:
    # The control for the step above: the same search finds what is not secret.
    files = _database_files(context)
    needle = value.encode("utf-8")
    assert any(needle in content for content in files.values()), f"{value!r} is not on disk"
