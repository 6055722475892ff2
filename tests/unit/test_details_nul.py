"""``details`` never hold U+0000: a PostgreSQL trail cannot store it (text and jsonb refuse it), and
an entry record() accepted must be storable on either backend. A backslash followed by ``u0000``
is ordinary text and is kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from audit_engine import AuditEntry, AuditService, AuditStore


@pytest.mark.parametrize(
    ("details", "place"),
    [
        ({"note": "a\x00b"}, "details.note"),
        ({"tags": ["ok", "\x00"]}, "details.tags[1]"),
        ({"deep": {"k": "\x00"}}, "details.deep.k"),
        ({"key\x00": 1}, "details"),
    ],
)
def test_a_nul_character_in_details_is_refused_naming_its_place(
    details: dict[str, Any], place: str, db_path: Path
) -> None:
    message = f"{place} contains the NUL character (U+0000), which a PostgreSQL trail cannot store"
    with pytest.raises(ValueError, match="NUL character") as raised:
        AuditEntry(action="note.save", details=details)
    assert message in str(raised.value)
    with AuditService(db_path, cleanup_enabled=False) as audit:  # record()'s fast path too
        with pytest.raises(ValueError, match="NUL character") as raised:
            audit.record(action="note.save", details=details)
        assert message in str(raised.value)
    assert audit.stats().accepted == 0


def test_a_backslash_before_u0000_is_ordinary_text_on_both_backends(trail_db: str | Path) -> None:
    details = {"path": "C:\\u0000\\x", "escaped": "\\u0000"}
    with AuditService(trail_db, cleanup_enabled=False) as audit:
        audit.record(action="note.save", details=details)
    with AuditStore(trail_db) as store:
        (entry,) = store.query()
        assert entry.details == details
        assert store.verify().ok
