"""Copying a trail into another one, on either backend: :func:`copy_trail`.

A desktop's SQLite file into the team's PostgreSQL, a server's trail into a file for an offline
review, or between two trails of one backend. The source is verified first; its entries are read
in id order, a batch at a time (keyset on id: memory does not grow with the trail), and appended
to the destination's own chain, one transaction per batch. A copied entry keeps its event_id,
timestamp and fields; it gets the destination's id, prev_hash and hash. The event_id ties the two
chains together: an entry the destination already holds is not copied again, so running a copy
twice copies nothing twice; an event_id the destination uses for a different entry stops the copy.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from audit_engine.errors import AuditStoreError
from audit_engine.models import AuditEntry
from audit_engine.rows import entry_row
from audit_engine.settings import describe_database, env_var, is_database_url
from audit_engine.storage import backends
from audit_engine.storage.chain import ChainHead, VerifyReport
from audit_engine.storage.dialect import DATABASE_ERRORS, AnyConnection, dialect_of
from audit_engine.storage.linker import Linker, load_linker
from audit_engine.storage.sqlite.schema import TABLE
from audit_engine.storage.store import AuditStore
from audit_engine.storage.stored import as_dicts, parse_row

__all__ = ["DEFAULT_COPY_BATCH_SIZE", "CopyReport", "copy_trail"]

DEFAULT_COPY_BATCH_SIZE = 5000
# event_ids per lookup statement: under the 999 variables every SQLite accepts.
_LOOKUP_CHUNK = 900


class CopyReport(BaseModel):
    """What :func:`copy_trail` did."""

    model_config = ConfigDict(frozen=True)

    #: The source and the destination as messages show them (a URL without its password).
    source: str
    destination: str
    #: Entries of the source read, up to and including ``source_head``.
    source_rows: int
    #: Entries appended to the destination's chain.
    copied: int
    #: Entries the destination already held (the same entry under the same event_id).
    already_present: int
    #: Batches read from the source.
    batches: int
    #: The verified source head the copy went up to (None: the source was empty): record it
    #: with the destination head to tie the two chains together.
    source_head: ChainHead | None
    #: The destination's head after the copy, verified.
    dest_head: ChainHead | None
    #: Rows the destination's final verify checked.
    dest_rows_verified: int
    duration_s: float


def copy_trail(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    batch_size: int = DEFAULT_COPY_BATCH_SIZE,
    on_batch: Callable[[int], None] | None = None,
    min_retention: timedelta | None = None,
    chain_key_file: str | os.PathLike[str] | None = None,
) -> CopyReport:
    """Copy every entry of the trail ``source`` into the trail ``dest`` (paths or URLs).

    The source must verify (:meth:`AuditStore.verify`, with ``min_retention`` as there), else
    :class:`AuditStoreError` names the reason and nothing is copied. ``dest`` is created or
    migrated when needed. Entries up to the source's head (as it was when verified) are read in
    id order, ``batch_size`` at a time; those the destination lacks are appended to its chain in
    one transaction per batch, and ``on_batch(n)`` is called with the ``n`` source entries each
    batch handled. An event_id the destination holds for a different entry raises
    :class:`AuditStoreError` naming it (the batches before it stay copied). Finally the
    destination must verify, else :class:`AuditStoreError`.

    ``chain_key_file`` (default: ``AUDIT_TRAIL_CHAIN_KEY_FILE`` if set) verifies keyed rows of
    either trail, and keys the rows appended to the destination with its first key.
    """
    if chain_key_file is None:
        chain_key_file = os.environ.get(env_var("chain_key_file")) or None
    linker = load_linker(chain_key_file)
    size = _checked_batch_size(batch_size)
    started = time.perf_counter()
    source_name, dest_name = _described(source), _described(dest)
    if _same_trail(source, dest):
        raise AuditStoreError(f"{source_name} is both the source and the destination of the copy")
    with AuditStore(source, chain_key_file=chain_key_file) as src:
        head = _verified_head(src, min_retention)
        with _destination(dest) as conn:
            copier = _Copier(conn, dest_name, linker)
            for batch in _batches(src, head, size):
                copier.copy(batch)
                if on_batch is not None:
                    on_batch(len(batch))
    with AuditStore(dest, chain_key_file=chain_key_file) as dst:
        final = dst.verify(min_retention=min_retention)
    if not final.ok:
        raise AuditStoreError(
            f"the destination {dest_name} does not verify after the copy: {_failure(final)} "
            f"({copier.copied} entries were copied into it)"
        )
    return CopyReport(
        source=source_name,
        destination=dest_name,
        source_rows=copier.copied + copier.already_present,
        copied=copier.copied,
        already_present=copier.already_present,
        batches=copier.batches,
        source_head=head,
        dest_head=final.head,
        dest_rows_verified=final.rows_checked,
        duration_s=time.perf_counter() - started,
    )


def _checked_batch_size(batch_size: object) -> int:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool):
        raise TypeError(f"batch_size must be an int (got {type(batch_size).__name__})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be 1 or more (got {batch_size})")
    return batch_size


def _described(database: str | os.PathLike[str]) -> str:
    return describe_database(str(database) if is_database_url(database) else Path(database))


def _same_trail(source: str | os.PathLike[str], dest: str | os.PathLike[str]) -> bool:
    # Copying a trail into itself would find every entry present: refuse the likely typo instead.
    if is_database_url(source) or is_database_url(dest):
        return str(source) == str(dest)
    with contextlib.suppress(OSError):  # a missing destination is another trail
        return os.path.samefile(source, dest)
    return False


def _verified_head(src: AuditStore, min_retention: timedelta | None) -> ChainHead | None:
    """The source's head, after checking the chain reaches it: the copy goes up to it."""
    head = src.head()
    # A head that is a row must still be there; a fully purged trail's head is its anchor,
    # which verify checks as the start of the (empty) chain instead.
    expected = head if head is not None and src.last_id() == head.id else None
    report = src.verify(expected_head=expected, min_retention=min_retention)
    if not report.ok:
        raise AuditStoreError(
            f"the source {src.path} does not verify: {_failure(report)}; nothing was copied"
        )
    return head


