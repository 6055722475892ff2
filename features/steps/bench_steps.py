"""Steps for features/benchmarking.feature: a maintainer runs ``audit-engine bench``.

The command itself runs through the operator's shell of cli_steps.py (``When the operator runs``);
these steps read what it printed: the JSON report as :class:`BenchReport`, or the plain table.
"""

from __future__ import annotations

import json
import re
import subprocess

from behave import then
from behave.runner import Context

from audit_engine.cli.bench import BenchReport, ModeResult

# The table's columns are right-aligned in fixed widths, at least two spaces apart.
_COLUMN_GAP = re.compile(r"\s{2,}")
_CEILING = "ceiling"


def _last(context: Context) -> subprocess.CompletedProcess[str]:
    result: subprocess.CompletedProcess[str] | None = context.operator_shell.last
    assert result is not None, "no command has been run yet"
    return result


def _report(context: Context) -> BenchReport:
    report: BenchReport = context.bench_report
    return report


def _mode(context: Context, name: str) -> ModeResult:
    for result in _report(context).results:
        if result.mode == name:
            return result
    raise AssertionError(f"the report has no mode {name!r}")


def _names(text: str) -> list[str]:
    return [name.strip() for name in re.split(r",|\band\b", text) if name.strip()]


# -- the JSON report ---------------------------------------------------------------------------


@then(
    "audit-engine prints one benchmark report as JSON, "
    "for {events:d} events from {threads:d} recording thread"
)
def then_json_report(context: Context, events: int, threads: int) -> None:
    stdout = _last(context).stdout
    data = json.loads(stdout)  # the whole output is one JSON document
    assert isinstance(data, dict), data
    assert set(data) == set(BenchReport.model_fields), sorted(data)
    for result in data["results"]:
        assert set(result) == set(ModeResult.model_fields), sorted(result)
    report = BenchReport.model_validate(data)
    assert report.events == events, report.events
    assert report.threads == threads, report.threads
    assert report.cpus >= 1, report.cpus
    assert report.python, report
    assert report.sqlite, report
    assert report.machine, report
    context.bench_report = report


@then("the report compares these ways of writing, in order: {modes}")
def then_modes(context: Context, modes: str) -> None:
    found = [result.mode for result in _report(context).results]
    assert found == _names(modes), found


@then("every way of writing wrote {events:d} events")
def then_all_wrote(context: Context, events: int) -> None:
    for result in _report(context).results:
        assert result.events == events, result
        assert result.seconds > 0, result
        assert result.events_per_s > 0, result


@then("the ceiling runs at exactly 1 times the ceiling")
def then_ceiling_ratio(context: Context) -> None:
    ceiling = _mode(context, _CEILING)
    assert ceiling.ratio_to_ceiling == 1.0, ceiling


@then("every other way of writing runs at more than 0 times the ceiling")
def then_other_ratios(context: Context) -> None:
    for result in _report(context).results:
        if result.mode != _CEILING:
            assert result.ratio_to_ceiling > 0, result


@then("the engine committed fewer transactions than it wrote events")
def then_engine_batches(context: Context) -> None:
    engine = _mode(context, "engine")
    assert 1 <= engine.commits < engine.events, engine
    assert engine.commits_per_event < 1, engine


@then("{modes} each committed once per event")
def then_commit_per_event(context: Context, modes: str) -> None:
    for name in _names(modes):
        result = _mode(context, name)
        assert result.commits == result.events, result
        assert result.commits_per_event == 1.0, result


@then(
    "every way of writing but the ceiling reports how long the caller waited, "
    "at the median and the 99th percentile"
)
def then_caller_latency(context: Context) -> None:
    for result in _report(context).results:
        if result.mode == _CEILING:
            # Its rows are prebuilt: no caller to time.
            assert result.caller_p50_us is None, result
            assert result.caller_p99_us is None, result
            continue
        assert result.caller_p50_us is not None, result
        assert result.caller_p99_us is not None, result
        assert result.caller_p50_us > 0, result
        assert result.caller_p99_us >= result.caller_p50_us, result


# -- the plain table ---------------------------------------------------------------------------


def _lines(context: Context) -> list[str]:
    return _last(context).stdout.splitlines()


@then("the report first names the Python, SQLite and machine it measured, for {events:d} events")
def then_table_intro(context: Context, events: int) -> None:
    first = _lines(context)[0]
    assert first.startswith("Python "), first
    assert ", SQLite " in first, first
    assert " CPUs; " in first, first
    assert f"; {events} events, " in first, first


@then('the report\'s table has the columns "{columns}"')
def then_table_columns(context: Context, columns: str) -> None:
    header = _lines(context)[1]
    assert _COLUMN_GAP.split(header.strip()) == columns.split(", "), header


@then("the report's table has one line for each way of writing, in order: {modes}")
def then_table_rows(context: Context, modes: str) -> None:
    rows = _lines(context)[2:]
    assert [row.split()[0] for row in rows] == _names(modes), rows


@then("every line of the report's table shows {events:d} events")
def then_table_events(context: Context, events: int) -> None:
    header, *rows = _lines(context)[1:]
    width = len(_COLUMN_GAP.split(header.strip()))
    for row in rows:
        cells = row.split()
        assert len(cells) == width, row
        assert cells[1] == str(events), row


# -- a refused option --------------------------------------------------------------------------


@then('audit-engine\'s message starts "{start}" and ends "{reason}"')
def then_message(context: Context, start: str, reason: str) -> None:
    lines = [line for line in _last(context).stderr.splitlines() if line.strip()]
    assert lines, "audit-engine said nothing"
    message = lines[-1]
    assert message.startswith(start), message
    assert message.endswith(reason), message


@then('audit-engine points to "{command}"')
def then_points_to_help(context: Context, command: str) -> None:
    assert f"Try '{command}' for help." in _last(context).stderr.splitlines(), _last(context).stderr


@then("audit-engine shows no traceback")
def then_no_traceback(context: Context) -> None:
    result = _last(context)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
