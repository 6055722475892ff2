"""audit_engine.cli.output and audit_engine.formats on their own: durations, times, --detail,
and the output formats."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import click
import pytest

from audit_engine.cli.output import (
    DetailParam,
    DurationParam,
    TimeParam,
    parse_detail,
    parse_duration,
    parse_time,
)
from audit_engine.errors import AuditStoreError
from audit_engine.formats import (
    TABLE_COLUMNS,
    Table,
    csv_lines,
    entry_object,
    export_lines,
    json_text,
    render,
    table_cells,
    table_lines,
)
from audit_engine.models import AuditEntry

NOW = datetime(2026, 11, 23, 16, 0, tzinfo=UTC)


def _entry(**fields: object) -> AuditEntry:
    values: dict[str, object] = {
        "event_id": "evt-1",
        "timestamp": datetime(2026, 11, 23, 9, 30, 15, 123456, tzinfo=UTC),
        "action": "note.save",
    }
    values.update(fields)
    return AuditEntry.model_validate(values)


# -- parse_duration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("15m", timedelta(minutes=15)),
        ("24h", timedelta(hours=24)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("1.5h", timedelta(minutes=90)),
        (" 90 d ", timedelta(days=90)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "7", "d", "7D", "7 days", "-7d", "1y", "7d ago", "1e3s"])
def test_parse_duration_refuses_what_is_not_a_duration(text: str) -> None:
    message = f"{text!r} is not a duration: a number and a unit (s, m, h, d, w), e.g. 15m, 24h, 7d"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["0s", "0d", "0.0h"])
def test_parse_duration_refuses_zero(text: str) -> None:
    with pytest.raises(ValueError, match=rf"^'{text}' is not a positive duration$"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["0.0000001s", "0.0000004s"])
def test_parse_duration_refuses_less_than_a_microsecond(text: str) -> None:
    """Issue 11 item 12: it rounded to a zero timedelta, which purge then refused (exit 1)."""
    with pytest.raises(ValueError, match="shorter than a microsecond") as caught:
        parse_duration(text)

    assert str(caught.value) == f"{text!r} is shorter than a microsecond, the smallest duration"


def test_parse_duration_refuses_a_duration_too_large() -> None:
    """Too large for a timedelta: a ValueError, not an OverflowError."""
    with pytest.raises(ValueError, match=r"^'99999999999d' is too long a duration$"):
        parse_duration("99999999999d")


# -- parse_time --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15m", NOW - timedelta(minutes=15)),
        ("7d", NOW - timedelta(days=7)),
        ("2026-11-20T08:00:00Z", datetime(2026, 11, 20, 8, tzinfo=UTC)),
        ("2026-11-20 08:00:00.5Z", datetime(2026, 11, 20, 8, 0, 0, 500000, tzinfo=UTC)),
        ("2026-11-20T10:00:00+02:00", datetime(2026, 11, 20, 8, tzinfo=UTC)),
        (" 2026-11-20T08:00Z ", datetime(2026, 11, 20, 8, tzinfo=UTC)),
    ],
)
def test_parse_time(text: str, expected: datetime) -> None:
    parsed = parse_time(text, now=NOW)

    assert parsed == expected
    assert parsed.tzinfo is UTC


def test_parse_time_converts_an_offset_to_utc() -> None:
    parsed = parse_time("2026-11-20T10:00:00+02:00")

    assert parsed.tzinfo is UTC
    assert (parsed.year, parsed.month, parsed.day, parsed.hour) == (2026, 11, 20, 8)


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local time zone is New York's (EST, UTC-5, in late November)."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("new_york")
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-20T08:00:00", datetime(2026, 11, 20, 13, tzinfo=UTC)),
        ("2026-11-20 08:00", datetime(2026, 11, 20, 13, tzinfo=UTC)),
        ("2026-11-20", datetime(2026, 11, 20, 5, tzinfo=UTC)),
        ("2026-07-01T08:00:00", datetime(2026, 7, 1, 12, tzinfo=UTC)),  # EDT, UTC-4
        ("2026-11-20T08:00:00Z", datetime(2026, 11, 20, 8, tzinfo=UTC)),
        ("2026-11-20T08:00:00+01:00", datetime(2026, 11, 20, 7, tzinfo=UTC)),
    ],
)
def test_parse_time_naive_means_local_time(text: str, expected: datetime) -> None:
    """Issue 11 item 18: as `date` reads it; an offset or Z still says which zone."""
    parsed = parse_time(text, now=NOW)

    assert parsed == expected
    assert parsed.tzinfo is UTC


@pytest.mark.usefixtures("new_york")
@pytest.mark.parametrize("text", ["0001-01-01", "9999-12-31T23:59:59"])
def test_a_naive_time_the_local_zone_cannot_convert_is_out_of_range(text: str) -> None:
    """It is an ISO-8601 time: say it is out of range, not that it is neither form."""
    with pytest.raises(ValueError, match="out of the range") as caught:
        parse_time(text, now=NOW)

    assert str(caught.value) == f"{text!r} is out of the range of dates"


def test_parse_time_relative_to_the_clock() -> None:
    before = datetime.now(UTC)
    parsed = parse_time("1h")
    after = datetime.now(UTC)

    assert before - timedelta(hours=1) <= parsed <= after - timedelta(hours=1)


@pytest.mark.parametrize("text", ["yesterday", "2026-11-31", "0m", "", "-1h", "16:00"])
def test_parse_time_refuses_what_is_neither(text: str) -> None:
    with pytest.raises(ValueError, match="is neither an ISO-8601 time") as caught:
        parse_time(text, now=NOW)

    assert str(caught.value) == (
        f"{text!r} is neither an ISO-8601 time (2026-11-23, 2026-11-23T16:00:00Z) "
        "nor a duration back from now (15m, 24h, 7d)"
    )


@pytest.mark.parametrize("text", ["5000000d", "0001-01-01T00:00:00+05:00"])
def test_parse_time_refuses_a_time_out_of_range(text: str) -> None:
    """Before year 1 (in UTC): a ValueError, not an OverflowError."""
    with pytest.raises(ValueError, match=f"^{re.escape(repr(text))} is out of the range of dates$"):
        parse_time(text, now=NOW)


# -- the click types ---------------------------------------------------------------------------


def test_duration_param_converts_and_passes_timedeltas_through() -> None:
    param = DurationParam()

    assert param.convert("2w", None, None) == timedelta(weeks=2)
    assert param.convert(timedelta(hours=1), None, None) == timedelta(hours=1)
    with pytest.raises(click.BadParameter, match=r"^'x' is not a duration"):
        param.convert("x", None, None)


def test_time_param_converts_and_passes_datetimes_through() -> None:
    param = TimeParam()

    assert param.convert("2026-11-20Z", None, None) == datetime(2026, 11, 20, tzinfo=UTC)
    assert param.convert(NOW, None, None) is NOW
    with pytest.raises(click.BadParameter, match=r"^'x' is neither"):
        param.convert("x", None, None)


def test_detail_param_converts_and_passes_pairs_through() -> None:
    param = DetailParam()

    assert param.convert("n:=3", None, None) == ("n", 3)
    assert param.convert(("k", "v"), None, None) == ("k", "v")
    with pytest.raises(click.BadParameter, match=r"^--detail takes KEY=TEXT or KEY:=JSON, got 'x'"):
        param.convert("x", None, None)


# -- parse_detail ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # KEY=TEXT is always text (issue 11 item 21: 1.10 was stored as 1.1, 1e3 as 1000.0).
        ("version=1.10", ("version", "1.10")),
        ("code=1e3", ("code", "1e3")),
        ("n=3", ("n", "3")),
        ("ok=false", ("ok", "false")),
        ("none=null", ("none", "null")),
        ('quoted="007"', ("quoted", '"007"')),
        ("text=hello world", ("text", "hello world")),
        ("empty=", ("empty", "")),
        ("url=a=b&c=d", ("url", "a=b&c=d")),
        (" key =v", ("key", "v")),
        ("k={not json", ("k", "{not json")),
        ("a:b=c", ("a:b", "c")),
        ("deep=" + "[" * 3000, ("deep", "[" * 3000)),
        # KEY:=JSON is a JSON value.
        ("n:=3", ("n", 3)),
        ("ratio:=0.5", ("ratio", 0.5)),
        ("ok:=false", ("ok", False)),
        ("none:=null", ("none", None)),
        ('list:=[1, "a"]', ("list", [1, "a"])),
        ('obj:={"k": {"x": 1}}', ("obj", {"k": {"x": 1}})),
        ('quoted:="007"', ("quoted", "007")),
        ('url:="a=b"', ("url", "a=b")),
        (" key :=1", ("key", 1)),
    ],
)
def test_parse_detail(text: str, expected: tuple[str, object]) -> None:
    assert parse_detail(text) == expected


@pytest.mark.parametrize("text", ["novalue", "=x", "  =x", "", ":=1", " :=1"])
def test_parse_detail_needs_a_key_and_an_equals_sign(text: str) -> None:
    with pytest.raises(ValueError, match=r"^--detail takes") as caught:
        parse_detail(text)

    assert str(caught.value) == f"--detail takes KEY=TEXT or KEY:=JSON, got {text!r}"


def test_parse_detail_shortens_a_long_bad_argument() -> None:
    with pytest.raises(ValueError, match=r"^--detail takes") as caught:
        parse_detail("x" * 100)

    assert str(caught.value) == f"--detail takes KEY=TEXT or KEY:=JSON, got {'x' * 60!r}..."


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("n:=1.2.3", "Extra data at character 3"),
        ("t:=hello", "Expecting value at character 0"),
        ("e:=", "Expecting value at character 0"),
    ],
)
def test_parse_detail_json_that_is_not_json(text: str, problem: str) -> None:
    key = text.partition(":")[0]

    with pytest.raises(ValueError, match="takes a JSON value") as caught:
        parse_detail(text)

    assert str(caught.value) == f"{key}:= takes a JSON value: {problem} (for text, use {key}=...)"


@pytest.mark.parametrize("brackets", ["[" * 3000, "[" * 3000 + "]" * 3000])
def test_parse_detail_json_nested_too_deeply(brackets: str) -> None:
    """Issue 11 item 11: json.loads raised RecursionError, a traceback on the command line."""
    with pytest.raises(ValueError, match="nested too deeply") as caught:
        parse_detail("k:=" + brackets)

    assert str(caught.value) == "k:= takes a JSON value: this one is nested too deeply"


# -- rendering ---------------------------------------------------------------------------------


def test_entry_object_is_the_json_form_with_nested_details() -> None:
    entry = _entry(details={"b": [1, 2], "a": {"x": None}}, actor="zoë", critical=True)

    assert entry_object(entry) == {
        "event_id": "evt-1",
        "timestamp": "2026-11-23T09:30:15.123456Z",
        "actor": "zoë",
        "action": "note.save",
        "operation": "execute",
        "outcome": "success",
        "resource_type": None,
        "resource_id": None,
        "correlation_id": None,
        "details": {"b": [1, 2], "a": {"x": None}},
        "critical": True,
    }


def test_render_json_is_one_array() -> None:
    entries = [_entry(), _entry(event_id="evt-2", details={"k": "v"})]

    text = "\n".join(render(entries, "json"))  # streamed: the array's lines one by one

    assert json.loads(text) == [entry_object(e) for e in entries]
    assert list(render([], "json")) == ["[]"]


def test_render_jsonl_is_one_object_per_line_without_escaping_unicode() -> None:
    entries = [_entry(actor="zoë"), _entry(event_id="evt-2")]

    lines = list(render(entries, "jsonl"))

    assert [json.loads(line) for line in lines] == [entry_object(e) for e in entries]
    assert '"actor": "zoë"' in lines[0]
    assert list(render([], "jsonl")) == []


def test_render_csv_has_a_header_and_quotes_what_needs_it() -> None:
    entry = _entry(actor='o"neil, jr', details={"note": "a,b\nc"}, critical=True)

    lines = list(render([entry], "csv"))

    assert lines[0] == (
        "event_id,timestamp,actor,action,operation,outcome,resource_type,resource_id,"
        "correlation_id,details,critical"
    )
    [row] = list(csv.DictReader(io.StringIO("\n".join(lines))))
    assert row["actor"] == 'o"neil, jr'
    assert json.loads(row["details"]) == {"note": "a,b\nc"}
    assert (row["critical"], row["resource_type"], row["timestamp"]) == (
        "true",
        "",
        "2026-11-23T09:30:15.123456Z",
    )
    assert list(render([], "csv")) == [lines[0]]


def test_csv_lines_without_a_header() -> None:
    lines = list(csv_lines([_entry()], header=False))

    assert lines == ["evt-1,2026-11-23T09:30:15.123456Z,,note.save,execute,success,,,,{},false"]


def test_render_table_is_the_default() -> None:
    entries = [_entry()]

    assert list(render(entries, "table")) == list(render(entries, "anything else"))


@pytest.mark.parametrize(
    ("count", "footer"), [(0, "(0 entries)"), (1, "(1 entry)"), (2, "(2 entries)")]
)
def test_table_footer_counts_entries(count: int, footer: str) -> None:
    entries = [_entry(event_id=f"evt-{n}") for n in range(count)]

    lines = list(table_lines(entries))

    assert lines[-1] == footer
    assert len(lines) == count + 2


def test_table_columns_are_aligned() -> None:
    entries = [
        _entry(actor="alice", resource_type="note", resource_id="n-1", critical=True),
        _entry(event_id="evt-2", action="a", operation="delete", outcome="failure"),
    ]

    header, first, second, footer = table_lines(entries)

    assert header == (
        "time (UTC)           actor  action     operation  outcome  resource  correlation"
    )
    assert first == (
        "2026-11-23 09:30:15  alice  note.save  execute    success  note/n-1  -            critical"
    )
    assert second == "2026-11-23 09:30:15  -      a          delete     failure  -/-       -"
    assert footer == "(2 entries)"


def test_the_table_shows_the_correlation_id() -> None:
    """Issue 11 item 20: the table left correlation_id out."""
    header, row, _ = table_lines([_entry(correlation_id="req-42")])

    assert header.split()[-1] == "correlation"
    assert row.split()[-1] == "req-42"
    assert header.index("correlation") == row.index("req-42")


def test_a_table_made_before_its_rows_cuts_what_does_not_fit() -> None:
    """tail -f prints the header first: later rows keep its columns (issue 11 item 20)."""
    table = Table.fitting([], minimum=(19, 5, 6, 9, 7, 8, 11, 8))
    long = _entry(actor="a-very-long-actor", action="x", correlation_id="c", critical=True)

    line = table.line(table_cells(long))

    assert table.header() == (
        "time (UTC)           actor  action  operation  outcome  resource  correlation"
    )
    assert line == (
        "2026-11-23 09:30:15  a-ve…  x       execute    success  -/-       c            critical"
    )
    starts = [table.header().index(title) for title in TABLE_COLUMNS[1:-1]]
    assert [line.index(cell) for cell in ("a-ve…", "x  ", "execute", "success", "-/-")] == (
        starts[:5]
    )


def test_the_table_pads_a_year_below_1000() -> None:
    entry = _entry(timestamp=datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC))

    assert table_cells(entry)[0] == "0999-01-02 03:04:05"


# -- one rendering of each value (issue 11 item 20) --------------------------------------------

_NAMES = (
    "id", "event_id", "timestamp", "actor", "action", "operation", "outcome", "resource_type",
    "resource_id", "correlation_id", "details", "critical", "prev_hash", "hash",
)  # fmt: skip


def _stored(details: str = "{}", critical: int = 0) -> tuple[object, ...]:
    return (
        *(7, "evt-1", "2026-01-02T03:04:05.000000Z", None, "note.save", "execute", "success"),
        *(None, None, None, details, critical, "0" * 64, "f" * 64),
    )


def test_timestamps_are_the_stored_form_everywhere() -> None:
    entry = _entry(timestamp=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))

    [jsonl] = render([entry], "jsonl")
    [_, csv_row] = render([entry], "csv")
    [exported] = export_lines("jsonl", _NAMES, [_stored()])

    assert json.loads(jsonl)["timestamp"] == "2026-01-02T03:04:05.000000Z"
    assert csv_row.split(",")[1] == "2026-01-02T03:04:05.000000Z"
    assert json.loads(exported)["timestamp"] == "2026-01-02T03:04:05.000000Z"


def test_critical_is_true_or_false_in_query_and_export_csv() -> None:
    """Issue 11 item 20: export's CSV wrote 0/1 where query's wrote true/false."""
    [_, queried] = render([_entry(critical=True)], "csv")
    exported = list(export_lines("csv", _NAMES, [_stored(critical=1), _stored()]))

    assert queried.endswith(",true")
    assert exported[0] == ",".join(_NAMES) + "\n"
    rows = list(csv.DictReader(io.StringIO("".join(exported))))
    assert [row["critical"] for row in rows] == ["true", "false"]
    assert rows[0]["actor"] == ""


def test_line_separators_are_escaped_in_every_json_and_csv_output() -> None:
    """Issue 11 item 20: only export escaped U+2028; query's jsonl split for line readers."""
    details = {"note": "a\u2028b\u2029c\x85d"}
    entry = _entry(details=details, actor="zoë")

    outputs = [
        *render([entry], "jsonl"),
        *render([entry], "json"),
        *render([entry], "csv"),
        *export_lines("jsonl", _NAMES, [_stored(details=entry.details_json)]),
        *export_lines("csv", _NAMES, [_stored(details=entry.details_json)]),
    ]

    for text in outputs:
        assert not {"\u2028", "\u2029", "\x85"} & set(text), text
        assert text.rstrip("\n").splitlines() == text.rstrip("\n").split("\n")
    assert json.loads(outputs[0])["details"] == details
    assert "zoë" in outputs[0]
    assert json_text("\u2028") == '"\\u2028"'


def test_a_stored_row_whose_details_are_not_json_is_named() -> None:
    lines = export_lines("jsonl", _NAMES, [_stored(), _stored(details="not json")])

    assert json.loads(next(lines))["id"] == 7
    with pytest.raises(AuditStoreError, match=r"^cannot export row 7: its details are not JSON \("):
        next(lines)
