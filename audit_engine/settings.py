"""AuditSettings: every knob of the engine, parsed and validated in one place.

Each field reads the environment variable ``AUDIT_TRAIL_<FIELD NAME IN UPPER CASE>``
(``async_writes`` reads ``AUDIT_TRAIL_ASYNC``). Keyword arguments win over the environment.
A bad value raises :class:`~audit_engine.errors.SettingsError` naming the setting and where it
came from: its variable, or the keyword argument.
"""

from __future__ import annotations

import hashlib
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from audit_engine.errors import SettingsError

ENV_PREFIX = "AUDIT_TRAIL_"

DEFAULT_REDACT_FIELDS = (
    "password",
    "passwd",
    "secret",
    "client_secret",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "api_key",
    "apikey",
    "authorization",
    "cookie",
    "set_cookie",
    "private_key",
    "ssn",
    "credit_card",
    "card_number",
    "cvv",
)


# A database given as a URL with one of these schemes selects the PostgreSQL backend.
URL_SCHEMES = ("postgresql", "postgres")
DEADLETTER_SUFFIX = ".deadletter.jsonl"


def is_database_url(database: object) -> bool:
    """Whether ``database`` is a PostgreSQL URL (else it is a SQLite file path)."""
    return isinstance(database, str) and database.split("://", 1)[0].lower() in URL_SCHEMES


def mask_url(url: str) -> str:
    """``url`` without its password (``postgresql://user:***@host/db``, ``?password=***``), for
    messages and logs; the rest as it was written."""
    try:
        parts = urlsplit(url)
        masked = url
        if parts.password is not None:
            host = parts.netloc.rsplit("@", 1)[1]
            masked = masked.replace(parts.netloc, f"{parts.username or ''}:***@{host}", 1)
        if "password=" in parts.query.lower():
            query = [
                (key, "***" if key.lower() == "password" else value)
                for key, value in parse_qsl(parts.query, keep_blank_values=True)
            ]
            masked = masked.replace(parts.query, urlencode(query, safe="*"), 1)
    except ValueError:  # a URL too broken to parse: show none of it
        return "postgresql://***"
    return masked


def database_url(value: str) -> str | None:
    """``value`` as the engine uses it when it is a URL: a PostgreSQL URL with its scheme in
    lower case (libpq knows no other spelling); None when it is not a URL (a file path).

    Raises ``ValueError`` for another ``scheme://`` or a URL that does not parse; the message
    never holds the password.
    """
    if "://" not in value:
        return None
    scheme, rest = value.split("://", 1)
    if scheme.lower() not in URL_SCHEMES:
        raise ValueError(
            f"must be a SQLite file path or a postgresql:// URL (got a {scheme}:// URL)"
        )
    url = f"{scheme.lower()}://{rest}"
    try:
        urlsplit(url).port  # noqa: B018 - parsing is the check
    except ValueError as exc:
        raise ValueError(f"is not a valid PostgreSQL URL: {exc}") from None
    return url


def resolve_database(database: str | os.PathLike[str]) -> Path | str:
    """A database as the engine uses it: a checked PostgreSQL URL (see :func:`database_url`),
    else a file path. Raises ``ValueError`` for another ``scheme://`` or a broken URL."""
    text = os.fspath(database)
    url = database_url(text) if isinstance(text, str) else None
    return Path(text) if url is None else url


def describe_database(database: Path | str) -> str:
    """The database as messages show it: a path, or a URL without its password."""
    return mask_url(database) if isinstance(database, str) else str(database)


def data_dir() -> Path:
    """Where the engine keeps local files of its own: ``$XDG_DATA_HOME/audit-engine``, else
    ``~/.local/share/audit-engine``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return Path(base) / "audit-engine"


def _without_password(url: str) -> str:
    """``url`` with no password at all (the trail it names does not change with the password)."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    user = f"{parts.username}@" if parts.username else ""
    query = [
        (k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() != "password"
    ]
    return urlunsplit(parts._replace(netloc=f"{user}{host}", query=urlencode(query)))


def default_deadletter_path(database: Path | str) -> Path:
    """The dead-letter file of a trail when none is set: beside a SQLite file
    (``<database>.deadletter.jsonl``); for a URL, in :func:`data_dir`, named after the server
    and database, and a digest of the whole URL without its password
    (``<host>-<port>-<database>-<digest>.deadletter.jsonl``): two trails of one database (two
    schemas by ``options=-csearch_path=...``, two roles) never share a file, whose entries a
    replay would put into the wrong one."""
    if not isinstance(database, str):
        return Path(f"{os.fspath(database)}{DEADLETTER_SUFFIX}")
    parts = urlsplit(database)
    try:
        port = parts.port or 5432
    except ValueError:
        port = 5432
    name = unquote(parts.path.lstrip("/")) or parts.username or "postgres"
    identity = hashlib.sha256(_without_password(database).encode("utf-8")).hexdigest()[:12]
    label = f"{parts.hostname or 'localhost'}-{port}-{name}-{identity}"
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in label)
    return data_dir() / f"{safe}{DEADLETTER_SUFFIX}"


