"""``verify --min-retention``: purge anchors checked against the retention setting, forged anchors
and cleanup runs refused with ``Error: purge records refused: ...`` (issue 11 item 9).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Cli, Trail

HEX64 = "[0-9a-f]{64}"


@pytest.fixture
def two_days(trail: Trail) -> Trail:
    """Two entries recorded two days ago, one now."""
    old = datetime.now(UTC) - timedelta(days=2)
    trail.record(
        {"action": "old.0", "timestamp": old},
        {"action": "old.1", "timestamp": old},
        {"action": "new.0"},
    )
    return trail


def test_a_purge_shorter_than_the_retention_setting_fails_verify(cli: Cli, two_days: Trail) -> None:
    cli.run("purge", "--older-than", "1d")

    result = cli.run("verify", code=1)

    assert re.fullmatch(
        r"Error: purge records refused: anchor 1 purged rows younger than the minimum retention "
        r"of 90 days: its cutoff \S+ is less than 90 days before the purge at \S+ \(if that "
        r"purge was intended, verify with a shorter minimum retention\); --min-retention "
        r"defaults to the retention setting \(AUDIT_TRAIL_RETENTION_DAYS\)\n",
        result.output,
    ), result.output


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--min-retention", "1d"], None),
        ([], {"AUDIT_TRAIL_RETENTION_DAYS": "1"}),
    ],
)
def test_the_same_purge_verifies_with_its_own_retention(
    cli: Cli, two_days: Trail, args: list[str], env: dict[str, str] | None
) -> None:
    cli.run("purge", "--older-than", "1d")

    result = cli.run("verify", *args, env=env)

    assert re.fullmatch(rf"OK: 1 row verified; head 3:{HEX64}\n", result.output), result.output


def test_a_forged_anchor_is_refused(cli: Cli, two_days: Trail) -> None:
    head = two_days.head()
    two_days.execute("DELETE FROM audit_entries")
    two_days.execute(
        "INSERT INTO audit_anchors (id, last_deleted_id, last_deleted_hash, rows_deleted, "
        "cutoff, created_at) VALUES "
        "(1, 3, ?, 3, '2026-01-01T00:00:00.000000Z', '2026-01-02T00:00:00+00:00')",
        (head.hash,),
    )

    plain = cli.run("verify", code=1)
    against_head = cli.run("verify", "--expected-head", f"{head.id}:{head.hash}", code=1)

    message = (
        "Error: purge records refused: anchor 1 is not part of the anchor chain (it has no "
        "hash: a purge did not write it)\n"
    )
    assert plain.output == against_head.output == message


def test_a_tampered_cleanup_run_is_refused(cli: Cli, two_days: Trail) -> None:
    cli.run("purge", "--older-than", "1d")
    two_days.execute("UPDATE audit_cleanup_runs SET rows_deleted = 0")

    result = cli.run("verify", "--min-retention", "1d", code=1)

    assert result.output == (
        "Error: purge records refused: cleanup run 1 was modified (its hash does not match its "
        "contents)\n"
    )


def test_a_bad_min_retention_is_a_usage_error(cli: Cli, two_days: Trail) -> None:
    result = cli.run("verify", "--min-retention", "soon", code=2)

    assert "Invalid value for '--min-retention'" in result.output
