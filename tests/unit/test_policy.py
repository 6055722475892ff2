"""The policy decision is pure: every rule is checked here on plain entries."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from pydantic import BaseModel

from audit_engine.models import AuditEntry, Operation, Outcome
from audit_engine.pipeline.policy import (
    DEFAULT_REDACT_FIELDS,
    REDACTED,
    AuditPolicy,
    Decision,
    Level,
    sample_fraction,
)
from audit_engine.settings import AuditSettings


def entry(**fields: Any) -> AuditEntry:
    fields.setdefault("action", "note.save")
    return AuditEntry(**fields)


ALL_OPS = list(Operation)


@pytest.mark.parametrize(
    ("level", "kept"),
    [
        (Level.ALL, set(Operation)),
        (Level.WRITES_ONLY, set(Operation) - {Operation.READ}),
        (Level.MUTATIONS_ONLY, {Operation.UPDATE, Operation.DELETE}),
        (Level.DELETES_ONLY, {Operation.DELETE}),
        (Level.FAILURES_ONLY, set()),
    ],
)
def test_level_keeps_exactly_its_operations_for_successes(
    level: Level, kept: set[Operation]
) -> None:
    policy = AuditPolicy(level=level)
    decided = {op: policy.decide(entry(operation=op)) for op in ALL_OPS}
    assert {op for op, d in decided.items() if d is Decision.KEEP} == kept
    assert {d for op, d in decided.items() if op not in kept} <= {Decision.FILTERED_BY_LEVEL}


def test_failures_only_keeps_every_failed_operation() -> None:
    policy = AuditPolicy(level=Level.FAILURES_ONLY)
    for op in ALL_OPS:
        assert policy.decide(entry(operation=op, outcome=Outcome.FAILURE)) is Decision.KEEP
        assert policy.decide(entry(operation=op)) is Decision.FILTERED_BY_LEVEL


def test_critical_entries_bypass_level_exclusions_and_sampling() -> None:
    policy = AuditPolicy(
        level=Level.DELETES_ONLY,
        exclude_actions=["patient.*"],
        exclude_resources=["record"],
        sample_rate=0.0,
        sample_reads=False,
    )
    critical = entry(action="patient.view", resource_type="record", operation="read", critical=True)
    assert policy.decide(critical) is Decision.KEEP
    assert policy.decide(critical.model_copy(update={"critical": False})) is (
        Decision.FILTERED_BY_LEVEL
    )


def test_level_is_checked_before_exclusions_and_exclusions_before_sampling() -> None:
    policy = AuditPolicy(
        level=Level.WRITES_ONLY, exclude_actions=["list"], sample_rate=0.0, sample_reads=False
    )
    assert policy.decide(entry(action="list", operation="read")) is Decision.FILTERED_BY_LEVEL
    assert policy.decide(entry(action="list", operation="create")) is Decision.EXCLUDED
    assert policy.decide(entry(action="create", operation="create")) is Decision.SAMPLED_OUT


@pytest.mark.parametrize(
    ("patterns", "action", "excluded"),
    [
        (["health_check", "metrics_read"], "health_check", True),
        (["health_check", "metrics_read"], "metrics_read", True),
        (["health_check", "metrics_read"], "health_check2", False),
        (["health_*"], "health_ping", True),
        (["health_*"], "xhealth_ping", False),
        (["metric?"], "metrics", True),
        (["metric?"], "metric", False),
        (["[ab]_job"], "a_job", True),
        (["[ab]_job"], "c_job", False),
        ([], "anything", False),
    ],
)
def test_exclude_actions_with_exact_names_and_globs(
    patterns: list[str], action: str, excluded: bool
) -> None:
    policy = AuditPolicy(exclude_actions=patterns)
    expected = Decision.EXCLUDED if excluded else Decision.KEEP
    assert policy.decide(entry(action=action)) is expected


def test_exclude_resources_matches_resource_type_and_ignores_missing_type() -> None:
    policy = AuditPolicy(exclude_resources=["metric", "health*"])
    assert policy.decide(entry(resource_type="metric")) is Decision.EXCLUDED
    assert policy.decide(entry(resource_type="healthz")) is Decision.EXCLUDED
    assert policy.decide(entry(resource_type="note")) is Decision.KEEP
    assert policy.decide(entry()) is Decision.KEEP


def test_sampling_is_deterministic_on_event_id() -> None:
    policy = AuditPolicy(sample_rate=0.5)
    reads = [entry(operation="read") for _ in range(400)]
    first = [policy.decide(e) for e in reads]
    again = [policy.decide(e.model_copy(update={"actor": "someone else"})) for e in reads]
    assert first == again
    kept = first.count(Decision.KEEP)
    assert 120 < kept < 280  # about half; exact for these ids, but ids are random per run
    assert set(first) == {Decision.KEEP, Decision.SAMPLED_OUT}


def test_sample_fraction_is_stable_and_in_range() -> None:
    assert sample_fraction("abc") == sample_fraction("abc")
    values = [sample_fraction(str(i)) for i in range(1000)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert 0.4 < sum(values) / len(values) < 0.6


def test_sample_reads_true_samples_reads_only() -> None:
    policy = AuditPolicy(sample_rate=0.0, sample_reads=True)
    assert policy.decide(entry(operation="read")) is Decision.SAMPLED_OUT
    for op in set(Operation) - {Operation.READ}:
        assert policy.decide(entry(operation=op)) is Decision.KEEP


def test_sample_reads_false_samples_every_non_critical_entry() -> None:
    policy = AuditPolicy(sample_rate=0.0, sample_reads=False)
    for op in Operation:
        assert policy.decide(entry(operation=op)) is Decision.SAMPLED_OUT
    assert policy.decide(entry(operation="delete", critical=True)) is Decision.KEEP


def test_sample_rate_one_keeps_everything() -> None:
    policy = AuditPolicy(sample_rate=1.0, sample_reads=False)
    assert all(policy.decide(entry(operation="read")) is Decision.KEEP for _ in range(50))


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_sample_rate_out_of_range_is_rejected(rate: float) -> None:
    with pytest.raises(ValueError, match=r"sample_rate must be between 0.0 and 1.0"):
        AuditPolicy(sample_rate=rate)


def test_bad_level_is_rejected() -> None:
    with pytest.raises(ValueError, match="'sometimes' is not a valid Level"):
        AuditPolicy(level="sometimes")


def test_redaction_masks_keys_at_any_depth_and_case() -> None:
    policy = AuditPolicy()
    original = entry(
        details={
            "user": "alice",
            "Password": "hunter2",
            "request": {"headers": {"Authorization": "Bearer x", "Accept": "json"}},
            "items": [{"api-key": "k1", "n": 1}, {"n": 2}],
        }
    )
    redacted = policy.redact(original)
    assert redacted.details == {
        "user": "alice",
        "Password": REDACTED,
        "request": {"headers": {"Authorization": REDACTED, "Accept": "json"}},
        "items": [{"api-key": REDACTED, "n": 1}, {"n": 2}],
    }
    assert "hunter2" not in redacted.details_json
    assert "Bearer" not in redacted.details_json
    assert redacted.event_id == original.event_id
    assert original.details["Password"] == "hunter2"  # the caller's entry is untouched


@dataclasses.dataclass
class _Credentials:
    user: str
    password: str


class _Request(BaseModel):
    path: str
    authorization: str


def test_redaction_masks_keys_inside_converted_details() -> None:
    # Dataclasses, models, tuples and sets become JSON before the policy sees the entry.
    original = entry(
        details={
            "login": _Credentials("alice", "hunter2"),
            "request": _Request(path="/notes", authorization="Bearer x"),
            "history": ({"token": "t-1"},),
        }
    )

    redacted = AuditPolicy().redact(original)

    assert redacted.details == {
        "login": {"user": "alice", "password": REDACTED},
        "request": {"path": "/notes", "authorization": REDACTED},
        "history": [{"token": REDACTED}],
    }
    assert "hunter2" not in redacted.details_json
    assert redacted.is_intact()


def test_redaction_returns_the_same_entry_when_nothing_matches() -> None:
    policy = AuditPolicy()
    plain = entry(details={"title": "plan", "nested": [{"x": 1}]})
    assert policy.redact(plain) is plain
    empty = entry()
    assert policy.redact(empty) is empty


def test_redaction_with_custom_fields_and_with_none() -> None:
    custom = AuditPolicy(redact_fields=["diagnosis"])
    e = entry(details={"diagnosis": "flu", "password": "kept"})
    assert custom.redact(e).details == {"diagnosis": REDACTED, "password": "kept"}
    assert AuditPolicy(redact_fields=[]).redact(e) is e


def test_default_redact_fields_cover_common_secrets() -> None:
    for key in ("password", "secret", "token", "api_key", "authorization", "cookie"):
        assert key in DEFAULT_REDACT_FIELDS


def test_from_settings_copies_every_policy_setting() -> None:
    settings = AuditSettings(
        level="mutations_only",
        exclude_actions="health_check, metrics_*",
        exclude_resources=["metric"],
        sample_rate=0.25,
        sample_reads=False,
        redact_fields="ssn",
    )
    policy = AuditPolicy.from_settings(settings)
    assert policy.level is Level.MUTATIONS_ONLY
    assert policy.exclude_actions == ("health_check", "metrics_*")
    assert policy.exclude_resources == ("metric",)
    assert policy.sample_rate == 0.25
    assert policy.sample_reads is False
    assert policy.redact_fields == ("ssn",)
    assert "mutations_only" in repr(policy)


def test_writes_only_on_a_90_10_workload_keeps_only_the_writes() -> None:
    policy = AuditPolicy(level=Level.WRITES_ONLY)
    workload = [entry(operation="read") for _ in range(900)]
    workload += [entry(operation="create") for _ in range(100)]
    kept = sum(policy.decide(e) is Decision.KEEP for e in workload)
    assert kept == 100


@pytest.mark.parametrize("key", ["api-key", "API_KEY", "Api-Key", "apikey"])
def test_a_lone_secret_key_is_found_in_any_spelling(key: str) -> None:
    e = entry(details={"note": "x", key: "k-123"})
    assert AuditPolicy().redact(e).details == {"note": "x", key: REDACTED}


def test_a_secret_only_inside_a_list_of_objects_is_found() -> None:
    e = entry(details={"items": [{"n": 1}, {"token": "t"}]})
    assert AuditPolicy().redact(e).details == {"items": [{"n": 1}, {"token": REDACTED}]}
