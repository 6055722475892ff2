"""The storage seam: what the engine needs from a backend, as small typed protocols.

Two roles, as OpenTelemetry's ``Exporter`` is the one thing its ``BatchProcessor`` knows about:

- :class:`ChainSink` — what the writer needs: read the chain's tail, append one batch of rows to
  the chain and commit it as one transaction, close. The writer never sees a connection, a SQL
  error or a driver module: the sink classifies every failure into one of the
  :class:`SinkError` subclasses below, and the writer acts on the class alone.
- :class:`ChainReader` — what :class:`~audit_engine.storage.store.AuditStore` offers to
  read, verify, export and purge; SQLite's is today's ``AuditStore``.

SQLite is the first implementation (:mod:`audit_engine.storage.sqlite.sink`). The seam is drawn
for a client/server database too (PostgreSQL is next):

- a connection that drops is :class:`SinkBusy` (transient): the backend reconnects inside its
  next call, and the writer simply retries;
- the chain's tail is guarded by the backend, not by a process-local lock: a sink remembers
  the tail it last wrote and detects by itself that someone else (another process or host, a
  purge, a synchronous write) moved it, then re-reads it inside its transaction. A
  server-side backend does this with a row lock or an advisory lock that spans hosts.

A sink is used by one thread at a time (the writer's, or the caller's when ``close()`` drains
a dead writer's queue); it need not be thread-safe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from audit_engine.errors import AuditEngineError
from audit_engine.rows import Row

if TYPE_CHECKING:
    from audit_engine.models import AuditEntry
    from audit_engine.storage.chain import ChainHead, VerifyReport
    from audit_engine.storage.retention import CleanupReport
    from audit_engine.storage.summary import StoreSummary

__all__ = [
    "ChainReader",
    "ChainSink",
    "OpenSink",
    "SinkBusy",
    "SinkError",
    "SinkRefused",
    "SinkUnavailable",
    "Tail",
]

# The chain's tail: (id, hash) of the newest row, else of the newest purge anchor, else
# (0, genesis). New rows chain from it.
Tail = tuple[int, str]


class SinkError(AuditEngineError):
    """A sink could not commit (or read); the subclass tells the writer what to do about it.

    ``str(error)`` is the human-readable reason, recorded with dead-lettered entries.
    """


class SinkBusy(SinkError):
    """Transient: another writer holds the lock, or the connection dropped. Retry with backoff.

    Nothing of the batch was kept. A backend whose connection dropped reconnects on its next
    call; the writer never gives up on a busy sink until ``close()`` times out.
    """


class SinkRefused(SinkError):
    """The backend refused this batch (a constraint, a value it cannot store, a full disk).

    Nothing of the batch was kept. Some row in it may be poison: the writer splits the batch
    until the refused rows are alone, and dead-letters those.
    """


class SinkUnavailable(SinkError):
    """The store itself is unusable (read-only, corrupt, cannot be opened, I/O errors).

    Nothing of the batch was kept. Every row would fail the same way: the writer sends the
    whole batch to the dead-letter file at once rather than splitting it.
    """


class ChainSink(Protocol):
    """What the writer needs from a backend: the chain's tail, a chained batch commit, close."""

    def read_tail(self) -> Tail:
        """The chain's tail now. Raises :class:`SinkError`."""
        ...

    def commit(self, rows: Sequence[Row], tail: Tail | None) -> Tail:
        """Append ``rows`` to the chain and commit them as one transaction; return the new tail.

        ``tail`` is the tail as the caller last knew it (None: not known). If the chain's tail
        moved meanwhile, the sink notices and chains from the real one; nothing is ever linked
        to a stale tail. On failure nothing of ``rows`` is kept, and a :class:`SinkError`
        subclass says why.
        """
        ...

    def close(self) -> None:
        """Release the connection. Never raises."""
        ...


# Opens a sink (the writer's, again after a fork or to drain a dead writer's queue). May raise
# anything: the writer dead-letters what it cannot write.
OpenSink = Callable[[], ChainSink]


class ChainReader(Protocol):
    """What the read API needs from a backend: read, verify, export and purge the trail."""

    def close(self) -> None: ...

    def head(self) -> ChainHead | None: ...

    def verify(
        self,
        *,
        expected_head: ChainHead | None = None,
        min_retention: timedelta | None = None,
    ) -> VerifyReport: ...

    def purge(
        self,
        older_than: timedelta | datetime,
        *,
        batch_size: int | None = None,
        dry_run: bool = False,
        on_batch: Callable[[int], None] | None = None,
    ) -> CleanupReport: ...

    def export(
        self,
        fmt: str = "jsonl",
        *,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        **filters: Any,
    ) -> Iterator[str]: ...

    def summary(self) -> StoreSummary: ...

    def entries_after(self, last_id: int, *, limit: int = 1000) -> list[tuple[int, AuditEntry]]: ...

    def last_id(self) -> int: ...