def _failure(report: VerifyReport) -> str:
    if report.unchecked_from is not None:  # keyed rows, and no key (or not theirs)
        return f"not verified: {report.reason}"
    if report.first_bad_id is None:  # a purge anchor or cleanup run, before any row
        return f"purge records refused: {report.reason}"
    return f"chain broken at row {report.first_bad_id}: {report.reason}"


@contextlib.contextmanager
def _destination(dest: str | os.PathLike[str]) -> Iterator[AnyConnection]:
    conn = backends.open_trail(dest, create=True)
    try:
        yield conn
    except DATABASE_ERRORS as exc:
        raise AuditStoreError(f"cannot copy into {_described(dest)}: {exc}") from None
    finally:
        conn.close()


def _batches(src: AuditStore, head: ChainHead | None, size: int) -> Iterator[list[AuditEntry]]:
    """The source's entries up to ``head``, in id order, ``size`` at a time (keyset on id)."""
    if head is None:
        return
    last = 0
    while last < head.id:
        # Entries recorded after the source was verified are left for the next copy.
        rows = [(i, entry) for i, entry in src.entries_after(last, limit=size) if i <= head.id]
        if not rows:
            return  # purged meanwhile, or the head is an anchor of a fully purged trail
        yield [entry for _, entry in rows]
        last = rows[-1][0]


class _Copier:
    """Appends batches to the destination's chain, skipping the entries it already holds."""

    def __init__(self, conn: AnyConnection, dest_name: str, linker: Linker) -> None:
        self.conn = conn
        self.linker = linker
        self.dest_name = dest_name
        self.copied = self.already_present = self.batches = 0

    def copy(self, batch: Sequence[AuditEntry]) -> None:
        stored = self._stored([entry.event_id for entry in batch])
        new = []
        for entry in batch:
            held = stored.get(entry.event_id)
            if held is None:
                new.append(entry_row(entry))
            elif held[1] == entry:
                self.already_present += 1
            else:  # never skipped silently: the two trails disagree about this event
                raise AuditStoreError(
                    f"event_id {entry.event_id} is already used by a different entry in "
                    f"{self.dest_name} (row {held[0]}); {self.copied} entries were copied "
                    "before it, none of its batch"
                )
        if new:
            backends.write_rows(self.conn, new, self.linker)
        self.copied += len(new)
        self.batches += 1

    def _stored(self, event_ids: list[str]) -> dict[str, tuple[int, AuditEntry]]:
        """The destination's (id, entry) of each of ``event_ids`` it holds."""
        select = f"SELECT id, {dialect_of(self.conn).fields} FROM {TABLE} WHERE event_id IN "
        found: dict[str, tuple[int, AuditEntry]] = {}
        for start in range(0, len(event_ids), _LOOKUP_CHUNK):
            chunk = event_ids[start : start + _LOOKUP_CHUNK]
            cursor = self.conn.execute(f"{select}({', '.join('?' * len(chunk))})", chunk)
            for row in as_dicts(cursor, cursor.description):
                found[row["event_id"]] = (row["id"], parse_row(row))
        return found
