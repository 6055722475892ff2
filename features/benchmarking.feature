Feature: A maintainer compares throughput with audit-engine bench
  As a maintainer deciding whether the audit engine is worth its place in an application
  I want one command that measures the engine beside the usual ways of writing an audit trail
  So that I can see, on my own machine, how fast each way is and what it costs the caller

  Background:
    Given an operator's shell in an empty directory

  Scenario: The JSON report compares every way of writing, the engine among them
    When the operator runs "audit-engine bench --events 300 --json"
    Then audit-engine exits with status 0
    And audit-engine prints one benchmark report as JSON, for 300 events from 1 recording thread
    And the report compares these ways of writing, in order: sync-default, sync-wal, thread-per-row, engine, engine-keyed, ceiling
    And every way of writing wrote 300 events
    And the ceiling runs at exactly 1 times the ceiling
    And every other way of writing runs at more than 0 times the ceiling
    And the engine committed fewer transactions than it wrote events
    And sync-default, sync-wal and thread-per-row each committed once per event
    And every way of writing but the ceiling reports how long the caller waited, at the median and the 99th percentile

  Scenario: The plain report is a table with one line for each way of writing
    When the operator runs "audit-engine bench --events 200"
    Then audit-engine exits with status 0
    And the report first names the Python, SQLite and machine it measured, for 200 events
    And the report's table has the columns "mode, events, events/s, caller p50, caller p99, commits, commits/ev, x ceiling"
    And the report's table has one line for each way of writing, in order: sync-default, sync-wal, thread-per-row, engine, engine-keyed, ceiling
    And every line of the report's table shows 200 events

  Scenario Outline: A mistaken option <option> is refused with a clear message
    When the operator runs "audit-engine bench <option>"
    Then audit-engine exits with status 2
    And audit-engine prints nothing
    And audit-engine's message starts "<start>" and ends "<reason>"
    And audit-engine points to "audit-engine bench --help"
    And audit-engine shows no traceback

    Examples:
      | option             | start                                 | reason                                     |
      | --events 0         | Error: Invalid value for '--events'   | 0 is not in the range 1<=x<=1000000.       |
      | --events 100000000 | Error: Invalid value for '--events'   | 100000000 is not in the range 1<=x<=1000000. |
      | --threads 0        | Error: Invalid value for '--threads'  | 0 is not in the range 1<=x<=64.            |
      | --threads 65       | Error: Invalid value for '--threads'  | 65 is not in the range 1<=x<=64.           |
      | --events many      | Error: Invalid value for '--events'   | 'many' is not a valid integer range.       |
