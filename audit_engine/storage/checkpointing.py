"""Signed checkpoints, the writer's side: when one is made, what it says, where it goes.

With ``signing_key_file`` set, the writer thread asks :meth:`Checkpointer.due` after each
commit and signs a checkpoint (:mod:`audit_engine.storage.checkpoints`)
once ``checkpoint_every`` rows or ``checkpoint_interval`` seconds have passed since the last one
— and once more at ``close()`` if anything is new. A checkpoint commits to the Merkle tree
(:mod:`audit_engine.storage.merkle`) over every row so far, purged ones included, and to the
chain's head. It goes, in this order, to:

1. ``checkpoint_file``: one JSON object per line, appended (``O_APPEND``, created 0600) and
   fsync'ed — the copy outside the database that verification trusts;
2. the ``on_checkpoint`` callback (to ship it to a witness); an exception there is logged and
   counted, never raised into the writer;
3. the trail's ``audit_checkpoints`` table, with the tree's frontier, so the next start resumes
   without reading the trail.

The tree is kept as a frontier and grown by reading back the leaves of the rows committed since
(their stored hashes: one indexed range read per checkpoint), so rows of other writers — other
processes or hosts on the same trail — are covered the same way as our own. At start the newest
stored checkpoint whose note verifies with our key, and whose frontier's root is the signed one,
is the starting point; without one, the newest purge anchor's frontier. A purge that deleted past
the frontier moves it to the anchor's. A failure (the database, the file) is logged and counted
in the service's stats; the entries are never affected.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit_engine import forks
from audit_engine.errors import SettingsError
from audit_engine.models import SignedCheckpoint, utcnow
from audit_engine.storage.checkpoint_log import append_line, check_log_file
from audit_engine.storage.dialect import (
    DATABASE_ERRORS,
    AnyConnection,
    begin_write,
    commit,
    rollback_quietly,
    snapshot,
)
from audit_engine.storage.keys import SIGNING_NOTE_KEY, checkpoint_notes, load_signing_key
from audit_engine.storage.leaves import anchor_frontier, leaves, trail_id
from audit_engine.storage.merkle import Frontier, FrontierError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from audit_engine.settings import AuditSettings
    from audit_engine.storage.base import Tail

__all__ = ["CHECKPOINTS", "CheckpointCallback", "Checkpointer", "from_settings"]

logger = logging.getLogger("audit_engine.checkpoints")

CHECKPOINTS = "audit_checkpoints"
CheckpointCallback = Callable[[SignedCheckpoint], Any]
# Stored checkpoints looked at on resume, newest first: those of another key are skipped.
_RESUME_LOOKBACK = 64
_COLUMNS = "id, head_id, head_hash, tree_size, root, merkle, note, created_at"


class Checkpointer:
    """Makes signed checkpoints for one writer; used by one thread at a time (the writer's).

    ``connect()`` opens the trail connection it reads leaves through and keeps checkpoints in.
    ``clock`` (monotonic seconds) times ``interval_s``.
    """

    def __init__(
        self,
        connect: Callable[[], AnyConnection],
        signing_key: Ed25519PrivateKey,
        *,
        log_path: Path | None,
        callback: CheckpointCallback | None,
        every: int,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connect = connect
        self._key = signing_key
        self._notes = checkpoint_notes("signing_key_file")
        self._log_path = log_path
        self._callback = callback
        self._every = every
        self._interval_s = interval_s
        self._clock = clock
        self._conn: AnyConnection | None = None
        self._trail_id: str | None = None
        self._frontier: Frontier | None = None
        # The head of the last checkpoint made or resumed from (0: none yet), and when.
        self.signed_head = 0
        self._last_time = clock()
        self.made = 0
        self.failures = 0
        self.callback_failures = 0
        self.leaves_read = 0  # rows whose leaf was read back (a resume reads only what is new)
        self.last_error: str | None = None
        self.last: SignedCheckpoint | None = None

    # -- when ------------------------------------------------------------------------------

    def due(self, tail_id: int) -> bool:
        """Whether a checkpoint is due with the chain's tail at ``tail_id``."""
        if tail_id <= self.signed_head:
            return False
        return (
            tail_id - self.signed_head >= self._every
            or self._clock() - self._last_time >= self._interval_s
        )

    def start(self) -> None:
        """Resume from the stored state before the first batch (best effort: :meth:`make`
        resumes by itself if this failed)."""
        try:
            conn = self._connection()
            with snapshot(conn):
                self._frontier = self._resume(conn)
        except Exception as exc:
            self._failed("could not read the trail's checkpoints", exc)

    # -- making one ------------------------------------------------------------------------

    def make(self, tail: Tail) -> SignedCheckpoint | None:
        """Sign a checkpoint at ``tail`` (the chain's tail after our last commit) and deliver
        it; None when there is nothing new or it failed (counted, logged)."""
        head_id, head_hash = tail
        try:
            conn = self._connection()
            with snapshot(conn):
                frontier = self._catch_up(conn, head_id)
                if frontier is None:
                    return None
                origin_id = self._origin(conn)
            note = self._sign(origin_id, frontier, head_hash)
        except Exception as exc:
            self._failed("could not make a checkpoint", exc)
            return None
        self._deliver(note, frontier)
        return note

    def _connection(self) -> AnyConnection:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _origin(self, conn: AnyConnection) -> str:
        if self._trail_id is None:
            self._trail_id = trail_id(conn)
        return self._trail_id

    def _resume(self, conn: AnyConnection) -> Frontier:
        origin = f"audit-engine/{self._origin(conn)}"
        public = self._key.public_key()
        rows = conn.execute(
            f"SELECT head_id, head_hash, merkle, note FROM {CHECKPOINTS} ORDER BY id DESC LIMIT ?",
            (_RESUME_LOOKBACK,),
        ).fetchall()
        for head_id, head_hash, merkle, note in rows:
            try:
                signed = self._notes.verify(note, SIGNING_NOTE_KEY, public)
                frontier = Frontier.from_text(merkle)
            except (self._notes.CheckpointError, FrontierError):
                continue  # another key's, or damaged: not a starting point
            if (
                signed.origin == origin
                and signed.size == frontier.size
                and signed.root == frontier.root()
                and signed.head == f"{frontier.head_id} {head_hash}"
                and frontier.head_id == head_id
            ):
                self.signed_head = max(self.signed_head, frontier.head_id)
                return frontier
        return anchor_frontier(conn)

    def _catch_up(self, conn: AnyConnection, upto: int) -> Frontier | None:
        """The frontier grown to row ``upto``, in the caller's snapshot (None: it is past it)."""
        if self._frontier is None:
            self._frontier = self._resume(conn)
        anchor = anchor_frontier(conn)
        if anchor.head_id > self._frontier.head_id:
            self._frontier = anchor  # a purge deleted rows we had not read yet
        frontier = self._frontier
        if upto < frontier.head_id:
            return None  # another writer's checkpoint is ahead of our tail
        if upto > frontier.head_id:
            before = frontier.size
            try:
                frontier.extend(data for _, data in leaves(conn, frontier.head_id, upto))
            finally:
                self.leaves_read += frontier.size - before
        return frontier

    def _sign(self, origin_id: str, frontier: Frontier, head_hash: str) -> SignedCheckpoint:
        root = frontier.root()
        when = utcnow().isoformat()
        checkpoint = self._notes.Checkpoint(
            origin=f"audit-engine/{origin_id}",
            size=frontier.size,
            root=root,
            head=f"{frontier.head_id} {head_hash}",
            time=when,
        )
        return SignedCheckpoint(
            trail_id=origin_id,
            size=frontier.size,
            head_id=frontier.head_id,
            head_hash=head_hash,
            root=root.hex(),
            time=when,
            note=self._notes.sign(checkpoint, SIGNING_NOTE_KEY, self._key),
        )

    # -- where it goes ---------------------------------------------------------------------

    def _deliver(self, checkpoint: SignedCheckpoint, frontier: Frontier) -> None:
        # The checkpoint counts as made whatever fails below: the next one covers it again.
        self.signed_head = checkpoint.head_id
        self._last_time = self._clock()
        self.made += 1
        self.last = checkpoint
        if self._log_path is not None:
            try:
                append_line(self._log_path, checkpoint)
            except OSError as exc:
                self._failed(f"could not append a checkpoint to {self._log_path}", exc)
        if self._callback is not None:
            try:
                self._callback(checkpoint)
            except Exception as exc:  # the application's code: never into the writer
                self.callback_failures += 1
                self.last_error = f"on_checkpoint raised: {exc!r}"
                logger.exception(
                    "audit on_checkpoint callback raised; checkpoint of size %d kept anyway",
                    checkpoint.size,
                )
        try:
            self._store(checkpoint, frontier)
        except Exception as exc:
            self._failed("could not keep a checkpoint in the trail", exc)

    def _store(self, checkpoint: SignedCheckpoint, frontier: Frontier) -> None:
        conn = self._connection()
        begin_write(conn)
        try:
            row = conn.execute(f"SELECT max(id) FROM {CHECKPOINTS}").fetchone()
            values = (
                (row[0] or 0) + 1,
                checkpoint.head_id,
                checkpoint.head_hash,
                checkpoint.size,
                checkpoint.root,
                frontier.to_text(),
                checkpoint.note,
                checkpoint.time,
            )
            conn.execute(
                f"INSERT INTO {CHECKPOINTS} ({_COLUMNS}) VALUES ({', '.join('?' * len(values))})",
                values,
            )
            commit(conn)
        except BaseException:
            rollback_quietly(conn)
            raise

    def _failed(self, what: str, exc: BaseException) -> None:
        self.failures += 1
        self.last_error = f"{what}: {exc}"
        logger.warning("audit checkpoints: %s: %s", what, exc)
        if isinstance(exc, DATABASE_ERRORS):  # a server that restarted: a new connection next
            self._drop_connection()

    # -- lifecycle -------------------------------------------------------------------------

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def stats(self) -> dict[str, int]:
        """The counters :class:`~audit_engine.models.AuditStats` reports."""
        return {
            "checkpoints": self.made,
            "checkpoint_failures": self.failures,
            "checkpoint_callback_failures": self.callback_failures,
        }

    def close(self) -> None:
        """Close the connection. Never raises."""
        self._drop_connection()

    def reset_after_fork(self) -> None:
        """In a forked child: the parent's connection is never used nor closed here; the child
        resumes from the trail."""
        if self._conn is not None:
            forks.keep_inherited(self._conn)
        self._conn = None
        self._frontier = None


def from_settings(
    settings: AuditSettings,
    callback: CheckpointCallback | None,
    connect: Callable[[], AnyConnection],
    *,
    mode: str | None = None,
) -> Checkpointer | None:
    """The checkpointer ``settings`` ask for (None: no ``signing_key_file``), its key loaded;
    :class:`SettingsError` for a setting that cannot work. ``mode`` names a write mode without
    the write-behind writer (an injected connection), which makes no checkpoints."""
    if settings.signing_key_file is None:
        if callback is not None:
            raise SettingsError(
                "on_checkpoint needs signing_key_file (AUDIT_TRAIL_SIGNING_KEY_FILE): there is "
                "no checkpoint to pass it without a key to sign with"
            )
        if settings.checkpoint_file is not None:
            raise SettingsError(
                f"checkpoint_file {settings.checkpoint_file} is set but signing_key_file is "
                "not: the writer signs checkpoints only with a key (set "
                "AUDIT_TRAIL_SIGNING_KEY_FILE too)"
            )
        return None
    if settings.checkpoint_file is None and callback is None:
        raise SettingsError(
            "signing_key_file is set but neither checkpoint_file nor an on_checkpoint callback "
            "is: a signed checkpoint must go somewhere outside the database (set "
            "AUDIT_TRAIL_CHECKPOINT_FILE or pass AuditService(on_checkpoint=...))"
        )
    if mode is None and not settings.async_writes:
        mode = "async_writes=False"
    if mode is not None:
        # Checkpoints are the writer thread's work: it knows when rows are committed.
        raise SettingsError(
            f"signing_key_file needs the write-behind writer: {mode} makes no signed "
            "checkpoints (unset signing_key_file, or write asynchronously)"
        )
    if settings.checkpoint_file is not None:
        check_log_file(settings.checkpoint_file, settings)
    key = load_signing_key(settings.signing_key_file)
    return Checkpointer(
        connect,
        key,
        log_path=settings.checkpoint_file,
        callback=callback,
        every=settings.checkpoint_every,
        interval_s=settings.checkpoint_interval,
    )
