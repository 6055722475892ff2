"""The dead-letter file: one JSON line per entry that could not be committed."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from support import rows_of

from audit_engine import AuditEntry, Operation
from audit_engine.errors import AuditStoreError
from audit_engine.rows import entry_row
from audit_engine.storage import deadletter
from audit_engine.storage import sqlite as store
from audit_engine.storage.deadletter import DeadLetterFile
from audit_engine.storage.replay import ReplayReport, replay, replay_log


def _entries(count: int, prefix: str = "e") -> list[AuditEntry]:
    return [
        AuditEntry(action="doc.save", actor="zoë", details={"n": n}, event_id=f"{prefix}-{n}")
        for n in range(count)
    ]


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


# -- path_for ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("database", "expected"),
    [
        ("audit.db", "audit.db.deadletter.jsonl"),
        ("/var/lib/app/audit.sqlite3", "/var/lib/app/audit.sqlite3.deadletter.jsonl"),
        (Path("data/trail"), "data/trail.deadletter.jsonl"),
    ],
)
def test_path_for_appends_the_suffix(database: str | Path, expected: str) -> None:
    assert deadletter.path_for(database) == Path(expected)


# -- append ------------------------------------------------------------------------------------


def test_append_writes_one_json_line_per_entry(dl_path: Path) -> None:
    entries = _entries(3)
    before = datetime.now(UTC)

    DeadLetterFile(dl_path).append(rows_of(entries), "disk I/O error")

    after = datetime.now(UTC)
    records = [json.loads(line) for line in _lines(dl_path)]
    assert [r["entry"] for r in records] == [e.model_dump(mode="json") for e in entries]
    assert {r["error"] for r in records} == {"disk I/O error"}
    assert all(set(r) == {"entry", "error", "failed_at"} for r in records)
    failed_at = {datetime.fromisoformat(r["failed_at"]) for r in records}
    assert len(failed_at) == 1  # one append, one failure time
    [moment] = failed_at
    assert moment.utcoffset() == timedelta(0)
    assert before <= moment <= after


def test_append_keeps_non_ascii_text_readable(dl_path: Path) -> None:
    DeadLetterFile(dl_path).append(rows_of(_entries(1)), "échec")

    text = dl_path.read_text(encoding="utf-8")
    assert '"actor": "zoë"' in text
    assert '"error": "échec"' in text


def test_new_file_is_private(dl_path: Path) -> None:
    DeadLetterFile(dl_path).append(rows_of(_entries(1)), "boom")

    assert dl_path.stat().st_mode & 0o777 == 0o600


def test_append_adds_to_the_end_of_the_file(dl_path: Path) -> None:
    file = DeadLetterFile(dl_path)
    file.append(rows_of(_entries(2, "first")), "one")
    first_content = dl_path.read_bytes()

    file.append(rows_of(_entries(1, "second")), "two")
    DeadLetterFile(dl_path).append(
        rows_of(_entries(1, "third")), "three"
    )  # a new writer appends too

    assert dl_path.read_bytes().startswith(first_content)
    ids = [json.loads(line)["entry"]["event_id"] for line in _lines(dl_path)]
    assert ids == ["first-0", "first-1", "second-0", "third-0"]


def test_append_from_several_threads_keeps_lines_whole(dl_path: Path) -> None:
    file = DeadLetterFile(dl_path)
    threads_count, appends_each, batch = 8, 20, 3
    start = threading.Barrier(threads_count, timeout=10)
    # Big lines make an interleaved write easy to spot.
    padding = "x" * 5000

    def work(worker: int) -> None:
        start.wait()
        for n in range(appends_each):
            entries = [
                AuditEntry(action="a", event_id=f"w{worker}-{n}-{k}", details={"pad": padding})
                for k in range(batch)
            ]
            file.append(rows_of(entries), f"worker {worker}")

    threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)

    results = list(deadletter.read(dl_path))
    assert all(entry is not None for _, entry, _ in results), [e for _, x, e in results if not x]
    ids = [entry.event_id for _, entry, _ in results if entry is not None]
    expected = {
        f"w{w}-{n}-{k}"
        for w in range(threads_count)
        for n in range(appends_each)
        for k in range(batch)
    }
    assert len(ids) == len(expected)
    assert set(ids) == expected
    # One append's lines stay together, in order.
    for position in range(0, len(ids), batch):
        group = ids[position : position + batch]
        assert [i.rsplit("-", 1)[0] for i in group] == [group[0].rsplit("-", 1)[0]] * batch
        assert [i.rsplit("-", 1)[1] for i in group] == ["0", "1", "2"]


# -- read --------------------------------------------------------------------------------------


def test_read_round_trips_entries_and_errors(dl_path: Path) -> None:
    entries = [
        AuditEntry(
            action="invoice.pay",
            actor="zoë",
            operation=Operation.UPDATE,
            timestamp=datetime(2024, 1, 1, 12, tzinfo=UTC),
            details={"amount": 12.5, "lines": [1, 2]},
            critical=True,
        ),
        AuditEntry(action="b"),
    ]
    file = DeadLetterFile(dl_path)
    file.append(rows_of(entries[:1]), "database is locked")
    file.append(rows_of(entries[1:]), "disk full")

    assert list(deadletter.read(dl_path)) == [
        (1, entries[0], "database is locked"),
        (2, entries[1], "disk full"),
    ]


def test_read_accepts_details_larger_than_the_default_limit(dl_path: Path) -> None:
    big = AuditEntry.model_validate(
        {"action": "a", "details": {"blob": "x" * 100_000}},
        context={"max_details_bytes": 200_000},
    )
    DeadLetterFile(dl_path).append(rows_of([big]), "too slow")

    [(_, entry, _)] = deadletter.read(dl_path)

    assert entry == big


def test_read_reports_bad_lines_with_their_numbers_and_skips_blank_lines(dl_path: Path) -> None:
    good = AuditEntry(action="ok")
    good_line = json.dumps({"entry": good.model_dump(mode="json"), "error": "boom"})
    dl_path.write_text(
        "\n".join(
            [
                good_line,  # 1
                "not json at all",  # 2
                "",  # 3: blank
                json.dumps({"error": "no entry key"}),  # 4
                "   ",  # 5: blank
                json.dumps({"entry": {"action": ""}, "error": "invalid"}),  # 6
                json.dumps([1, 2, 3]),  # 7
                json.dumps({"entry": good.model_dump(mode="json")}),  # 8: no error key
                '{"entry": {"action": "torn',  # 9: a write cut short
            ]
        )
        + "\n",
        encoding="utf-8",
    )

    results = list(deadletter.read(dl_path))

    assert [(number, entry) for number, entry, _ in results] == [
        (1, good),
        (2, None),
        (4, None),
        (6, None),
        (7, None),
        (8, good),
        (9, None),
    ]
    errors = {number: error for number, _, error in results}
    assert errors[1] == "boom"
    assert errors[8] == ""
    for number in (2, 4, 6, 7, 9):
        assert errors[number].startswith(f"line {number}: ")
    assert errors[4] == 'line 4: not a dead-letter line (expected a JSON object with "entry")'
    assert "action" in errors[6]  # the invalid field is named


def test_read_of_an_empty_file_yields_nothing(dl_path: Path) -> None:
    dl_path.write_text("")

    assert list(deadletter.read(dl_path)) == []


def test_read_reports_a_line_with_invalid_utf8_as_bad(dl_path: Path) -> None:
    good = AuditEntry(action="ok", actor="zoë")
    DeadLetterFile(dl_path).append(rows_of([good]), "boom")
    torn = json.dumps({"entry": {"action": "x", "actor": "zoë"}}, ensure_ascii=False).encode()
    with dl_path.open("ab") as file:
        file.write(torn[: torn.index("ë".encode()) + 1])  # cut inside the two-byte "ë"

    results = list(deadletter.read(dl_path))

    assert results[0] == (1, good, "boom")
    assert results[1][:2] == (2, None)


# -- torn lines (issue 11, item 7) ---------------------------------------------------------------


def _store(db_path: Path) -> sqlite3.Connection:
    return store.open_connection(db_path)


def test_an_append_after_a_torn_line_starts_on_a_fresh_line(dl_path: Path, db_path: Path) -> None:
    file = DeadLetterFile(dl_path)
    [before, after] = _entries(2)
    file.append(rows_of([before]), "disk full")
    with dl_path.open("ab") as torn:
        torn.write(b'{"entry": {"action": "cut sh')  # a write cut short, no newline

    file.append(rows_of([after]), "disk full")

    assert [number for number, _, _ in deadletter.read(dl_path)] == [1, 2, 3]
    conn = _store(db_path)
    try:
        report = replay(dl_path, conn)
    finally:
        conn.close()
    assert (report.replayed, report.kept) == (2, 1)
    assert report.errors == ["line 2: incomplete line (torn write?), kept"]
    assert dl_path.read_bytes() == b'{"entry": {"action": "cut sh\n'  # the fragment is kept


def test_a_failed_write_is_cut_off_again(dl_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = DeadLetterFile(dl_path)
    file.append(rows_of(_entries(1, "kept")), "first")
    before = dl_path.read_bytes()
    real_write = os.write

    def write(fd: int, data: bytes) -> int:
        if len(data) > 20:
            real_write(fd, bytes(data)[:20])  # half a line reaches the disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(deadletter.os, "write", write)
    with pytest.raises(OSError, match="No space left on device"):
        file.append(rows_of(_entries(1, "lost")), "second")

    assert dl_path.read_bytes() == before


def test_replay_recovers_an_entry_glued_to_a_torn_line(dl_path: Path, db_path: Path) -> None:
    # What an older version wrote after a partial append: the next entry on the torn line.
    [glued] = _entries(1, "glued")
    line = json.dumps({"entry": glued.model_dump(mode="json"), "error": "x"}).encode()
    dl_path.write_bytes(b'{"entry": {"act' + line + b"\n")
    conn = _store(db_path)
    try:
        report = replay(dl_path, conn)
        assert store.has_event(conn, glued.event_id)
    finally:
        conn.close()
    assert (report.replayed, report.kept) == (1, 1)
    assert report.errors == ["line 1: incomplete line (torn write?), kept"]
    assert dl_path.read_bytes() == b'{"entry": {"act\n'


# -- the lock is never waited on without bound; side files (issue 11, item 5) ---------------------


@contextlib.contextmanager
def _lock_held_elsewhere(path: Path) -> Iterator[None]:
    """The dead-letter lock held through another open file (as another process would)."""
    fd = os.open(f"{path}.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def test_an_append_that_cannot_get_the_lock_in_time_writes_a_private_side_file(
    dl_path: Path,
) -> None:
    entries = _entries(2)
    with _lock_held_elsewhere(dl_path):
        started = time.monotonic()
        written = DeadLetterFile(dl_path, lock_wait_s=0.2).append(rows_of(entries), "locked")
        assert 0.2 <= time.monotonic() - started < 2

    assert written == Path(f"{dl_path}.{os.getpid()}-1.jsonl")
    assert not dl_path.exists()
    assert written.stat().st_mode & 0o777 == 0o600
    assert [entry for _, entry, _ in deadletter.read(written)] == entries
    assert deadletter.side_files(dl_path) == [written]
    assert not list(dl_path.parent.glob("*.part"))


def test_an_aborted_append_does_not_wait_for_the_lock(dl_path: Path) -> None:
    abort = threading.Event()
    abort.set()
    with _lock_held_elsewhere(dl_path):
        started = time.monotonic()
        written = DeadLetterFile(dl_path, lock_wait_s=30).append(
            rows_of(_entries(1)), "x", abort=abort
        )
        assert time.monotonic() - started < 1
    assert written.name.endswith(f".{os.getpid()}-1.jsonl")


def test_side_files_never_reuse_a_name(dl_path: Path) -> None:
    taken = Path(f"{dl_path}.{os.getpid()}-1.jsonl")
    taken.write_text("left by a dead process with our pid\n")
    Path(f"{dl_path}.{os.getpid()}-2.jsonl.part").write_text("a crash mid-write\n")
    with _lock_held_elsewhere(dl_path):
        written = DeadLetterFile(dl_path, lock_wait_s=0).append(rows_of(_entries(1)), "x")
    assert written == Path(f"{dl_path}.{os.getpid()}-3.jsonl")
    assert taken.read_text() == "left by a dead process with our pid\n"


def test_replay_reads_the_side_files_and_merges_what_it_keeps(dl_path: Path, db_path: Path) -> None:
    main, aside = _entries(2, "main"), _entries(2, "aside")
    DeadLetterFile(dl_path).append(rows_of(main), "disk full")
    with _lock_held_elsewhere(dl_path):
        side = DeadLetterFile(dl_path, lock_wait_s=0).append(rows_of(aside), "locked")
    with side.open("ab") as file:
        file.write(b"not json\n")
    conn = _store(db_path)
    try:
        report = replay(dl_path, conn)
        stored = [row[0] for row in conn.execute("SELECT event_id FROM audit_entries ORDER BY id")]
    finally:
        conn.close()

    assert stored == [e.event_id for e in main + aside]
    assert (report.replayed, report.already_present, report.kept) == (4, 0, 1)
    assert report.errors == [
        (f'{side.name} line 3: not a dead-letter line (expected a JSON object with "entry")')
    ]
    assert report.files == [str(dl_path), str(side)]
    assert not side.exists()
    assert dl_path.read_bytes() == b"not json\n"


def test_replay_with_nothing_to_replay_reports_no_files(dl_path: Path, db_path: Path) -> None:
    conn = _store(db_path)
    try:
        report = replay(dl_path, conn)
    finally:
        conn.close()
    assert report == ReplayReport(replayed=0, already_present=0, kept=0, errors=[], files=[])
    assert not Path(f"{dl_path}.lock").exists()


# -- modes (issue 11, item 23) -------------------------------------------------------------------


def test_a_replay_rewrite_is_private_whatever_tmp_file_was_there(
    dl_path: Path, db_path: Path
) -> None:
    DeadLetterFile(dl_path).append(rows_of(_entries(1)), "x")
    with dl_path.open("ab") as file:
        file.write(b"unreadable, kept\n")
    stale = dl_path.with_name(dl_path.name + ".tmp")
    stale.write_text("stale")
    stale.chmod(0o666)
    conn = _store(db_path)
    try:
        replay(dl_path, conn)
    finally:
        conn.close()
    assert dl_path.read_bytes() == b"unreadable, kept\n"
    assert dl_path.stat().st_mode & 0o777 == 0o600
    assert not stale.exists()


# -- the log as a last resort (issue 11, item 8) -------------------------------------------------


def test_replay_log_brings_back_the_entries_of_logged_dead_letter_lines(
    tmp_path: Path, db_path: Path
) -> None:
    lost = _entries(2, "lost")
    failed_at = "2026-12-01T10:00:00+00:00"
    log = tmp_path / "app.log"
    log.write_text(
        "2026-12-01 10:00:00 INFO app started\n"
        + "".join(
            "2026-12-01 10:00:01 CRITICAL audit_engine.writer audit entry LOST to disk, logged "
            f"instead: {deadletter.line_text(entry_row(e), 'disk full', failed_at, compact=True)}\n"
            for e in lost
        )
        + 'CRITICAL audit entry LOST to disk, logged instead: {"entry": {"act\n',
        encoding="utf-8",
    )
    conn = _store(db_path)
    try:
        report = replay_log(log, conn)
        again = replay_log(log, conn)
    finally:
        conn.close()
    assert (report.replayed, report.already_present, report.kept) == (2, 0, 1)
    assert report.errors == ["line 4: incomplete line (torn write?), kept"]
    assert (again.replayed, again.already_present) == (0, 2)
    assert "app started" in log.read_text(encoding="utf-8")  # the log is left as it was


def test_replay_log_of_a_missing_file_is_an_error(tmp_path: Path, db_path: Path) -> None:
    conn = _store(db_path)
    try:
        with pytest.raises(AuditStoreError, match=r"^no log file at .*nope\.log$"):
            replay_log(tmp_path / "nope.log", conn)
    finally:
        conn.close()


def test_a_value_json_cannot_hold_is_refused_before_it_becomes_a_row() -> None:
    # The dead-letter file takes rows only; a model whose details JSON cannot hold (model_copy
    # skips validation) is validated again on its way to a row, so it never reaches the file.
    entry = AuditEntry(action="a").model_copy(update={"details": {"when": object()}})
    with pytest.raises(ValidationError, match=r"details\.when has type object"):
        entry_row(entry)


def test_a_row_with_a_lone_surrogate_is_still_written() -> None:
    # A row's text fields are str and may hold what UTF-8 cannot (a row built without the
    # model): the line is still written, with JSON's \u escapes, and reads back the same.
    row = entry_row(AuditEntry(action="a"))._replace(actor="\ud800", details='{"t": "\ud800"}')
    data = deadletter.encode_lines([row], "x")
    assert b'"actor": "\\ud800"' in data
    record = json.loads(data)
    assert (record["entry"]["actor"], record["entry"]["details"]) == ("\ud800", {"t": "\ud800"})


def test_the_dead_letter_line_of_a_row_keeps_its_json_form() -> None:
    # The form the file has always had (a row's line was this before the file took rows only,
    # and a model's line was its model_dump(mode="json")), so older replays read newer files.
    entry = AuditEntry(
        event_id="e-1",
        timestamp=datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC),
        actor="zoë",
        action="doc.save",
        operation="update",
        outcome="failure",
        resource_type="doc",
        resource_id="42",
        correlation_id="c-9",
        details={"n": 1, "t": "é"},
        critical=True,
    )
    text = deadletter.line_text(entry_row(entry), "disk full", "2026-01-02T03:04:06+00:00")
    assert text == (
        '{"entry": {"event_id": "e-1", "timestamp": "2026-01-02T03:04:05.600000Z", '
        '"actor": "zoë", "action": "doc.save", "operation": "update", "outcome": "failure", '
        '"resource_type": "doc", "resource_id": "42", "correlation_id": "c-9", '
        '"details": {"n": 1, "t": "é"}, "critical": true}, '
        '"error": "disk full", "failed_at": "2026-01-02T03:04:06+00:00"}'
    )
    assert json.loads(text)["entry"] == entry.model_dump(mode="json")
    compact = deadletter.line_text(entry_row(entry), "x", "t", compact=True)
    assert compact.startswith('{"entry":{"event_id":"e-1",')
    assert compact.isascii()
    assert json.loads(compact)["entry"] == entry.model_dump(mode="json")


def test_replay_keeps_an_entry_the_database_still_refuses(dl_path: Path, db_path: Path) -> None:
    [refused] = _entries(1, "refused")
    DeadLetterFile(dl_path).append(rows_of([refused]), "refused")
    with dl_path.open("ab") as file:
        file.write(b"\n  \n")  # blank lines are dropped
    conn = _store(db_path)
    try:
        conn.execute(
            "CREATE TRIGGER no BEFORE INSERT ON audit_entries BEGIN SELECT RAISE(ABORT, 'no'); END"
        )
        report = replay(dl_path, conn)
    finally:
        conn.close()
    assert (report.replayed, report.kept, report.errors) == (0, 1, [f"{refused.event_id}: no"])
    assert [e for _, e, _ in deadletter.read(dl_path)] == [refused]


def test_replay_of_side_files_alone_leaves_no_dead_letter_file(
    dl_path: Path, db_path: Path
) -> None:
    with _lock_held_elsewhere(dl_path):
        side = DeadLetterFile(dl_path, lock_wait_s=0).append(rows_of(_entries(1)), "locked")
    conn = _store(db_path)
    try:
        report = replay(dl_path, conn)
    finally:
        conn.close()
    assert (report.replayed, report.files) == (1, [str(side)])
    assert not dl_path.exists()
    assert not side.exists()


def test_a_row_whose_details_are_not_json_is_written_as_text() -> None:
    from audit_engine.rows import Row

    row = Row("e-1", "2026-01-01T00:00:00Z", None, "a", "execute", "success", None, None, None,
              "{not json", 0)  # fmt: skip
    record = json.loads(deadletter.line_text(row, "x", "2026-01-01T00:00:00+00:00"))
    assert record["entry"]["details"] == "{not json"
    assert record["entry"]["critical"] is False


def test_replay_keeps_a_torn_line_whose_glued_part_is_torn_too(
    dl_path: Path, db_path: Path
) -> None:
    dl_path.write_bytes(b'{"entry": {"act{"entry": {"acti\n')
    conn = _store(db_path)
    try:
        report = replay(dl_path, conn)
    finally:
        conn.close()
    assert (report.replayed, report.kept) == (0, 1)
    assert dl_path.read_bytes() == b'{"entry": {"act{"entry": {"acti\n'


def test_after_one_timeout_appends_do_not_wait_again_until_the_lock_is_free(dl_path: Path) -> None:
    file = DeadLetterFile(dl_path, lock_wait_s=0.3)
    with _lock_held_elsewhere(dl_path):
        started = time.monotonic()
        first = file.append(rows_of(_entries(1, "first")), "x")
        assert time.monotonic() - started >= 0.3
        started = time.monotonic()
        second = file.append(rows_of(_entries(1, "second")), "x")
        assert time.monotonic() - started < 0.3  # a replay may hold it long: no second wait
    third = file.append(rows_of(_entries(1, "third")), "x")  # free again: the main file

    assert (first.name, second.name) == (
        f"{dl_path.name}.{os.getpid()}-1.jsonl",
        f"{dl_path.name}.{os.getpid()}-2.jsonl",
    )
    assert third == dl_path
    fourth = file.append(rows_of(_entries(1, "fourth")), "x")
    assert fourth == dl_path
