"""How a writer hashes new rows — unkeyed (chain version "1") or keyed ("2") — and the chain
versions table that records it.

Every write (the writer's sink, synchronous writes, an injected connection, copy, replay) links
its rows with a :class:`Linker`: :data:`UNKEYED`, or the first key of the chain key file. The
table ``audit_chain_versions(first_id, version, key_id)`` says which rows each hashed: when the
trail's newest range is not what this writer writes (unkeyed to keyed, a rotated key), the
write records a new range from ``tail + 1`` in the same transaction as its rows
(:func:`ensure_version`). Never back: an unkeyed writer on a keyed trail is refused
(:func:`refuse_unkeyed`), at start and at each write, since unkeyed rows after keyed ones are
exactly what a forger without the key would add.

The SQL here runs on a plain sqlite3 connection (``?``) and on a psycopg one (``%s``): the
caller passes its parameter ``mark``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit_engine.errors import AuditStoreError
from audit_engine.storage import chainloops
from audit_engine.storage.keys import ChainKeys, load_chain_keys

__all__ = [
    "UNKEYED",
    "Linker",
    "VersionRow",
    "ensure_version",
    "linker_for",
    "load_linker",
    "newest_version",
    "refuse_unkeyed",
    "versions_known_at",
]

VERSIONS_TABLE = "audit_chain_versions"
_NEWEST_SQL = (
    f"SELECT first_id, version, key_id FROM {VERSIONS_TABLE} ORDER BY first_id DESC LIMIT 1"
)
# (first_id, version, key_id): the newest range of the chain.
VersionRow = tuple[int, str, str | None]


@dataclass(frozen=True)
class Linker:
    """What new rows are hashed with: the chain version, and for the keyed one the key."""

    version: str = chainloops.CHAIN_VERSION
    key_id: str | None = None
    key: bytes | None = field(default=None, repr=False)

    @property
    def keyed(self) -> bool:
        return self.key is not None

    def link_into(
        self, params: list[Any], values: Any, tail_id: int, tail_hash: str
    ) -> tuple[int, str]:
        """Link ``values`` after the tail into ``params`` (see ``chain.link_into``)."""
        if self.key is None:
            result: tuple[int, str] = chainloops.link_into(params, values, tail_id, tail_hash)
        else:
            result = chainloops.keyed_link_into(params, values, tail_id, tail_hash, self.key)
        return result


UNKEYED = Linker()


def linker_for(keys: ChainKeys | None) -> Linker:
    """The linker of a chain key file's writing key (its first), or :data:`UNKEYED`."""
    if keys is None:
        return UNKEYED
    return Linker(version=chainloops.KEYED_VERSION, key_id=keys.writer.id, key=keys.writer.secret)


def load_linker(chain_key_file: str | os.PathLike[str] | None) -> Linker:
    """The linker for the setting ``chain_key_file`` (None: unkeyed)."""
    return linker_for(None if chain_key_file is None else load_chain_keys(Path(chain_key_file)))


def newest_version(conn: Any, mark: str = "?") -> VersionRow | None:
    """The newest row of the chain versions table, or None when it has none."""
    del mark  # no parameters; the argument keeps the call sites alike
    row = conn.execute(_NEWEST_SQL).fetchone()
    if row is None:
        return None
    return int(row[0]), str(row[1]), None if row[2] is None else str(row[2])


def refuse_unkeyed(newest: VersionRow | None, linker: Linker) -> None:
    """Raise :class:`AuditStoreError` when ``linker`` is unkeyed and the trail is keyed."""
    if linker.keyed or newest is None or newest[1] == chainloops.CHAIN_VERSION:
        return
    raise AuditStoreError(
        f"this trail is keyed from id {newest[0]} on (key {newest[2]}): set chain_key_file "
        "(AUDIT_TRAIL_CHAIN_KEY_FILE, or --chain-key-file) to write to it; a keyed trail never "
        "goes back to unkeyed rows"
    )


def versions_known_at(conn: Any, tail: tuple[int, str], linker: Linker, mark: str = "?") -> bool:
    """Whether the versions table says ``linker`` after ``tail``, read just before it.

    The tail first, then the table: a range is only ever recorded with rows that move the tail,
    so if the tail is still ``tail`` when a batch is appended after it (the guarded insert checks
    that), the table is still as read here. Refuses an unkeyed linker on a keyed trail.
    """
    newest = newest_version(conn, mark)
    refuse_unkeyed(newest, linker)
    if newest is None:
        return not linker.keyed
    return (newest[1], newest[2]) == (linker.version, linker.key_id)


def ensure_version(conn: Any, tail_id: int, linker: Linker, mark: str = "?") -> None:
    """Make the versions table say that rows from ``tail_id + 1`` on are hashed by ``linker``.

    Inside the write transaction, after the tail was read under its lock. Nothing to do when
    the newest range is already the linker's; a newest range no row was hashed with yet
    (``first_id > tail_id``) is replaced, else a range is added from ``tail_id + 1``.
    """
    newest = newest_version(conn, mark)
    refuse_unkeyed(newest, linker)
    wanted = (linker.version, linker.key_id)
    if newest is None:
        if linker.keyed:
            _insert(conn, tail_id + 1, linker, mark)
        return
    if (newest[1], newest[2]) == wanted:
        return
    if newest[0] > tail_id:
        conn.execute(
            f"UPDATE {VERSIONS_TABLE} SET version = {mark}, key_id = {mark} "
            f"WHERE first_id = {mark}",
            (linker.version, linker.key_id, newest[0]),
        )
        return
    _insert(conn, tail_id + 1, linker, mark)


def _insert(conn: Any, first_id: int, linker: Linker, mark: str) -> None:
    conn.execute(
        f"INSERT INTO {VERSIONS_TABLE} (first_id, version, key_id) VALUES ({mark}, {mark}, {mark})",
        (first_id, linker.version, linker.key_id),
    )
