"""Tamper evidence: what the keyed chain, signed checkpoints and proofs cost (issue 14).

* ``KeyedVerify``: ``AuditStore.verify()`` over 100 000 rows, unkeyed (SHA-256 links) and keyed
  (HMAC-SHA256 links under a chain key), and over the keyed trail against its checkpoint log
  (``verify(checkpoints=..., public_key=...)``: ten signed checkpoints, every root recomputed);
  ``AuditStore.prove()`` of one entry of that trail.
* ``Checkpoint``: one checkpoint as the writer makes it every ``checkpoint_every`` (10 000)
  entries: read back the leaves of the 10 000 rows since the last one, grow the Merkle frontier,
  sign (Ed25519), append and fsync the checkpoint file, store it in the trail.

The trails are written through ``AuditService`` (the public API, as an app writes them: the
keyed one with ``chain_key_file``, checkpoints with ``signing_key_file``), in ``setup_cache``,
once per class. Keys come from ``generate_keys`` (what ``audit-engine keygen`` runs). Numbers
and how to read them: docs/performance.md, "Tamper evidence: what it costs".
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from audit_engine import AuditService, AuditSettings, AuditStore
from audit_engine.storage import sqlite as store
from audit_engine.storage.checkpointing import Checkpointer
from audit_engine.storage.keys import generate_keys, load_signing_key

from .bench_record import _fields  # the realistic row: a user saves a note

# The suite measures the defaults: AUDIT_TRAIL_* variables in a developer's shell must not change
# them (asv imports this module in processes of its own, so this touches nothing else).
for _name in [name for name in os.environ if name.upper().startswith("AUDIT_TRAIL_")]:
    del os.environ[_name]

ROWS = 100_000
ROUNDS = 3  # the track_* rates are the median of this many runs
EVERY = 10_000  # checkpoint_every's default
LARGE_QUEUE = 200_000  # record() never waits for room while the trail is filled
PROVEN_ID = ROWS // 2  # the entry proved: a long audit path, from the middle of the tree


def fill(path: Path, rows: int, first: int = 0, **settings: Any) -> None:
    """Record ``rows`` entries into ``path`` through a service with ``settings``."""
    config = AuditSettings(
        database=path, level="all", cleanup_enabled=False, queue_maxsize=LARGE_QUEUE, **settings
    )
    with AuditService(config) as audit:
        for i in range(first, first + rows):
            audit.record(**_fields(i))
        if not audit.flush():
            raise RuntimeError(f"flush() did not complete: {audit.stats()}")


def _rate(path: Path, **verify: Any) -> float:
    """Rows verified per second (median of ROUNDS runs); the chain must check out whole."""
    rates = []
    with AuditStore(path, chain_key_file=verify.pop("chain_key_file", None)) as audit_store:
        for _ in range(ROUNDS):
            started = time.perf_counter()
            report = audit_store.verify(**verify)
            elapsed = time.perf_counter() - started
            if not report.ok or report.rows_checked != ROWS:
                raise RuntimeError(f"verify() did not check the whole chain: {report}")
            rates.append(report.rows_checked / elapsed)
    return statistics.median(rates)


class KeyedVerify:
    """verify() over 100 000 rows unkeyed, keyed, and keyed against a checkpoint log; prove()."""

    timeout = 600

    def setup_cache(self) -> dict[str, str]:
        # asv runs setup_cache in a directory of its own, kept until this class is done.
        here = Path("keyed").resolve()
        chain_key, signing_key, public_key = generate_keys(here / "keys")
        fill(here / "unkeyed.db", ROWS)
        fill(
            here / "keyed.db",
            ROWS,
            chain_key_file=chain_key,
            signing_key_file=signing_key,
            checkpoint_file=here / "checkpoints.jsonl",
            checkpoint_every=EVERY,
        )
        return {
            "unkeyed": str(here / "unkeyed.db"),
            "keyed": str(here / "keyed.db"),
            "chain_key": str(chain_key),
            "public_key": str(public_key),
            "checkpoints": str(here / "checkpoints.jsonl"),
        }

    setup_cache.timeout = 600  # type: ignore[attr-defined]

    def track_verify_rows_per_s_unkeyed(self, paths: dict[str, str]) -> float:
        return _rate(Path(paths["unkeyed"]))

    track_verify_rows_per_s_unkeyed.unit = "rows/s"  # type: ignore[attr-defined]

    def track_verify_rows_per_s_keyed(self, paths: dict[str, str]) -> float:
        """The keyed chain's target: at least 300 000 rows/s."""
        return _rate(Path(paths["keyed"]), chain_key_file=paths["chain_key"])

    track_verify_rows_per_s_keyed.unit = "rows/s"  # type: ignore[attr-defined]

    def track_verify_rows_per_s_keyed_with_checkpoints(self, paths: dict[str, str]) -> float:
        """The same trail held to its ten signed checkpoints as well."""
        return _rate(
            Path(paths["keyed"]),
            chain_key_file=paths["chain_key"],
            checkpoints=paths["checkpoints"],
            public_key=paths["public_key"],
        )

    track_verify_rows_per_s_keyed_with_checkpoints.unit = "rows/s"  # type: ignore[attr-defined]

    def time_prove_100k(self, paths: dict[str, str]) -> None:
        """One entry's inclusion proof against the newest checkpoint of the log."""
        with AuditStore(paths["keyed"]) as audit_store:
            (entry,) = audit_store.query(resource_id=str(PROVEN_ID - 1))
            audit_store.prove(entry.event_id, checkpoints=paths["checkpoints"])


class Checkpoint:
    """One checkpoint after 10 000 new rows: read back, frontier, sign, file, trail."""

    timeout = 300
    number = 1  # each run needs the state setup() restores
    repeat = (3, 10, 60.0)

    def setup_cache(self) -> dict[str, str]:
        here = Path("checkpoint").resolve()
        _, signing_key, _ = generate_keys(here / "keys")
        base = here / "base.db"
        # A checkpoint stored at 90 000 rows, then 10 000 more: the next one is due.
        fill(
            base,
            ROWS - EVERY,
            signing_key_file=signing_key,
            checkpoint_file=here / "base.jsonl",
            checkpoint_every=EVERY,
        )
        fill(base, EVERY, first=ROWS - EVERY)
        return {"base": str(base), "signing_key": str(signing_key)}

    setup_cache.timeout = 300  # type: ignore[attr-defined]

    def setup(self, paths: dict[str, str]) -> None:
        work = Path(paths["base"]).with_name("work.db")
        shutil.copyfile(paths["base"], work)
        work.chmod(0o600)  # as the engine makes its trails: it warns about one others can read
        self.log = work.with_suffix(".jsonl")
        self.log.unlink(missing_ok=True)
        self.conn = store.open_connection(work)
        self.tail = self.conn.execute(
            "SELECT id, hash FROM audit_entries ORDER BY id DESC LIMIT 1"
        ).fetchone()
        self.checkpointer = Checkpointer(
            lambda: store.open_connection(work),
            load_signing_key(paths["signing_key"]),
            log_path=self.log,
            callback=None,
            every=EVERY,
            interval_s=3600.0,
        )
        self.checkpointer.start()  # resumes from the stored checkpoint at 90 000

    def teardown(self, paths: dict[str, str]) -> None:
        self.checkpointer.close()
        self.conn.close()

    def time_checkpoint_after_10k_rows(self, paths: dict[str, str]) -> None:
        if self.checkpointer.make(tuple(self.tail)) is None:
            raise RuntimeError(f"no checkpoint was made: {self.checkpointer.last_error}")
