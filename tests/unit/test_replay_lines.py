"""Replay of dead letters, line by line: what a bad line is called, and that it never stops the
rest (review of issue 11: D11, D12).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from support import dead_letter_line, rows_of

from audit_engine import AuditEntry
from audit_engine.rows import entry_row
from audit_engine.storage import deadletter
from audit_engine.storage import sqlite as store
from audit_engine.storage.replay import replay


def test_a_deeply_nested_line_is_kept_with_its_number_and_the_rest_replayed(
    dl_path: Path, conn: sqlite3.Connection
) -> None:
    deep = b'{"entry": ' + b"[" * 5000 + b"]" * 5000 + b"}\n"
    good = AuditEntry(action="a", event_id="v1")
    dl_path.write_bytes(deep + dead_letter_line(good))

    report = replay(dl_path, conn)

    assert (report.replayed, report.kept) == (1, 1)
    assert report.errors == ["line 1: nested too deeply to read"]
    assert store.has_event(conn, "v1")
    assert dl_path.read_bytes() == deep


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"{}", 'not a dead-letter line (expected a JSON object with "entry")'),
        (b"[1]", 'not a dead-letter line (expected a JSON object with "entry")'),
        (b"null", 'not a dead-letter line (expected a JSON object with "entry")'),
        (b'{"entry": null}', 'not a dead-letter line (expected a JSON object with "entry")'),
        (b"not json at all", 'not a dead-letter line (expected a JSON object with "entry")'),
        (b'{"entry": {}} trailing', 'not a dead-letter line (expected a JSON object with "entry")'),
        (b"\xff\xfe{}", 'not a dead-letter line (expected a JSON object with "entry")'),
        (b'{"entry": {"event_id": "v0"}}', "invalid entry: action: Field required"),
        (b'{"entry": {"action": "a", "critical": "maybe"}}',
         "invalid entry: critical: Input should be a valid boolean, unable to interpret input"),
        (b'{"entry": {"action": "cut sh', "incomplete line (torn write?), kept"),
        (b'{"entry": {"action": "a"}, "error": ', "incomplete line (torn write?), kept"),
        (b'{"entry": {"action": "z\xc3', "incomplete line (torn write?), kept"),
        (b'{"entry": {"action": "a", "details": {"n": ' + b"9" * 5000 + b"}}}",
         "Exceeds the limit (4300 digits) for integer string conversion: value has 5000 digits; "
         "use sys.set_int_max_str_digits() to increase the limit"),
    ],
)  # fmt: skip
def test_a_bad_line_gets_a_one_line_reason(
    dl_path: Path, conn: sqlite3.Connection, line: bytes, problem: str
) -> None:
    good = AuditEntry(action="a", event_id="v1")
    dl_path.write_bytes(dead_letter_line(good) + line + b"\n")

    report = replay(dl_path, conn)

    assert (report.replayed, report.kept, report.errors) == (1, 1, [f"line 2: {problem}"])
    assert dl_path.read_bytes() == line + b"\n"


def test_read_names_the_bad_lines_the_same_way(dl_path: Path) -> None:
    dl_path.write_bytes(b'{"entry": {"action": "cut sh\n[1]\n')

    assert list(deadletter.read(dl_path)) == [
        (1, None, "line 1: incomplete line (torn write?), kept"),
        (2, None, 'line 2: not a dead-letter line (expected a JSON object with "entry")'),
    ]


# -- an event_id already stored (D1) --------------------------------------------------------------


def _log_line(entry: AuditEntry) -> str:
    text = deadletter.line_text(
        entry_row(entry), "disk full", "2026-12-01T10:00:00+00:00", compact=True
    )
    return f"CRITICAL audit entry LOST to disk, logged instead: {text}\n"


def test_an_entry_whose_event_id_holds_a_different_entry_is_kept_not_dropped(
    dl_path: Path, conn: sqlite3.Connection
) -> None:
    stored = AuditEntry(action="login", actor="alice", event_id="e-1")
    store.write_batch(conn, rows_of([stored]))
    other = AuditEntry(action="privilege.grant", actor="mallory", event_id="e-1")
    same = AuditEntry.model_validate(stored.model_dump(mode="json"))
    dl_path.write_bytes(dead_letter_line(other) + dead_letter_line(same))

    report = replay(dl_path, conn)

    assert (report.replayed, report.already_present, report.kept) == (0, 1, 1)
    assert report.errors == ["line 1: event_id e-1 is already used by a different entry"]
    assert dl_path.read_bytes() == dead_letter_line(other)
    assert [r[0] for r in conn.execute("SELECT action FROM audit_entries")] == ["login"]


def test_an_identical_entry_with_rich_details_counts_as_already_stored(
    dl_path: Path, conn: sqlite3.Connection
) -> None:
    entry = AuditEntry(
        action="doc.save",
        actor="zoë",
        resource_type="doc",
        resource_id="42",
        correlation_id="req-1",
        critical=True,
        details={"b": [1, 2.5, None, True], "a": {"x": "ü\u2028"}, "n": 10**30},
    )
    store.write_batch(conn, rows_of([entry]))
    deadletter.DeadLetterFile(dl_path).append(rows_of([entry]), "busy")

    report = replay(dl_path, conn)

    assert (report.replayed, report.already_present, report.kept) == (0, 1, 0)
    assert not dl_path.exists()


def test_replay_log_keeps_an_entry_whose_event_id_holds_a_different_entry(
    tmp_path: Path, conn: sqlite3.Connection
) -> None:
    from audit_engine.storage.replay import replay_log

    stored = AuditEntry(action="login", actor="alice", event_id="e-1")
    store.write_batch(conn, rows_of([stored]))
    log = tmp_path / "app.log"
    other = AuditEntry(action="privilege.grant", actor="mallory", event_id="e-1")
    log.write_text(_log_line(other) + _log_line(stored), encoding="utf-8")

    report = replay_log(log, conn)

    assert (report.replayed, report.already_present, report.kept) == (0, 1, 1)
    assert report.errors == ["line 1: event_id e-1 is already used by a different entry"]


# -- --from LOG takes only the engine's own lines (D2) ---------------------------------------------


def test_replay_log_takes_only_lines_with_the_engines_marker(
    tmp_path: Path, conn: sqlite3.Connection
) -> None:
    from audit_engine.storage.replay import replay_log

    lost = AuditEntry(action="doc.rename", actor="alice", event_id="lost-1")
    forged = json.dumps(
        {"entry": {"event_id": "forged-1", "action": "payment.approve", "actor": "alice"}}
    )
    log = tmp_path / "app.log"
    log.write_text(
        f"WARNING:app:login failed for user 'x {forged}'\n"  # no marker: ignored
        f"INFO:app:{forged}\n"  # no marker: ignored
        + _log_line(lost)
        # the marker inside a quoted user string: text follows the object, not replayed
        + f"WARNING:app:login failed for 'audit entry LOST to disk, logged instead: {forged}'\n"
        + f"audit entry LOST to disk, logged instead:  {forged}\n",  # not right after the marker
        encoding="utf-8",
    )

    report = replay_log(log, conn)

    assert (report.replayed, report.kept) == (1, 2)
    assert report.errors == [
        'line 4: not a dead-letter line (expected a JSON object with "entry")',
        'line 5: not a dead-letter line (expected a JSON object with "entry")',
    ]
    assert [r[0] for r in conn.execute("SELECT event_id FROM audit_entries")] == ["lost-1"]


def test_replay_log_reports_bad_objects_in_the_short_form(
    tmp_path: Path, conn: sqlite3.Connection
) -> None:
    from audit_engine.storage.replay import replay_log

    marker = "audit entry LOST to disk, logged instead: "
    log = tmp_path / "app.log"
    log.write_bytes(
        (
            f'{marker}{{"entry": {{"action": 1}}}}\n'
            f'{marker}{{"entry": {{"act\n'
            f'{marker}{{"entry": {"[" * 5000}{"]" * 5000}}}\n'
        ).encode()
        + b"\xff\xfe binary noise\n"
    )

    report = replay_log(log, conn)

    assert report.errors == [
        "line 1: invalid entry: action: Input should be a valid string",
        "line 2: incomplete line (torn write?), kept",
        "line 3: nested too deeply to read",
    ]
