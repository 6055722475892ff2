""":class:`AuditStore`: the read API of a trail — query, count, head, verify, export, purge,
replay — on either backend.

``AuditStore(path)`` opens a SQLite file, ``AuditStore("postgresql://...")`` a PostgreSQL trail
(:mod:`audit_engine.storage.backends`). The SQL is written once, in what both backends speak;
the few differences go through :mod:`audit_engine.storage.dialect`. Values always travel as
parameters.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Self, Unpack

from audit_engine import formats
from audit_engine.columns import STORED_ROW
from audit_engine.errors import AuditStoreError
from audit_engine.models import AuditEntry, utcnow
from audit_engine.settings import AuditSettings, describe_database, resolve_database
from audit_engine.storage import backends, checkpoint_verify, deadletter, proofs, reads, replay
from audit_engine.storage.anchors import check_maintenance
from audit_engine.storage.chain import ChainHead, VerifyReport, verify_rows
from audit_engine.storage.checkpoint_verify import CheckpointSource
from audit_engine.storage.dialect import (
    DATABASE_ERRORS,
    dialect_of,
    snapshot,
    stream,
)
from audit_engine.storage.keys import ChainKeys, chain_keys_from
from audit_engine.storage.linker import linker_for
from audit_engine.storage.reads import DEFAULT_PAGE_SIZE, EntryFilters, checked_page_size
from audit_engine.storage.replay import ReplayReport
from audit_engine.storage.retention import (
    DEFAULT_CLEANUP_BATCH_SIZE,
    CleanupReport,
    cutoff_for,
    purge,
)
from audit_engine.storage.sqlite import schema
from audit_engine.storage.sqlite.append import chain_tail
from audit_engine.storage.sqlite.schema import STORED_COLUMNS, TABLE
from audit_engine.storage.stored import (
    as_dicts,
    checked_head,
    checked_limit,
    parse_row,
)
from audit_engine.storage.summary import StoreSummary, summarise

__all__ = ["AuditStore", "parse_row"]

_COLUMNS = STORED_COLUMNS
_CHAIN_VERSIONS_SQL = "SELECT first_id, version, key_id FROM audit_chain_versions ORDER BY first_id"


class AuditStore:
    """Typed reads of an existing audit trail: a SQLite file or a PostgreSQL URL.

    ``AuditStore(path)`` opens the file (it must exist; a missing or foreign file raises
    :class:`~audit_engine.errors.AuditStoreError`); ``AuditStore("postgresql://...")`` connects
    to the server (the database must hold the engine's tables). ``create=True`` creates or
    migrates the trail instead. Use it as a context manager or call :meth:`close`.

    ``chain_key_file`` (default: ``AUDIT_TRAIL_CHAIN_KEY_FILE`` if set) holds the chain key(s)
    of a keyed trail: :meth:`verify` checks keyed rows with them, and rows this store writes
    (:meth:`replay_dead_letters`) are keyed with the first. A bad file raises
    :class:`~audit_engine.errors.SettingsError` naming it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        create: bool = False,
        chain_key_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self._closed = False
        self._keys: ChainKeys | None = chain_keys_from(chain_key_file)
        self._linker = linker_for(self._keys)
        try:
            self._database: Path | str = resolve_database(path)
        except ValueError as exc:
            raise AuditStoreError(f"the database {exc}") from None
        #: The SQLite file, or the PostgreSQL URL without its password.
        self.path: Path | str = (
            describe_database(self._database) if isinstance(self._database, str) else self._database
        )
        self._conn = backends.open_trail(self._database, busy_timeout=busy_timeout, create=create)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection. Idempotent. An iterator of :meth:`query` or :meth:`export`
        read afterwards raises :class:`AuditStoreError` saying the store is closed."""
        self._closed = True
        self._conn.close()

    def quick_check(self) -> None:
        """Raise :class:`AuditStoreError` naming the file if SQLite finds it damaged.

        ``PRAGMA quick_check``: every page is read once (seconds for a large file), indexes are
        not compared with their tables. ``audit-engine init`` runs it. A PostgreSQL server checks
        its own pages: nothing to do there.
        """
        if isinstance(self._database, str):
            return
        try:
            problems = [str(row[0]) for row in self._conn.execute("PRAGMA quick_check(3)")]
        except sqlite3.DatabaseError as exc:  # a page too damaged to check
            problems = [str(exc)]
        if problems != ["ok"]:
            raise AuditStoreError(
                f"{self.path} is damaged (PRAGMA quick_check): {'; '.join(problems)}"
            )

    # -- integrity and retention -----------------------------------------------------------------

    def head(self) -> ChainHead | None:
        """The newest link of the chain (after a full purge: the anchor), or None when empty.

        Publish it or store it apart: ``verify(expected_head=...)`` then detects truncation. A
        head must still be a row when verified: one an anchor replaced fails, so publish more
        often than the retention period.
        """
        with self._errors("read the chain head of"):
            tail_id, tail_hash = self._tail()
        return ChainHead(id=tail_id, hash=tail_hash) if tail_id else None

    def verify(
        self,
        *,
        expected_head: ChainHead | None = None,
        min_retention: timedelta | None = None,
        checkpoints: CheckpointSource | None = None,
        public_key: Any = None,
    ) -> VerifyReport:
        """Check the whole chain in one read snapshot, streaming in constant memory.

        Detects a modified field, a deleted, inserted or reordered row, and (against an
        ``expected_head`` kept elsewhere) rows deleted from the end or a head an anchor claims.
        First checks the purge anchors and cleanup runs (their own hash chains, and that each
        anchor is possible), refusing an anchor whose cutoff is less than ``min_retention``
        before its purge. ``min_retention`` defaults to the retention setting
        (``AuditSettings().retention_days``: ``AUDIT_TRAIL_RETENTION_DAYS``, else 90 days), as
        the CLI's ``verify``; ``timedelta(0)`` checks no minimum. Keyed rows need their key in
        the store's ``chain_key_file``: without it the report is not ok and says from which id
        on rows could not be checked (``unchecked_from``). With ``checkpoints`` (the signed
        checkpoint log: a path or its lines) and ``public_key`` (a path or key), the trail must
        still hold what each checkpoint signed; the first that disagrees is named
        (``checkpoint_line``, ``checkpoint_problem``). See docs/integrity.md, docs/checkpoints.md.
        """
        if min_retention is None:
            min_retention = timedelta(days=AuditSettings().retention_days)
        if not isinstance(min_retention, timedelta) or min_retention < timedelta(0):
            raise AuditStoreError(
                f"min_retention must be a duration of zero or more (got {min_retention!r})"
            )
        expected_head = checked_head(expected_head)
        signed = checkpoint_verify.prepared(checkpoints, public_key)  # bad files: before reading
        with self._errors("verify"), snapshot(self._conn):
            checked = check_maintenance(self._conn, utcnow(), min_retention, self._keys)
            found = {
                "anchors_checked": checked.anchors,
                "cleanup_runs_checked": checked.runs,
                "warnings": checked.warnings,
            }
            if checked.problem is not None:
                return VerifyReport(ok=False, rows_checked=0, reason=checked.problem, **found)
            rows = stream(
                self._conn, f"SELECT {dialect_of(self._conn).stored_row} FROM {TABLE} ORDER BY id"
            )
            versions = self._chain_versions()
            report = verify_rows(rows, checked.start, expected_head, versions, self._keys)
            found["warnings"] = (*checked.warnings, *report.warnings)
            report = report.model_copy(update=found)
            if signed is not None:
                held = checkpoint_verify.check(self._conn, *signed, self._tail()[0])
                report = checkpoint_verify.merged(report, held)
            return report

    def prove(
        self, event_id: str, *, checkpoints: CheckpointSource | None = None, public_key: Any = None
    ) -> dict[str, Any]:
        """The inclusion proof (JSON-ready) of the entry ``event_id`` against the newest signed
        checkpoint covering it: from the log ``checkpoints`` (a path or its lines), else the
        copies kept in the trail; with ``public_key`` (a key or its PEM file), only one whose
        signature verifies. Check it offline with :func:`~audit_engine.verify_proof`."""
        with self._errors("prove an entry of"), snapshot(self._conn):
            return proofs.prove(self._conn, event_id, checkpoints, public_key)

    def purge(
        self,
        older_than: timedelta | datetime,
        *,
        batch_size: int | None = None,
        dry_run: bool = False,
        on_batch: Callable[[int], None] | None = None,
    ) -> CleanupReport:
        """Delete the rows older than ``older_than`` (an age, or an aware cutoff datetime).

        Deletes the prefix of the chain before the first row at or after the cutoff, in
        transactions of ``batch_size`` rows (default 10 000), each recording an anchor so
        ``verify()`` still proves what remains; the run is kept in the cleanup-runs table.
        ``dry_run`` only counts; ``on_batch(rows)`` is called after each committed batch.
        """
        size = DEFAULT_CLEANUP_BATCH_SIZE if batch_size is None else batch_size
        age = older_than if isinstance(older_than, timedelta) else None
        with self._errors("purge"):
            return purge(
                self._conn,
                cutoff_for(older_than),
                size,
                dry_run=dry_run,
                on_batch=on_batch,
                older_than=age,
                linker=self._linker,  # a keyed trail's anchors are keyed
            )

    def export(
        self,
        fmt: str = "jsonl",
        *,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        **filters: Any,
    ) -> Iterator[str]:
        """Yield the matching entries as lines (each ending in a newline), in commit order.

        ``fmt="jsonl"``: one JSON object per row with its id, stored fields, ``prev_hash`` and
        ``hash`` (a contiguous range verifies offline with ``exported.verify_exported_lines``).
        ``fmt="csv"``: a header row, then one row per entry (``details`` as JSON text,
        ``critical`` as true/false). Values are rendered by :mod:`audit_engine.formats`, as
        ``audit-engine query`` renders them. Takes the filters of :meth:`query`. Pages as
        :meth:`query` does (memory does not grow with the number of rows), but every page is
        read in one read transaction: the export is the trail as it was when it started, so a
        purge or commits meanwhile never leave a gap in it (it verifies offline). The snapshot
        ends when the last line is read or the iterator is closed.
        """
        if fmt not in ("jsonl", "csv"):
            raise AuditStoreError(f"unknown export format {fmt!r}: use 'jsonl' or 'csv'")
        # since/until are spelled out as the ChainReader protocol (storage/base.py) has them.
        checked = {"since": since, "until": until, **filters}
        where_clause, params, probe = reads.paged_where(TABLE, checked, "export")
        pages = reads.pages(
            functools.partial(self._fetch_page, "export"),
            f"SELECT {dialect_of(self._conn).stored_row} FROM {TABLE}",
            where_clause,
            params,
            newest_first=False,
            limit=None,
            page_size=DEFAULT_PAGE_SIZE,
            probe=probe,
        )
        return self._guarded(
            formats.export_lines(fmt, STORED_ROW, self._in_snapshot(pages)), "export"
        )

    def _in_snapshot(self, pages: Iterator[Sequence[Sequence[Any]]]) -> Iterator[Sequence[Any]]:
        # One read transaction around every page: an export is one contiguous, verifiable range
        # even while a purge or other writers commit (a query, which proves nothing, holds none).
        dropped = False
        try:
            with snapshot(self._conn):
                for page in pages:
                    try:
                        yield from page
                    except GeneratorExit:
                        dropped = True
                        raise
        except DATABASE_ERRORS:
            # An export left unread, dropped after close(): closing ended its snapshot already,
            # so ending it fails; nobody reads on to be told (pytest would report it unraisable).
            if not (dropped and self._closed):
                raise

    def _guarded(self, lines: Iterator[str], what: str) -> Iterator[str]:
        # Rows are read while the caller iterates: a corrupt page shows up here, not earlier.
        with self._errors(what):
            yield from lines

    def _tail(self) -> tuple[int, str]:
        if isinstance(self._conn, sqlite3.Connection):
            return chain_tail(self._conn)
        return self._conn.tail()

    def _chain_versions(self) -> list[tuple[int, str, str | None]]:
        return [(int(a), str(b), c) for a, b, c in self._conn.execute(_CHAIN_VERSIONS_SQL)]

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except DATABASE_ERRORS as exc:  # SQLite's ProgrammingError among them
            # A closed store: each backend says so in its own error (SQLite's ProgrammingError);
            # every read after close() (an iterator of query() or export() too) says it in one.
            if self._closed:
                raise AuditStoreError(f"cannot {what} {self.path}: the store is closed") from None
            if isinstance(exc, sqlite3.ProgrammingError):
                raise  # another misuse, not a problem of the file
            raise AuditStoreError(f"cannot {what} {self.path}: {exc}") from None

    def replay_dead_letters(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        from_log: str | os.PathLike[str] | None = None,
    ) -> ReplayReport:
        """Re-import a dead-letter file (default: this database's) and drop the replayed lines.

        Its side files are read too. With ``from_log``, re-import instead the entries a writer
        could only log at CRITICAL, from a saved log file (left unchanged).
        """
        with self._errors("replay dead letters into"):
            if from_log is not None:
                return replay.replay_log(Path(from_log), self._conn, self._linker)
            target = Path(path) if path is not None else deadletter.path_for(self._database)
            return replay.replay(target, self._conn, self._linker)

    def summary(self) -> StoreSummary:
        """Totals by action, operation, outcome and day; file size; chain status; last cleanup."""
        with self._errors("summarise"), snapshot(self._conn):
            return summarise(
                self._conn,
                self.path,
                size=self._size(),
                schema_version=self.schema_version,
                verify=lambda: self.verify(),
            )

    def _size(self) -> int:
        if isinstance(self._database, Path):
            files = (self._database, Path(f"{self._database}-wal"), Path(f"{self._database}-shm"))
            return sum(p.stat().st_size for p in files if p.exists())
        if isinstance(self._conn, sqlite3.Connection):  # pragma: no cover - paths go above
            raise AssertionError("a SQLite trail has a path")
        return self._conn.size_bytes()

    @property
    def schema_version(self) -> int:
        """The schema version of the trail's tables (each backend counts its own)."""
        if isinstance(self._conn, sqlite3.Connection):
            return schema.SCHEMA_VERSION
        return self._conn.schema_version

    # -- queries ---------------------------------------------------------------------------------

    def entries_after(self, last_id: int, *, limit: int = 1000) -> list[tuple[int, AuditEntry]]:
        """Up to ``limit`` entries committed after row ``last_id``, with their ids (for follow)."""
        sql = f"{self._select()} WHERE id > ? ORDER BY id LIMIT ?"
        with self._errors("read the newest entries of"):
            rows = self._query(sql, [last_id, checked_limit(limit)])
        return [(row["id"], parse_row(row)) for row in rows]

    def last_id(self) -> int:
        """The id of the newest row, or 0 when the table is empty."""
        with self._errors("read the newest entries of"):
            row = self._conn.execute(f"SELECT coalesce(max(id), 0) FROM {TABLE}").fetchone()
        return int(row[0])

    def query(
        self,
        *,
        limit: int | None = None,
        newest_first: bool = False,
        page_size: int = DEFAULT_PAGE_SIZE,
        **filters: Unpack[EntryFilters],
    ) -> Iterator[AuditEntry]:
        """The entries matching every given filter, in commit order (or newest first), as an
        iterator that reads them ``page_size`` rows at a time (default 1000, at most 100 000):
        memory stays flat whatever the number of rows; ``list(store.query(...))`` for a list.

        Filters (:class:`~audit_engine.storage.reads.EntryFilters`): ``actor``, ``action``,
        ``operation``, ``outcome``, ``resource_type``, ``resource_id``, ``correlation_id``
        (equality), ``since`` inclusive and ``until`` exclusive: each an aware ``datetime`` or
        an ISO-8601 string (``"2026-01-31"``, ``"2026-01-31T12:00:00+01:00"``); a string
        without an offset is UTC. ``limit`` caps the rows across all pages. The arguments are
        checked here, before any row is read: a naive ``datetime`` is refused
        (:class:`AuditStoreError`), a value of another type raises ``TypeError`` naming the
        filter (``actor``, ``resource_id`` and ``correlation_id`` also take an int or a UUID,
        as ``record()`` does), an unknown operation or outcome ``ValueError``; ``limit`` is
        an int from 0 to 2**63 - 1, ``page_size`` from 1 to 100 000 (``ValueError`` out of
        range, ``TypeError`` for another type), ``newest_first`` a bool; an unknown keyword raises
        ``TypeError``.

        Each page is a statement of its own (keyset pagination on the row id), so no
        transaction stays open between pages: rows committed while the iterator pages appear
        when reading in commit order, and never newest first (see
        :mod:`audit_engine.storage.reads`). A database error while iterating, or a row another
        tool wrote that is not a valid entry (named by its id), raises :class:`AuditStoreError`,
        as does iterating after :meth:`close` (saying the store is closed).
        """
        where_clause, params, probe = reads.paged_where(TABLE, filters, "query")
        total = None if limit is None else checked_limit(limit)
        size = checked_page_size(page_size)
        if not isinstance(newest_first, bool):  # "no" is truthy: it would read newest first
            raise TypeError(f"newest_first must be a bool, got {type(newest_first).__name__}")
        pages = reads.pages(
            functools.partial(self._fetch_page, "query"),
            self._select(),
            where_clause,
            params,
            newest_first=newest_first,
            limit=total,
            page_size=size,
            probe=probe,
        )
        return reads.entries(pages)

    def count(self, **filters: Unpack[EntryFilters]) -> int:
        """How many entries match every given filter (the filters of :meth:`query`)."""
        where_clause, params = reads.where(filters, "count")
        with self._errors("count the entries of"):
            row = self._conn.execute(
                f"SELECT count(*) FROM {TABLE}{where_clause}", params
            ).fetchone()
        total: int = row[0]
        return total

    def _fetch_page(self, what: str, sql: str, params: list[Any]) -> list[Any]:
        # fetchall: the statement is finished before its rows are handed out, so nothing
        # (no SQLite read snapshot, no PostgreSQL transaction) is held between pages.
        with self._errors(what):
            rows: list[Any] = self._conn.execute(sql, params).fetchall()
        return rows

    def _select(self) -> str:
        return f"SELECT id, {dialect_of(self._conn).fields} FROM {TABLE}"

    def _query(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        cursor = self._conn.execute(sql, params)
        return as_dicts(cursor, cursor.description)
