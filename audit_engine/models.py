"""The engine's data: audit entries, their enums, and the statistics a service reports.

:class:`AuditEntry` is the single source of truth for what a valid entry is. Everything the
writer thread later does with an entry (serialise it, bind it to SQLite) is checked here, in the
caller's thread, so a bad entry fails loudly where it was made and never reaches the writer.
"""

from __future__ import annotations

import itertools
import json
import operator
import os
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Self
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from audit_engine import forks
from audit_engine.details import MAX_DETAILS_DEPTH, plain_json, to_json_details

__all__ = [
    "DEFAULT_MAX_DETAILS_BYTES",
    "MAX_ACTION_LENGTH",
    "MAX_DETAILS_DEPTH",
    "MAX_IDENTIFIER_LENGTH",
    "AuditEntry",
    "AuditStats",
    "Operation",
    "Outcome",
    "SignedCheckpoint",
    "dump_details",
    "new_event_id",
    "utcnow",
]

DEFAULT_MAX_DETAILS_BYTES = 65536
MAX_ACTION_LENGTH = 200
MAX_IDENTIFIER_LENGTH = 1024


class Operation(StrEnum):
    """What kind of operation the audited action was."""

    CREATE = "create"
    READ = "read"
    UPDATE = "update"
    DELETE = "delete"
    EXECUTE = "execute"


class Outcome(StrEnum):
    """Whether the audited action succeeded."""

    SUCCESS = "success"
    FAILURE = "failure"


class _EventIdGenerator:
    """UUIDv7 ids (RFC 9562): 48-bit Unix milliseconds, a 42-bit counter, a 32-bit process tag.

    The counter is RFC 9562's "fixed bit-length dedicated counter", started at a random value:
    ids made by one thread sort in the order they were made, which keeps the UNIQUE index on
    ``event_id`` append-mostly (random ids cost SQLite ~7x). It is an ``itertools.count`` —
    atomic under the GIL — so making an id takes no lock: this runs in every ``record()``.
    Across processes, ids differ by the random counter start and tag, both drawn again in a
    forked child.
    """

    def __init__(self) -> None:
        self._reseed()
        forks.register(self)

    def fork_gates(self) -> tuple[()]:
        return ()  # no lock to wait for: see the class docstring

    def after_fork_in_child(self) -> None:
        self._reseed()

    def _reseed(self) -> None:
        seed = int.from_bytes(os.urandom(9))
        # Started below 2**40, the counter has 3 * 2**40 ids to go before it could wrap.
        self._counter = itertools.count(seed >> 32)
        self._tag = f"{seed & 0xFFFF_FFFF:08x}"
        # (millisecond, the id's text for it, the timestamp's text to it): one tuple swapped in
        # one assignment, so threads never pair a millisecond with another one's text.
        self._ms_cache: tuple[int, str, str] = (-1, "", "")
        self._high_cache: tuple[int, str] = (-1, "")
        self._second_cache: tuple[int, str] = (-1, "")

    def __call__(self) -> str:
        return self.stamp()[0]

    def stamp(self) -> tuple[str, str]:
        """A new event id and the stored timestamp text of now, from one reading of the clock.

        ``record()`` needs both for every entry: one call and one clock reading, and the texts
        of the millisecond (the id's prefix, the timestamp's first 23 characters) made once per
        millisecond.
        """
        micros = time.time_ns() // 1000
        now_ms = micros // 1000
        last_ms, prefix, to_ms = self._ms_cache
        if now_ms != last_ms:
            to_ms = self._to_millisecond(now_ms)
            if now_ms > last_ms:
                h = f"{now_ms & 0xFFFF_FFFF_FFFF:012x}"
                prefix = f"{h[:8]}-{h[8:]}-7"
                self._ms_cache = (now_ms, prefix, to_ms)
            # A clock stepping back keeps the last millisecond in the id (the counter still
            # orders the ids); the timestamp says what the clock says.
        n = next(self._counter) & 0x3FF_FFFF_FFFF
        # The counter's upper 26 bits change once per 65 536 ids: their text is cached too.
        high = n >> 16
        last_high, middle = self._high_cache
        if high != last_high:
            middle = f"{high >> 14:03x}-{0x8000 | high & 0x3FFF:04x}-"
            self._high_cache = (high, middle)
        return f"{prefix}{middle}{n & 0xFFFF:04x}{self._tag}", f"{to_ms}{micros % 1000:03d}Z"

    def _to_millisecond(self, ms: int) -> str:
        # The stored timestamp form up to its milliseconds; strftime once per second.
        second, milli = divmod(ms, 1000)
        cached_second, text = self._second_cache
        if second != cached_second:
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second_cache = (second, text)
        return f"{text}.{milli:03d}"


