"""The dead-letter file: one JSON line per entry that could not be committed."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from audit_engine import AuditEntry, Operation, deadletter
from audit_engine.deadletter import DeadLetterFile


@pytest.fixture
def dl_path(db_path: Path) -> Path:
    return deadletter.path_for(db_path)


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

    DeadLetterFile(dl_path).append(entries, "disk I/O error")

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
    DeadLetterFile(dl_path).append(_entries(1), "échec")

    text = dl_path.read_text(encoding="utf-8")
    assert '"actor": "zoë"' in text
    assert '"error": "échec"' in text


def test_new_file_is_private(dl_path: Path) -> None:
    DeadLetterFile(dl_path).append(_entries(1), "boom")

    assert dl_path.stat().st_mode & 0o777 == 0o600


def test_append_adds_to_the_end_of_the_file(dl_path: Path) -> None:
    file = DeadLetterFile(dl_path)
    file.append(_entries(2, "first"), "one")
    first_content = dl_path.read_bytes()

    file.append(_entries(1, "second"), "two")
    DeadLetterFile(dl_path).append(_entries(1, "third"), "three")  # a new writer appends too

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
            file.append(entries, f"worker {worker}")

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
    file.append(entries[:1], "database is locked")
    file.append(entries[1:], "disk full")

    assert list(deadletter.read(dl_path)) == [
        (1, entries[0], "database is locked"),
        (2, entries[1], "disk full"),
    ]


def test_read_accepts_details_larger_than_the_default_limit(dl_path: Path) -> None:
    big = AuditEntry.model_validate(
        {"action": "a", "details": {"blob": "x" * 100_000}},
        context={"max_details_bytes": 200_000},
    )
    DeadLetterFile(dl_path).append([big], "too slow")

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
    assert "'entry'" in errors[4]  # the missing key is named
    assert "action" in errors[6]  # the invalid field is named


def test_read_of_an_empty_file_yields_nothing(dl_path: Path) -> None:
    dl_path.write_text("")

    assert list(deadletter.read(dl_path)) == []


def test_read_reports_a_line_with_invalid_utf8_as_bad(dl_path: Path) -> None:
    good = AuditEntry(action="ok", actor="zoë")
    DeadLetterFile(dl_path).append([good], "boom")
    torn = json.dumps({"entry": {"action": "x", "actor": "zoë"}}, ensure_ascii=False).encode()
    with dl_path.open("ab") as file:
        file.write(torn[: torn.index("ë".encode()) + 1])  # cut inside the two-byte "ë"

    results = list(deadletter.read(dl_path))

    assert results[0] == (1, good, "boom")
    assert results[1][:2] == (2, None)
