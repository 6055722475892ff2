Feature: A maintainer compares throughput with audit-engine bench
  As a maintainer deciding whether the audit engine is worth its place in an application
  I want one command that measures the engine beside the usual ways of writing an audit trail
  So that I can see, on my own machine, how fast each way is and what it costs the caller

  Background:
    Given an operator's shell in an empty directory

  Scenario: The JSON report compares every way of writing, round after round, with a thread sweep
    When the operator runs "audit-engine bench --events 300 --rounds 2 --threads 1,2 --json"
    Then audit-engine exits with status 0
    And audit-engine prints one benchmark report as JSON, for 300 events in 2 rounds with 1 and 2 recording threads
    And the report compares these ways of writing, in order: sync-default, sync-wal, thread-per-row, logging-queue, engine, engine-keyed, ceiling
    And logging-queue, engine and engine-keyed each ran with 1 and with 2 recording threads, the others with 1
    And each round ran the ways of writing in another order
    And every way of writing stored all of its 300 events in every round
    And the ceiling runs at exactly 1 times the ceiling in every round
    And every other way of writing runs at more than 0 times the ceiling
    And the engine committed fewer transactions than it wrote events
    And sync-default, sync-wal and thread-per-row each committed once per event
    And every way of writing but the ceiling reports how long the caller waited, at the median, the 99th and the 99.9th percentile
    And the report gives the engine's ratio to the ceiling and to logging-queue for 1 and 2 threads, one per round

  Scenario: The plain report is a table with one line for each way of writing, then the ratios and targets
    When the operator runs "audit-engine bench --events 200 --rounds 1"
    Then audit-engine exits with status 0
    And the report first names the Python, SQLite and machine it measured, for 200 events
    And the report's table has the columns "mode, threads, events, events/s, caller p50, caller p99, caller p99.9, commits/ev, x ceiling, range"
    And the report's table has one line for each way of writing, in order: sync-default, sync-wal, thread-per-row, logging-queue, engine, engine-keyed, ceiling
    And every line of the report's table shows 200 events
    And the report says "engine / logging-queue, 1 thread" among the ratios
    And the report says in how many of 1 rounds the caller's p99 stayed within 50 µs, for logging-queue, engine and engine-keyed

  Scenario: Only the chosen ways of writing run
    When the operator runs "audit-engine bench --events 50 --rounds 1 --mode engine --mode ceiling --json"
    Then audit-engine exits with status 0
    And audit-engine prints one benchmark report as JSON, for 50 events in 1 rounds with 1 recording threads
    And the report compares these ways of writing, in order: engine, ceiling

  Scenario Outline: A mistaken option <option> is refused with a clear message
    When the operator runs "audit-engine bench <option>"
    Then audit-engine exits with status 2
    And audit-engine prints nothing
    And audit-engine's message starts "<start>" and ends "<reason>"
    And audit-engine points to "audit-engine bench --help"
    And audit-engine shows no traceback

    Examples:
      | option             | start                                 | reason                                       |
      | --events 0         | Error: Invalid value for '--events'   | 0 is not in the range 1<=x<=1000000.         |
      | --events 100000000 | Error: Invalid value for '--events'   | 100000000 is not in the range 1<=x<=1000000. |
      | --threads 0        | Error: Invalid value for '--threads'  | 0 is not in the range 1<=x<=64.              |
      | --threads 65       | Error: Invalid value for '--threads'  | 65 is not in the range 1<=x<=64.             |
      | --threads 1,2,x    | Error: Invalid value for '--threads'  | 'x' is not a whole number (give thread counts as 1,2,4,8). |
      | --threads 2,2      | Error: Invalid value for '--threads'  | 2 is listed twice.                           |
      | --rounds 0         | Error: Invalid value for '--rounds'   | 0 is not in the range 1<=x<=100.             |
      | --mode turbo       | Error: Invalid value for '--mode'     | 'turbo' is not one of 'sync-default', 'sync-wal', 'thread-per-row', 'logging-queue', 'engine', 'engine-keyed', 'ceiling'. |
      | --events many      | Error: Invalid value for '--events'   | 'many' is not a valid integer range.         |
