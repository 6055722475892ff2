"""What gets audited: a pure decision over an entry, made from the operator's settings.

Order (see docs/configuration.md): critical entries bypass level, exclusions and sampling;
then level → exclusions → sampling. Redaction is applied to every entry that is kept. Nothing
here touches the queue, the database or a clock, so every rule is tested on its own.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

from audit_engine.models import AuditEntry, Operation, Outcome
from audit_engine.settings import DEFAULT_REDACT_FIELDS, AuditSettings, Level

REDACTED = "[REDACTED]"


class Decision(StrEnum):
    """The outcome of :meth:`AuditPolicy.decide`."""

    KEEP = "keep"
    FILTERED_BY_LEVEL = "filtered_by_level"
    EXCLUDED = "excluded"
    SAMPLED_OUT = "sampled_out"


_MUTATIONS = frozenset({Operation.UPDATE, Operation.DELETE})


_NORMALISED: dict[str, str] = {}


def _normalise_key(key: str) -> str:
    # Details keys repeat from one entry to the next: remember the few hundred seen (bounded).
    normalised = _NORMALISED.get(key)
    if normalised is None:
        normalised = key.lower().replace("-", "_")
        if len(_NORMALISED) < 4096:
            _NORMALISED[key] = normalised
    return normalised


class _NameMatcher:
    """Exact names in a set, shell-style globs (``health_*``) in one compiled regex."""

    def __init__(self, patterns: Iterable[str]) -> None:
        exact: set[str] = set()
        globs: list[str] = []
        for pattern in patterns:
            if any(c in pattern for c in "*?["):
                globs.append(pattern)
            else:
                exact.add(pattern)
        self._exact = frozenset(exact)
        self._regex = re.compile("|".join(fnmatch.translate(g) for g in globs)) if globs else None

    def __bool__(self) -> bool:
        return bool(self._exact) or self._regex is not None

    def matches(self, name: str | None) -> bool:
        if name is None:
            return False
        if name in self._exact:
            return True
        return self._regex is not None and self._regex.match(name) is not None


def sample_fraction(event_id: str) -> float:
    """A stable number in [0, 1) derived from ``event_id``: same id, same sampling decision."""
    digest = hashlib.blake2b(event_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest) / 2**64


class AuditPolicy:
    """The operator's audit policy. Build it with :meth:`from_settings`, or directly in tests."""

    __slots__ = (
        "_actions",
        "_excludes",
        "_redact",
        "_resources",
        "exclude_actions",
        "exclude_resources",
        "keeps_everything",
        "level",
        "redact_fields",
        "sample_rate",
        "sample_reads",
    )

    def __init__(
        self,
        *,
        level: Level | str = Level.ALL,
        exclude_actions: Iterable[str] = (),
        exclude_resources: Iterable[str] = (),
        sample_rate: float = 1.0,
        sample_reads: bool = True,
        redact_fields: Iterable[str] = DEFAULT_REDACT_FIELDS,
    ) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be between 0.0 and 1.0 (got {sample_rate})")
        self.level = Level(level)
        self.exclude_actions = tuple(exclude_actions)
        self.exclude_resources = tuple(exclude_resources)
        self.sample_rate = sample_rate
        self.sample_reads = sample_reads
        self.redact_fields = tuple(redact_fields)
        self._actions = _NameMatcher(self.exclude_actions)
        self._resources = _NameMatcher(self.exclude_resources)
        self._excludes = bool(self.exclude_actions or self.exclude_resources)
        self._redact = frozenset(_normalise_key(k) for k in self.redact_fields)
        # The default policy, checked once here so record() can skip the decision altogether.
        self.keeps_everything = (
            self.level is Level.ALL
            and not self.exclude_actions
            and not self.exclude_resources
            and sample_rate >= 1.0
        )

    def __repr__(self) -> str:
        return (
            f"AuditPolicy(level={self.level.value!r}, exclude_actions={self.exclude_actions!r}, "
            f"exclude_resources={self.exclude_resources!r}, sample_rate={self.sample_rate!r}, "
            f"sample_reads={self.sample_reads!r}, redact_fields={self.redact_fields!r})"
        )

    @classmethod
    def from_settings(cls, settings: AuditSettings) -> AuditPolicy:
        """The policy described by ``settings``."""
        return cls(
            level=settings.level,
            exclude_actions=settings.exclude_actions,
            exclude_resources=settings.exclude_resources,
            sample_rate=settings.sample_rate,
            sample_reads=settings.sample_reads,
            redact_fields=settings.redact_fields,
        )

    # -- the decision --------------------------------------------------------------------------

    def decide(self, entry: AuditEntry) -> Decision:
        """Whether ``entry`` is kept, and if not, which rule filtered it out."""
        return self.decide_values(
            entry.operation,
            entry.outcome,
            entry.action,
            entry.resource_type,
            entry.event_id,
            entry.critical,
        )

    def decide_values(
        self,
        operation: str,
        outcome: str,
        action: str,
        resource_type: str | None,
        event_id: str,
        critical: bool | int,
    ) -> Decision:
        """:meth:`decide` on the values themselves (operation and outcome as their text)."""
        if critical:
            return Decision.KEEP
        if not self.level_allows(operation, outcome):
            return Decision.FILTERED_BY_LEVEL
        if self._excludes and self.is_excluded(action, resource_type):
            return Decision.EXCLUDED
        if self.sample_rate < 1.0 and not self.sampled_in(event_id, operation):
            return Decision.SAMPLED_OUT
        return Decision.KEEP

    def level_allows(self, operation: str, outcome: str) -> bool:
        # Operation and Outcome are StrEnums: a member equals its text, so both forms work.
        level = self.level
        if level is Level.ALL:
            return True
        if level is Level.WRITES_ONLY:
            return operation != Operation.READ
        if level is Level.MUTATIONS_ONLY:
            return operation in _MUTATIONS
        if level is Level.DELETES_ONLY:
            return operation == Operation.DELETE
        return outcome == Outcome.FAILURE

    def is_excluded(self, action: str, resource_type: str | None) -> bool:
        return self._actions.matches(action) or self._resources.matches(resource_type)

    def sampled_in(self, event_id: str, operation: str) -> bool:
        rate = self.sample_rate
        if rate >= 1.0:
            return True
        if self.sample_reads and operation != Operation.READ:
            return True
        return rate > 0.0 and sample_fraction(event_id) < rate

    # -- redaction -----------------------------------------------------------------------------

    def redact(self, entry: AuditEntry) -> AuditEntry:
        """``entry`` with every configured key in ``details`` (at any depth) masked.

        Returns the same object when there is nothing to mask, so the common case costs one walk.
        """
        redacted = self.redact_details(entry.details)
        return entry if redacted is entry.details else entry.with_details(redacted)

    def redact_details(self, details: dict[str, Any]) -> dict[str, Any]:
        """``details`` with every configured key masked; the same object when nothing matches."""
        keys = self._redact
        if not keys or not details or not _needs_redaction(details, keys):
            return details
        redacted: dict[str, Any] = _redacted_copy(details, keys)
        return redacted


def _needs_redaction(value: Any, keys: frozenset[str]) -> bool:
    # A read-only walk first: most details hold no secret, and building copies costs more. It
    # runs in every record(): exact types are tested before the (slower) ABC checks, and
    # scalar values, which hold nothing below them, are passed over at once.
    if type(value) is dict or isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str) and (_NORMALISED.get(key) or _normalise_key(key)) in keys:
                return True
            kind = type(item)
            if kind is str or kind is int or kind is bool or kind is float or item is None:
                continue
            if isinstance(item, Mapping | list) and _needs_redaction(item, keys):
                return True
        return False
    if isinstance(value, list):
        return any(
            isinstance(item, Mapping | list) and _needs_redaction(item, keys) for item in value
        )
    return False


def _redacted_copy(value: Any, keys: frozenset[str]) -> Any:
    if isinstance(value, Mapping):
        return {
            key: REDACTED
            if isinstance(key, str) and _normalise_key(key) in keys
            else _redacted_copy(item, keys)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_redacted_copy(item, keys) for item in value]
    return value
