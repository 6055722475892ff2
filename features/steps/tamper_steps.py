"""Steps for features/integrity.feature: someone changes the trail behind the engine's back.

A forger edits the stored rows with another program's connection: ``sqlite3`` on a SQLite file,
:class:`trail_backend.ServerConnection` on a PostgreSQL URL (the same SQL runs on both). The
append-only guard stops accidents, not someone with the database: like them, every step here
takes it out of the way first (:func:`forgery.forger_connection`).
"""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from behave import when
from behave.runner import Context
from forgery import FIELDS, forger_connection, relink

from audit_engine.models import format_timestamp
from audit_engine.storage.anchors import anchor_hash
from audit_engine.storage.chain import GENESIS_HASH, row_hash

# -- tampering with the database file ---------------------------------------------------------
# `conn` is another program's connection with the guard lifted: sqlite3 on a file,
# trail_backend.ServerConnection on a URL (same SQL: ? placeholders, `details` the hashed text).


def _tamper(context: Context, *statements: tuple[str, tuple[Any, ...]]) -> None:
    with forger_connection(context.world.database) as conn:
        for sql, params in statements:
            conn.execute(sql, params)


def _move(conn: Any, old_id: int, new_id: int) -> None:
    conn.execute("UPDATE audit_entries SET id = ? WHERE id = ?", (new_id, old_id))


@when('someone changes the actor of entry {entry:d} to "{actor}" directly in the database file')
def when_edit_actor(context: Context, entry: int, actor: str) -> None:
    _tamper(context, ("UPDATE audit_entries SET actor = ? WHERE id = ?", (actor, entry)))


@when("someone deletes entry {entry:d} directly in the database file")
def when_delete_one(context: Context, entry: int) -> None:
    _tamper(context, ("DELETE FROM audit_entries WHERE id = ?", (entry,)))


@when("someone deletes entries {first:d} to {last:d} directly in the database file")
def when_delete_range(context: Context, first: int, last: int) -> None:
    _tamper(context, ("DELETE FROM audit_entries WHERE id BETWEEN ? AND ?", (first, last)))


@when("someone deletes the newest {count:d} entries directly in the database file")
def when_truncate(context: Context, count: int) -> None:
    _tamper(
        context,
        (
            "DELETE FROM audit_entries WHERE id IN "
            "(SELECT id FROM audit_entries ORDER BY id DESC LIMIT ?)",
            (count,),
        ),
    )


@when("someone swaps entries {first:d} and {second:d} directly in the database file")
def when_swap(context: Context, first: int, second: int) -> None:
    with forger_connection(context.world.database) as conn:
        _move(conn, first, -first)
        _move(conn, second, first)
        _move(conn, -first, second)


def _insert_forged(conn: Any, after: int) -> None:
    """Make room after entry ``after`` and insert an entry that links to it, hashed correctly."""
    later = conn.execute(
        "SELECT id FROM audit_entries WHERE id > ? ORDER BY id DESC", (after,)
    ).fetchall()
    for (row_id,) in later:  # newest first, so no id is ever taken twice
        _move(conn, row_id, row_id + 1)
    timestamp, prev_hash = conn.execute(
        "SELECT timestamp, hash FROM audit_entries WHERE id = ?", (after,)
    ).fetchone()
    fields = (
        str(uuid.uuid4()),
        timestamp,
        "alice",
        "note.delete",
        "delete",
        "success",
        "note",
        "note-forged",
        None,
        "{}",
        0,
    )
    body = (after + 1, *fields, prev_hash)
    # "? <> 0" stores the flag as either backend keeps it (SQLite 0/1, PostgreSQL a boolean).
    values = ["?"] * (len(body) + 1)
    values[len(fields)] = "? <> 0"
    conn.execute(
        f"INSERT INTO audit_entries (id, {FIELDS}, prev_hash, hash) VALUES ({', '.join(values)})",
        (*body, row_hash(body)),
    )


def _rehash_after(conn: Any, entry: int) -> None:
    """Recompute prev_hash and hash of every entry after ``entry``, as a careful forger would."""
    (prev_hash,) = conn.execute("SELECT hash FROM audit_entries WHERE id = ?", (entry,)).fetchone()
    relink(conn, entry + 1, prev_hash, row_hash)


@when("someone inserts a forged entry after entry {entry:d} directly in the database file")
def when_insert_forged(context: Context, entry: int) -> None:
    with forger_connection(context.world.database) as conn:
        _insert_forged(conn, entry)


@when(
    "someone inserts a forged entry after entry {entry:d} and recomputes every hash after it "
    "directly in the database file"
)
def when_rewrite_history(context: Context, entry: int) -> None:
    with forger_connection(context.world.database) as conn:
        _insert_forged(conn, entry)
        _rehash_after(conn, entry + 1)


# -- forged purge anchors ---------------------------------------------------------------------


def _anchor_over(context: Context, last: int, *, rehashed: bool) -> None:
    """Delete entries 1..last and claim a purge replaced them.

    Not rehashed: the anchor row a version-2 purge wrote. Rehashed: the forger also fills in
    the anchor's chain fields, with a newest timestamp just before a cutoff that the entries
    still in the table do not contradict.
    """
    with forger_connection(context.world.database) as conn:
        last_hash, stamp = conn.execute(
            "SELECT hash, timestamp FROM audit_entries WHERE id = ?", (last,)
        ).fetchone()
        now = datetime.now(UTC)
        cutoff = datetime.fromisoformat(stamp) + timedelta(microseconds=1)
        values = (
            1,
            last,
            last_hash,
            last,
            stamp,
            format_timestamp(cutoff),
            None,
            now.isoformat(),
            GENESIS_HASH,
        )
        conn.execute("DELETE FROM audit_entries WHERE id <= ?", (last,))
        if rehashed:
            conn.execute(
                "INSERT INTO audit_anchors (id, last_deleted_id, last_deleted_hash, "
                "rows_deleted, newest_purged, cutoff, older_than_us, created_at, prev_hash, "
                "hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*values, anchor_hash(values)),
            )
        else:
            conn.execute(
                "INSERT INTO audit_anchors (id, last_deleted_id, last_deleted_hash, rows_deleted, "
                "cutoff, created_at) VALUES (1, ?, ?, ?, ?, ?)",
                (last, last_hash, last, format_timestamp(now), now.isoformat()),
            )


@when(
    "someone deletes entries 1 to {last:d} and adds a purge anchor for entry {anchor:d} "
    "directly in the database file"
)
def when_forged_anchor(context: Context, last: int, anchor: int) -> None:
    assert last == anchor
    _anchor_over(context, last, rehashed=False)


@when(
    "someone deletes entries 1 to {last:d} and adds a purge anchor with a recomputed hash "
    "directly in the database file"
)
def when_rehashed_anchor(context: Context, last: int) -> None:
    _anchor_over(context, last, rehashed=True)