new_event_id = _EventIdGenerator()
"""Return a new time-ordered event id (a UUIDv7 string)."""


def format_timestamp(value: datetime) -> str:
    """The stored form of a timestamp: fixed-width ISO-8601 UTC, so text order is time order."""
    # isoformat() zero-pads the year (strftime's %Y does not below 1000) and always prints
    # microseconds with timespec set; every value is UTC, so "+00:00" becomes "Z".
    return value.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def utcnow() -> datetime:
    """The current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


# C0 and C1 controls and DEL; the line and paragraph separators (U+2028, U+2029), which break
# lines in editors and JSON-in-JS; and the bidirectional overrides and isolates (U+202A-U+202E,
# U+2066-U+2069), which make a terminal show text in another order than it is stored.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _check_text(field: str, value: str) -> None:
    # Identifiers with control characters forge lines in logs and terminals, and the hash
    # chain's canonical form relies on text fields never holding U+0000 or U+001F. (A lone
    # surrogate, which UTF-8 cannot store, pydantic refuses in every str field itself.)
    if not (value.isascii() and value.isprintable()) and _CONTROL.search(value):
        raise ValueError(f"{field} must not contain control characters")


ID_FIELDS_TAKING_NUMBERS = ("actor", "resource_id", "correlation_id")


def ids_as_text(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with an int (not a bool) or a UUID in an id field as its text (``"42"``).

    The ids an application has at hand. Done on the input, before pydantic's ``str`` check
    (a validator on the field itself would switch off pydantic's refusal of lone surrogates).
    """
    converted = None
    for name in ID_FIELDS_TAKING_NUMBERS:
        value = data.get(name)
        if type(value) is int or isinstance(value, UUID):
            if converted is None:
                converted = dict(data)
            converted[name] = str(value)
    return data if converted is None else converted


class _Seal:
    """The field values an entry had when validation passed (see ``AuditEntry.is_intact``).

    Not part of an entry's value: equal to every other seal, so entries compare by their fields.
    """

    __slots__ = ("values",)

    def __init__(self, values: tuple[Any, ...]) -> None:
        self.values = values

    def __eq__(self, other: object) -> bool:
        return other is None or isinstance(other, _Seal)

    __hash__ = None  # type: ignore[assignment]


def dump_details(details: dict[str, Any]) -> str:
    """Serialise ``details`` to the compact, key-sorted JSON text that is stored."""
    return json.dumps(
        details, separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False
    )


_NO_PRIVATE: dict[str, Any] = {}


