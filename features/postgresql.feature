@team_server
Feature: A team's tools share one audit trail on the team's PostgreSQL server
  As a team whose tool runs on many machines
  I want every copy of the tool to record into one trail on the database server we already run
  So that one trail shows what happened everywhere, and still proves that nothing was changed

  Scenario: Three tools on three machines write one trail, and it verifies with every entry
    Given the team's audit trail lives on the team's PostgreSQL server
    When three tools, each in a program of its own, record 40 entries at the same time
    Then the team's trail holds 120 entries, every one of them once
    And the team's trail verifies, checking 120 entries

  Scenario: The server restarts while a tool records, and nothing is lost
    Given a PostgreSQL server of the tool's own, with the tool's audit service recording into it
    When the tool records 20 entries
    And the tool flushes the audit trail
    And the server shuts down
    And the tool records 20 entries
    Then every one of them was accepted, and the audit writer keeps trying the server
    When the server starts again
    And the tool flushes the audit trail
    Then the tool's trail on that server holds the 40 recorded entries, each once
    And the service reports 0 dead-lettered entries
    And the tool's trail on that server verifies, checking 40 entries

  Scenario: A trail kept on a desktop is copied into the team's server, once
    Given the team's audit trail lives on the team's PostgreSQL server
    And a desktop tool has kept 12 entries in a local audit trail file
    When the operator runs "audit-engine copy" from the desktop trail file into the team's trail
    Then the copy reports 12 entries copied and 0 already present
    And the team's trail holds the desktop's 12 entries, every one of them once
    And the team's trail verifies, checking 12 entries
    When the operator runs "audit-engine copy" from the desktop trail file into the team's trail again
    Then the copy reports 0 entries copied and 12 already present
    And the team's trail verifies, checking 12 entries

  Scenario Outline: The team's app records the audit entry in its own transaction on the server, and <ends> it
    Given the team's app keeps its notes on the team's server, where note 42 reads "first draft"
    When the app saves note 42 as "final text" and records "note.save" through its own connection, in one transaction
    Then another program still sees note 42 as "first draft" and no entry in the team's trail
    When the app <ends> its transaction
    Then another program sees note 42 on the team's server as "<body>"
    And the team's trail holds <entries> "note.save" entries for note 42

    Examples:
      | ends        | body        | entries |
      | commits     | final text  | 1       |
      | rolls back  | first draft | 0       |
