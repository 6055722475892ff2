Feature: Entries older than the retention period are purged, and what remains still proves itself
  As an operator bound by a retention policy
  I want entries older than the retention period deleted in short batches, oldest first
  So that the audit database stays small without a gap or a break in the evidence that remains

  Scenario: Entries older than the retention period are purged, newer ones stay
    Given an audit trail recorded in this order:
      | entries | recorded     |
      | 30      | 200 days ago |
      | 12      | 5 days ago   |
    When the operator purges entries older than 90 days
    Then the purge reports 30 entries deleted
    And the audit database holds 12 entries
    And the remaining entries are entries 31 to 42
    And no remaining entry is older than 90 days

  Scenario Outline: A purge of <old> old entries in batches of <size> takes <batches> batches
    Given an audit trail recorded in this order:
      | entries | recorded     |
      | <old>   | 200 days ago |
      | 5       | 1 day ago    |
    When the operator purges entries older than 90 days in batches of <size>
    Then the purge reports <old> entries deleted in <batches> batches
    And the cleanup-runs table records one run that deleted <old> entries in <batches> batches
    And the purge left one anchor at entry <old>
    And the audit database holds 5 entries

    Examples:
      | old | size | batches |
      | 25  | 10   | 3       |
      | 20  | 10   | 2       |
      | 7   | 100  | 1       |

  Scenario: The background cleanup purges in batches of the configured size
    Given an audit trail recorded in this order:
      | entries | recorded     |
      | 25      | 200 days ago |
      | 5       | 1 day ago    |
    And the tool's audit settings are:
      | setting            | value |
      | retention_days     | 90    |
      | cleanup_batch_size | 10    |
    And the tool has started its audit service
    When the background cleanup has completed its first run
    Then the service reports 25 entries purged
    And the cleanup-runs table records one run that deleted 25 entries in 3 batches
    And the remaining entries are entries 26 to 30

  Scenario: An old entry recorded after newer ones waits until the purge reaches it
    Given an audit trail recorded in this order:
      | entries | recorded     |
      | 5       | 200 days ago |
      | 3       | 5 days ago   |
      | 1       | 200 days ago |
      | 2       | 1 hour ago   |
    When the operator purges entries older than 90 days
    Then the purge reports 5 entries deleted
    And the remaining entries are entries 6 to 11
    And 1 remaining entry is older than 90 days
    When the operator purges entries older than 2 days
    Then the purge reports 4 entries deleted
    And the remaining entries are entries 10 to 11
    And no remaining entry is older than 90 days
    And the audit trail verifies with a minimum retention of 2 days, checking 2 entries

  Scenario: After a purge the remaining entries still verify, and new ones continue the chain
    Given an audit trail recorded in this order:
      | entries | recorded     |
      | 30      | 200 days ago |
      | 12      | 5 days ago   |
    When the operator purges entries older than 90 days in batches of 7
    Then the purge left one anchor at entry 30
    And the audit trail verifies, checking 12 entries
    When the tool starts its audit service and records 5 entries
    Then the remaining entries are entries 31 to 47
    And the audit trail verifies, checking 17 entries

  Scenario: A trail purged down to nothing keeps its place in the chain
    Given an audit trail recorded in this order:
      | entries | recorded     |
      | 10      | 200 days ago |
    And the operator has published the chain head
    When the operator purges entries older than 90 days
    Then the audit database holds no entries
    And the chain head is still entry 10, the same as the published head
    And the audit trail verifies, checking 0 entries
    But the audit trail no longer verifies against the published head, whose entry was purged
    When the tool starts its audit service and records 3 entries
    Then the remaining entries are entries 11 to 13
    And the audit trail verifies, checking 3 entries

  Scenario: A dry run counts what would be purged and deletes nothing
    Given an audit trail recorded in this order:
      | entries | recorded     |
      | 30      | 200 days ago |
      | 12      | 5 days ago   |
    When the operator asks what a purge of entries older than 90 days would delete
    Then the dry run reports 30 entries
    And the audit database holds 42 entries
    And no purge anchor and no cleanup run were recorded

  Scenario Outline: A purge with <problem> is refused with a clear message
    Given an audit trail recorded in this order:
      | entries | recorded     |
      | 3       | 200 days ago |
    When the operator tries to purge entries older than <age> days in batches of <size>
    Then the purge is refused with the message "<message>"
    And the audit database holds 3 entries
    And no purge anchor and no cleanup run were recorded

    Examples:
      | problem               | age | size | message                                                       |
      | a zero age            | 0   | 10   | older_than must be a positive duration (got 0:00:00)          |
      | a negative age        | -5  | 10   | older_than must be a positive duration (got -5 days, 0:00:00) |
      | a zero batch size     | 90  | 0    | batch_size must be a positive number of rows (got 0)          |
      | a negative batch size | 90  | -1   | batch_size must be a positive number of rows (got -1)         |