class AuditEntry(BaseModel):
    """One audit record: who did what to which resource, when, and how it ended.

    Frozen: once validated, an entry cannot change on its way to the database. An entry made
    without validation (``model_copy(update=...)``, ``model_construct``, ``object.__setattr__``)
    is validated again when it is recorded (:meth:`is_intact` tells them apart).
    """

    # Errors name the field and the rule, never the value given: it may be a secret the policy
    # would have redacted (redaction runs on valid entries only), and apps log these errors.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    event_id: str = Field(
        default_factory=new_event_id, min_length=1, max_length=MAX_IDENTIFIER_LENGTH
    )
    timestamp: datetime = Field(default_factory=utcnow)
    actor: str | None = Field(default=None, max_length=MAX_IDENTIFIER_LENGTH)
    action: str = Field(min_length=1, max_length=MAX_ACTION_LENGTH)
    operation: Operation = Operation.EXECUTE
    outcome: Outcome = Outcome.SUCCESS
    resource_type: str | None = Field(default=None, max_length=MAX_IDENTIFIER_LENGTH)
    resource_id: str | None = Field(default=None, max_length=MAX_IDENTIFIER_LENGTH)
    correlation_id: str | None = Field(default=None, max_length=MAX_IDENTIFIER_LENGTH)
    details: dict[str, JsonValue] = Field(default_factory=dict)
    critical: bool = False

    _details_json: str | None = PrivateAttr(default=None)
    _seal: _Seal | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _convert_input(cls, data: Any) -> Any:
        # Details before field validation, so the error names the key (details.when) and a
        # structure nested 5 000 deep meets the depth limit instead of pydantic's recursion.
        if isinstance(data, dict):
            data = ids_as_text(data)
            if "details" in data:
                details = data["details"]
                # Plain JSON (the common case) needs no conversion: only a check that it is.
                if not (type(details) is dict and plain_json(details, 0)):
                    data = {**data, "details": to_json_details(details)}
        return data

    @field_validator("timestamp")
    @classmethod
    def _timestamp_is_aware_utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("timestamp must be timezone-aware (got a naive datetime); use UTC")
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValueError("timestamp is out of range once converted to UTC") from None

    @field_validator("action")
    @classmethod
    def _action_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("action must not be blank")
        return value

    @model_validator(mode="after")
    def _check_storable(self, info: ValidationInfo) -> AuditEntry:
        for name in (
            "event_id",
            "actor",
            "action",
            "resource_type",
            "resource_id",
            "correlation_id",
        ):
            value = getattr(self, name)
            if value is not None:
                _check_text(name, value)
        limit = DEFAULT_MAX_DETAILS_BYTES
        if isinstance(info.context, dict):
            limit = info.context.get("max_details_bytes", limit)
        try:
            text = dump_details(self.details) if self.details else "{}"
            size = len(text.encode("utf-8"))
        except ValueError:
            # Plain details skipped the conversion, which would have named the culprit (a lone
            # surrogate, an int too long for text): run it now to raise naming the key.
            to_json_details(self.details)
            raise  # pragma: no cover - to_json_details raised

        if "\\u0000" in text:
            # JSON's escape of U+0000 (or a backslash before "u0000"): the walk names a real one.
            to_json_details(self.details)
        if size > limit:
            raise ValueError(
                f"details is {size} bytes serialised, more than max_details_bytes={limit}"
            )
        self._details_json = text
        self._seal = _Seal(tuple(self.__dict__.values()))
        return self

    def is_intact(self) -> bool:
        """Whether every field still holds what validation passed (the entry is storable).

        False for an entry made by ``model_copy(update=...)`` or ``model_construct``, or changed
        through ``object.__setattr__``. (``details`` changed in place do not count: what is stored
        is the text made at validation, :attr:`details_json`.)
        """
        # Through __pydantic_private__: reading self._seal goes through pydantic's __getattr__
        # (~1.2 us), and this runs for every AuditEntry recorded.
        seal = (self.__pydantic_private__ or _NO_PRIVATE).get("_seal")
        if seal is None:
            return False
        values = seal.values
        current = self.__dict__
        return len(values) == len(current) and all(map(operator.is_, values, current.values()))

    @property
    def details_json(self) -> str:
        """``details`` as the JSON text that is stored (computed once, at validation)."""
        text = (self.__pydantic_private__ or _NO_PRIVATE).get("_details_json")
        if text is None:  # not made by validation (model_construct): serialise what is there
            text = dump_details(self.details) if self.details else "{}"
        return text

    def details_size(self) -> int:
        """Size of the serialised ``details`` in bytes."""
        return len(self.details_json.encode("utf-8"))

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """pydantic's copy, not validated: ``record()`` validates it again if ``update`` is given.

        ``details_json`` follows ``details`` when they are JSON values.
        """
        copy = super().model_copy(update=update, deep=deep)
        if update and "details" in update:
            try:
                copy._details_json = dump_details(copy.details) if copy.details else "{}"
            except (TypeError, ValueError):  # not JSON values yet: record() converts them
                copy._details_json = None
        return copy

    def with_details(self, details: Mapping[str, Any]) -> AuditEntry:
        """A copy with other ``details`` (e.g. a redacted copy of these), checked as details are."""
        converted = to_json_details(details)
        intact = self.is_intact()
        copy = super().model_copy(update={"details": converted})
        copy._details_json = dump_details(converted) if converted else "{}"
        # Only the details changed, and they were just checked: still intact if this one was.
        copy._seal = _Seal(tuple(copy.__dict__.values())) if intact else None
        return copy


