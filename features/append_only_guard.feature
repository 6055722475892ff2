Feature: The audit tables refuse stray changes from other tools, while the engine's own purge still works
  As an operator whose audit database is also opened by other tools (a database browser, sqlite-utils, psql)
  I want the database itself to refuse an UPDATE or DELETE of audit rows, and rows that are not well formed
  So that a slip in another tool cannot change the evidence; only the engine's retention purge deletes entries

  Scenario Outline: A stray <statement> from a database tool is refused and the trail is unchanged
    Given an audit trail of 10 entries recorded an hour ago, whose chain head the operator published
    When a database tool runs "<sql>" on the audit database
    Then the database refuses it, saying "<message>"
    And the audit trail still holds 10 entries and verifies against the published head

    Examples:
      | statement             | sql                                                         | message                                                                                         |
      | UPDATE of an entry    | UPDATE audit_entries SET actor = 'mallory' WHERE id = 4     | audit_entries is append-only: UPDATE refused (audit_engine guard; purge with audit-engine purge) |
      | DELETE of an entry    | DELETE FROM audit_entries WHERE id = 6                      | audit_entries is append-only: DELETE refused (audit_engine guard; purge with audit-engine purge) |

  Scenario: A stray DELETE of a purge anchor is refused
    Given an audit trail recorded in this order:
      | entries | recorded     |
      | 5       | 200 days ago |
      | 5       | 1 day ago    |
    When the operator purges entries older than 90 days
    And a database tool runs "DELETE FROM audit_anchors" on the audit database
    Then the database refuses it, saying "audit_anchors is append-only"
    And the audit trail verifies, checking 5 entries

  Scenario: A tool that inserts an entry whose details are not JSON is refused
    Given an audit trail of 3 entries recorded an hour ago, whose chain head the operator published
    When a database tool inserts an entry whose details are "not json" on the audit database
    Then the database refuses the entry
    And the audit trail still holds 3 entries and verifies against the published head

  Scenario: The retention purge still deletes old entries through the library
    Given an audit trail recorded in this order:
      | entries | recorded     |
      | 6       | 200 days ago |
      | 4       | 1 day ago    |
    When the operator purges entries older than 90 days
    Then the purge reports 6 entries deleted
    And the audit trail verifies, checking 4 entries
    When a database tool runs "UPDATE audit_entries SET actor = 'mallory' WHERE id = 8" on the audit database
    Then the database refuses it, saying "audit_entries is append-only: UPDATE refused"

  Scenario: The retention purge still deletes old entries from the shell
    Given an audit trail recorded in this order:
      | entries | recorded     |
      | 3       | 200 days ago |
      | 2       | 1 day ago    |
    And an operator's shell in the trail's directory
    When the operator runs "audit-engine purge --older-than 90d"
    Then audit-engine exits with status 0
    And audit-engine prints a line starting "Purged 3 entries older than"
    And the audit trail verifies, checking 2 entries

  Scenario: The guard is still there after the trail is reopened and written again
    Given an audit trail of 3 entries recorded an hour ago, whose chain head the operator published
    When the tool starts its audit service and records 2 entries
    And the tool closes the audit service
    And a database tool runs "UPDATE audit_entries SET action = 'x' WHERE id = 5" on the audit database
    Then the database refuses it, saying "audit_entries is append-only: UPDATE refused"

  @sqlite_only
  Scenario: sqlite-utils cannot change or slip in a malformed entry
    Given an audit trail of 3 entries recorded an hour ago, whose chain head the operator published
    When someone runs sqlite-utils to update entry 2's actor to "mallory"
    Then the database refuses it, saying "audit_entries is append-only: UPDATE refused"
    When someone runs sqlite-utils to insert an entry with operation "steal"
    Then the database refuses the entry
    And the audit trail still holds 3 entries and verifies against the published head