class Level(StrEnum):
    """Which operations are audited."""

    ALL = "all"
    WRITES_ONLY = "writes_only"  # everything except reads
    MUTATIONS_ONLY = "mutations_only"  # updates and deletes
    DELETES_ONLY = "deletes_only"
    FAILURES_ONLY = "failures_only"  # any operation whose outcome is failure


# A list in code; a comma-separated string in the environment (not JSON).
NameList = Annotated[list[str], NoDecode]
OnFull = Literal["block", "drop", "sync"]
Synchronous = Literal["NORMAL", "FULL"]


def env_var(field: str) -> str:
    """The environment variable that sets ``field``."""
    if field == "async_writes":
        return f"{ENV_PREFIX}ASYNC"
    return f"{ENV_PREFIX}{field.upper()}"


class AuditSettings(BaseSettings):
    """Configuration of an :class:`~audit_engine.AuditService`; every field has a default."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        case_sensitive=False,
        frozen=True,
        extra="forbid",
        populate_by_name=True,
        validate_default=True,
    )

    database: Path | str = Field(
        default=Path("audit.db"),
        description="Where the audit trail is written: a SQLite file, or a postgresql:// URL "
        "(the PostgreSQL backend: pip install 'audit-engine[postgres]').",
    )
    deadletter_path: Path | None = Field(
        default=None,
        description="File for entries that could not be written. Default: beside a SQLite "
        "file (<database>.deadletter.jsonl); for a URL, ~/.local/share/audit-engine/"
        "<host>-<port>-<database>-<digest>.deadletter.jsonl ($XDG_DATA_HOME if set).",
    )
    enabled: bool = Field(
        default=True, description="False: record() does nothing and no database is opened."
    )
    async_writes: bool = Field(
        default=True,
        # Only AUDIT_TRAIL_ASYNC in the environment; populate_by_name keeps async_writes= in code.
        validation_alias=f"{ENV_PREFIX}ASYNC",
        description="True: a writer thread commits in batches; "
        "False: INSERT + COMMIT per record().",
    )
    queue_maxsize: int = Field(
        default=10000, gt=0, description="Most entries that may wait for the writer thread."
    )
    buffer_max_size: int = Field(
        default=500, gt=0, description="Most entries per write transaction."
    )
    buffer_flush_interval: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="Seconds: the longest an accepted entry waits before its batch commits.",
    )
    on_full: OnFull = Field(
        default="block",
        description="When the queue is full: block (then raise AuditQueueFull), drop (counted; "
        "a critical entry blocks instead), or sync (write in the caller's thread).",
    )
    block_timeout: float = Field(
        default=10.0, ge=0, description="Seconds record() waits for room when on_full=block."
    )
    synchronous: Synchronous = Field(
        default="NORMAL",
        description="SQLite PRAGMA synchronous: NORMAL (fast, WAL-safe) "
        "or FULL (survives power loss).",
    )
    busy_timeout: float = Field(
        default=5.0,
        ge=0,
        description="Seconds one SQLite call waits for another connection's lock; on "
        "PostgreSQL, how long a synchronous write retries a server it cannot reach.",
    )
    max_details_bytes: int = Field(
        default=65536, gt=0, description="Largest serialised `details` accepted, in bytes."
    )

    # -- policy: what is audited (see audit_engine.pipeline.policy) --
    level: Level = Field(
        default=Level.WRITES_ONLY,
        description="all, writes_only (all but reads), mutations_only (update, delete), "
        "deletes_only, or failures_only.",
    )
    exclude_actions: NameList = Field(
        default_factory=list, description="Actions never audited; shell-style globs allowed."
    )
    exclude_resources: NameList = Field(
        default_factory=list, description="Resource types never audited; globs allowed."
    )
    sample_rate: float = Field(
        default=1.0, ge=0.0, le=1.0, description="Share of sampled entries kept (0.0-1.0)."
    )
    sample_reads: bool = Field(
        default=True,
        description="True: sampling applies to reads only; False: to every non-critical entry.",
    )
    redact_fields: NameList = Field(
        default_factory=lambda: list(DEFAULT_REDACT_FIELDS),
        description="Keys in details (any depth, any case) whose values become [REDACTED].",
    )
    critical_sync: bool = Field(
        default=True, description="record() of a critical entry returns once it is committed."
    )

    # -- retention (see audit_engine.storage.retention) --
    retention_days: int = Field(
        default=90, gt=0, description="Entries older than this many days are purged."
    )
    cleanup_enabled: bool = Field(
        default=True, description="Run the background cleanup thread that purges old entries."
    )
    cleanup_batch_size: int = Field(
        default=10000, gt=0, description="Rows deleted per purge transaction."
    )
    cleanup_interval: float = Field(
        default=3600.0, gt=0, description="Seconds between two background cleanup runs."
    )

    # -- tamper evidence against whoever can write the database (docs/integrity.md) --
    chain_key_file: Path | None = Field(
        default=None,
        description="File holding the chain key(s) (audit-engine keygen): each row's link "
        "becomes an HMAC-SHA256. The first key writes; the others only verify older rows.",
    )
    signing_key_file: Path | None = Field(
        default=None,
        description="Ed25519 private key (PEM, audit-engine keygen): the writer signs "
        "checkpoints with it. Needs checkpoint_file or a checkpoint callback.",
    )
    checkpoint_file: Path | None = Field(
        default=None,
        description="Append-only JSON-lines file, outside the database, that receives every "
        "signed checkpoint.",
    )
    checkpoint_every: int = Field(
        default=10000, gt=0, description="Sign a checkpoint at least every this many entries."
    )
    checkpoint_interval: float = Field(
        default=300.0,
        gt=0,
        description="Seconds: sign a checkpoint at least this often while entries arrive "
        "(and always at close()).",
    )

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError(_describe(exc, given=set(values))) from None

    @field_validator("database", mode="before")
    @classmethod
    def _path_or_url(cls, value: object) -> object:
        if isinstance(value, str):
            url = database_url(value)
            return Path(value) if url is None else url
        return value

    @field_validator(
        "deadletter_path", "chain_key_file", "signing_key_file", "checkpoint_file", mode="before"
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None  # AUDIT_TRAIL_DEADLETTER_PATH= (empty): the default
        return value

    @property
    def deadletter_file(self) -> Path:
        """The dead-letter file in use: ``deadletter_path``, else the default for the database."""
        if self.deadletter_path is not None:
            return self.deadletter_path
        return default_deadletter_path(self.database)

    @field_validator("on_full", "synchronous", "level", mode="before")
    @classmethod
    def _normalise_case(cls, value: object, info: Any) -> object:
        if isinstance(value, str):
            value = value.strip()
            return value.upper() if info.field_name == "synchronous" else value.lower()
        return value

    @field_validator("exclude_actions", "exclude_resources", "redact_fields", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("exclude_actions", "exclude_resources", "redact_fields")
    @classmethod
    def _no_blank_names(cls, value: list[str]) -> list[str]:
        if any(not name.strip() for name in value):
            raise ValueError("names must not be blank")
        return value


def resolve(
    settings: AuditSettings | str | os.PathLike[str] | None, overrides: dict[str, Any]
) -> AuditSettings:
    """The settings ``AuditService(settings, **overrides)`` runs with.

    ``settings`` is an :class:`AuditSettings`, a database path, or None (read the environment);
    each keyword override replaces that one setting and is validated like it
    (:class:`~audit_engine.errors.SettingsError`). Anything else raises ``TypeError`` naming it.
    """
    unknown = [name for name in overrides if name not in AuditSettings.model_fields]
    if unknown:
        raise TypeError(f"AuditService() got an unexpected keyword argument {unknown[0]!r}")
    if isinstance(settings, AuditSettings):
        if not overrides:
            return settings
        # Every field given explicitly, so the environment cannot change what the caller built.
        return AuditSettings(**{**settings.model_dump(), **overrides})
    if settings is None:
        return AuditSettings(**overrides)
    if isinstance(settings, str | os.PathLike):
        if "database" in overrides:
            raise TypeError(
                "AuditService() got the database twice: as its first argument and as database="
            )
        return AuditSettings(database=settings, **overrides)
    raise TypeError(
        "AuditService() settings must be AuditSettings, a database path (str or os.PathLike) "
        f"or None, got {type(settings).__name__}"
    )


def _describe(exc: ValidationError, given: set[str]) -> str:
    """One line per bad value, naming where it came from: the keyword argument ``given`` to
    :class:`AuditSettings`, else the environment variable."""
    parts = []
    for error in exc.errors():
        loc = error["loc"][0] if error["loc"] else ""
        field = str(loc)
        if field.upper() == f"{ENV_PREFIX}ASYNC":
            field = "async_writes"
        if field in AuditSettings.model_fields:
            source = f"the {field}= argument" if field in given else env_var(field)
            where = f"{field} ({source})"
        else:
            where = field or "settings"
        value = error.get("input")
        if isinstance(value, str) and "://" in value:
            value = mask_url(value)  # a password never reaches a message
        shown = f" (got {value!r})" if error["type"] != "extra_forbidden" else ""
        parts.append(f"invalid setting {where}: {error['msg']}{shown}")
    return "; ".join(parts)