class AuditStats(BaseModel):
    """A snapshot of a service's counters; see ``AuditService.stats()``."""

    model_config = ConfigDict(frozen=True)

    accepted: int = Field(description="entries record() accepted (queued or written synchronously)")
    written: int = Field(description="entries committed to the database")
    dropped: int = Field(
        description="entries discarded because the queue was full (on_full='drop')"
    )
    batches: int = Field(description="write transactions the writer thread committed")
    queue_depth: int = Field(description="entries waiting in the queue now")
    max_queue_depth: int = Field(description="the most entries that ever waited in the queue")
    retries: int = Field(description="batch attempts retried because the database was busy")
    dead_lettered: int = Field(description="entries appended to the dead-letter file")
    writer_alive: bool = Field(description="whether the writer thread is running")
    last_error: str | None = Field(description="the last write error, if any")
    filtered_by_level: int = Field(description="entries the level setting left out")
    excluded: int = Field(description="entries left out by exclude_actions / exclude_resources")
    sampled_out: int = Field(description="entries left out by sampling")
    deduplicated: int = Field(description="repeats suppressed within a scope()")
    longest_batch_s: float = Field(
        description="the longest a committed batch transaction took, in seconds (lock waits "
        "included): the writer's worst stall"
    )
    cleanup_runs: int = Field(description="background retention runs completed")
    rows_purged: int = Field(description="rows the background retention runs deleted")
    logged_only: int = Field(
        description="entries neither committed nor dead-lettered, only logged at CRITICAL in "
        "the dead-letter line format (the dead-letter file could not be written)"
    )
    warnings: list[str] = Field(
        description="conditions to fix, found when the service opened its trail (such as a "
        "database other users can read)"
    )
    checkpoints: int = Field(
        default=0, description="signed checkpoints made (with signing_key_file set)"
    )
    checkpoint_failures: int = Field(
        default=0,
        description="checkpoints that could not be made, or not appended to checkpoint_file or "
        "kept in the trail (the entries are never affected; see last_error and the log)",
    )
    checkpoint_callback_failures: int = Field(
        default=0, description="times the on_checkpoint callback raised (logged, then ignored)"
    )
    skipped_disabled: int = Field(
        default=0, description="entries record() skipped inside a disabled() block"
    )


class SignedCheckpoint(BaseModel):
    """A checkpoint the writer signed: what ``on_checkpoint`` receives and each line of
    ``checkpoint_file`` holds. Only ``note`` (the signed C2SP text) is trusted on verify; the
    other fields repeat what it says, for convenience (docs/checkpoints.md)."""

    model_config = ConfigDict(frozen=True)

    trail_id: str = Field(description="the trail's random identity (origin audit-engine/<id>)")
    size: int = Field(description="the Merkle tree's size: rows so far, purged ones included")
    head_id: int = Field(description="the id of the newest row the checkpoint covers")
    head_hash: str = Field(description="that row's stored hash (hex)")
    root: str = Field(description="the Merkle tree head (hex)")
    time: str = Field(description="when it was signed (UTC, ISO-8601)")
    note: str = Field(description="the signed note (C2SP signed-note checkpoint, Ed25519)")
