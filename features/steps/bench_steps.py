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

from audit_engine.cli.bench import BenchReport
from audit_engine.cli.bench_rounds import ModeSummary

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


def _modes(context: Context, name: str) -> list[ModeSummary]:
    found = [result for result in _report(context).results if result.mode == name]
    assert found, f"the report has no mode {name!r}"
    return found


def _names(text: str) -> list[str]:
    return [name.strip() for name in re.split(r",|\band\b", text) if name.strip()]


def _counts(text: str) -> list[int]:
    return [int(count) for count in _names(text)]


# -- the JSON report ---------------------------------------------------------------------------


@then(
    "audit-engine prints one benchmark report as JSON, "
    "for {events:d} events in {rounds:d} rounds with {threads} recording threads"
)
def then_json_report(context: Context, events: int, rounds: int, threads: str) -> None:
    stdout = _last(context).stdout
    data = json.loads(stdout)  # the whole output is one JSON document
    assert isinstance(data, dict), data
    assert set(data) == set(BenchReport.model_fields), sorted(data)
    for result in data["results"]:
        assert set(result) == set(ModeSummary.model_fields), sorted(result)
    report = BenchReport.model_validate(data)
    assert report.events == events, report.events
    assert report.rounds == rounds, report.rounds
    assert report.threads == _counts(threads), report.threads
    assert report.cpus >= 1, report.cpus
    assert report.python, report
    assert report.sqlite, report
    assert report.machine, report
    for result in report.results:
        assert result.rounds == len(result.per_round) == rounds, result
    context.bench_report = report


@then("the report compares these ways of writing, in order: {modes}")
def then_modes(context: Context, modes: str) -> None:
    found = list(dict.fromkeys(result.mode for result in _report(context).results))
    assert found == _names(modes), found


@then("{modes} each ran with {counts} recording threads, the others with 1")
def then_sweep(context: Context, modes: str, counts: str) -> None:
    swept = _names(modes)
    wanted = [int(n) for n in re.findall(r"\d+", counts)]
    for result in _report(context).results:
        if result.mode not in swept:
            assert result.threads == 1, result
    for name in swept:
        assert [result.threads for result in _modes(context, name)] == wanted, name


@then("each round ran the ways of writing in another order")
def then_rotates(context: Context) -> None:
    orders = _report(context).orders
    assert len({tuple(order) for order in orders}) == len(orders), orders
    assert all(sorted(order) == sorted(orders[0]) for order in orders), orders


@then("every way of writing stored all of its {events:d} events in every round")
def then_all_stored(context: Context, events: int) -> None:
    for result in _report(context).results:
        assert result.events == result.rows_stored == events, result
        for run in result.per_round:
            assert run.rows_stored == run.events == events, run
            assert run.seconds > 0, run
            assert run.events_per_s > 0, run


@then("the ceiling runs at exactly 1 times the ceiling in every round")
def then_ceiling_ratio(context: Context) -> None:
    [ceiling] = _modes(context, _CEILING)
    assert ceiling.ratio_to_ceiling is not None, ceiling
    assert ceiling.ratio_to_ceiling.per_round == [1.0] * ceiling.rounds, ceiling


@then("every other way of writing runs at more than 0 times the ceiling")
def then_other_ratios(context: Context) -> None:
    for result in _report(context).results:
        if result.mode != _CEILING:
            assert result.ratio_to_ceiling is not None, result
            assert result.ratio_to_ceiling.min > 0, result


@then("the engine committed fewer transactions than it wrote events")
def then_engine_batches(context: Context) -> None:
    for engine in _modes(context, "engine"):
        for run in engine.per_round:
            assert 1 <= run.commits < run.events, run
        assert engine.commits_per_event < 1, engine


@then("{modes} each committed once per event")
def then_commit_per_event(context: Context, modes: str) -> None:
    for name in _names(modes):
        for result in _modes(context, name):
            assert result.commits_per_event == 1.0, result
            assert all(run.commits == run.events for run in result.per_round), result


@then(
    "every way of writing but the ceiling reports how long the caller waited, "
    "at the median, the 99th and the 99.9th percentile"
)
def then_caller_latency(context: Context) -> None:
    for result in _report(context).results:
        figures = (result.caller_p50_us, result.caller_p99_us, result.caller_p999_us)
        if result.mode == _CEILING:
            # Its rows are prebuilt: no caller to time.
            assert figures == (None, None, None), result
            continue
        p50, p99, p999 = figures
        assert p50 is not None, result
        assert p99 is not None, result
        assert p999 is not None, result
        assert 0 < p50 <= p99 <= p999, result


@then(
    "the report gives the engine's ratio to the ceiling and to logging-queue "
    "for {counts} threads, one per round"
)
def then_engine_ratios(context: Context, counts: str) -> None:
    report = _report(context)
    found = sorted((q.denominator, q.threads) for q in report.ratios if q.numerator == "engine")
    wanted = sorted((d, n) for d in ("ceiling", "logging-queue") for n in _counts(counts))
    assert found == wanted, found
    for spread in report.ratios:
        assert len(spread.per_round) == report.rounds, spread
        assert spread.min <= spread.median <= spread.max, spread


# -- the plain table ---------------------------------------------------------------------------


def _lines(context: Context) -> list[str]:
    return _last(context).stdout.splitlines()


def _table(context: Context) -> list[str]:
    """The header and the rows: the lines after the first, up to the first blank one."""
    lines = _lines(context)[1:]
    return lines[: lines.index("")] if "" in lines else lines


@then("the report first names the Python, SQLite and machine it measured, for {events:d} events")
def then_table_intro(context: Context, events: int) -> None:
    first = _lines(context)[0]
    assert first.startswith("Python "), first
    assert ", SQLite " in first, first
    assert " CPUs; " in first, first
    assert f"; {events} events, " in first, first


@then('the report\'s table has the columns "{columns}"')
def then_table_columns(context: Context, columns: str) -> None:
    header = _table(context)[0]
    assert _COLUMN_GAP.split(header.strip()) == columns.split(", "), header


@then("the report's table has one line for each way of writing, in order: {modes}")
def then_table_rows(context: Context, modes: str) -> None:
    rows = _table(context)[1:]
    assert [row.split()[0] for row in rows] == _names(modes), rows


@then("every line of the report's table shows {events:d} events")
def then_table_events(context: Context, events: int) -> None:
    header, *rows = _table(context)
    width = len(_COLUMN_GAP.split(header.strip()))
    for row in rows:
        cells = row.split()
        assert len(cells) == width, row
        assert cells[2] == str(events), row


@then('the report says "{text}" among the ratios')
def then_ratio_line(context: Context, text: str) -> None:
    lines = _lines(context)
    start = lines.index("Ratios of events/s within each round (median [min-max]):")
    assert any(line.startswith(f"  {text}: ") for line in lines[start:]), lines[start:]


@then(
    "the report says in how many of {rounds:d} rounds the caller's p99 stayed within 50 µs, "
    "for {modes}"
)
def then_target_lines(context: Context, rounds: int, modes: str) -> None:
    lines = _lines(context)
    start = lines.index("Caller latency against the targets, rounds on target:")
    targets = lines[start + 1 :]
    assert [line.split(",")[0].strip() for line in targets] == _names(modes), targets
    pattern = re.compile(
        rf"  [a-z-]+, 1 thread: p99 ≤ 50 µs in \d+/{rounds} rounds, "
        rf"p99\.9 ≤ 1 ms in \d+/{rounds} rounds"
    )
    for line in targets:
        assert pattern.fullmatch(line), line


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
