Feature: Committing everything before the tool exits
  As a command-line tool author
  I want flush and close to commit every entry the audit service accepted
  So that no audit entry is lost when my tool finishes

  Background:
    Given the tool's audit settings are:
      | setting               | value |
      | buffer_flush_interval | 30    |

  Scenario: Flushing commits everything accepted so far
    Given the tool has started its audit service
    And the tool has recorded 40 entries
    When the tool flushes the audit trail
    Then the audit database holds exactly the recorded entries
    When the tool records 15 entries
    Then the audit database holds 40 entries
    When the tool flushes the audit trail
    Then the audit database holds 55 entries

  Scenario: Closing drains the queue and commits it
    Given the tool has started its audit service
    And the tool has recorded 40 entries
    When the tool closes the audit service
    Then the audit database holds exactly the recorded entries
    And the audit writer has stopped

  Scenario: Recording after closing is refused
    Given the tool has started its audit service
    And the tool has closed the audit service
    When the tool tries to record an entry
    Then recording is refused because the audit service is closed
    And the audit database holds no entries

  Scenario: Closing twice is harmless
    Given the tool has started its audit service
    And the tool has recorded 3 entries
    When the tool closes the audit service
    And the tool closes the audit service again
    Then closing reported success both times
    And the audit database holds exactly the recorded entries

  Scenario: Leaving a with-block closes the service and commits what was recorded
    When the tool records 10 entries inside a with-block of its audit service
    Then the audit service is closed
    And the audit database holds exactly the recorded entries

  Scenario: An error inside the with-block still commits what was recorded before it
    When the tool records 5 entries inside a with-block of its audit service and then fails
    Then the tool's own error comes out of the with-block unchanged
    And the audit service is closed
    And the audit database holds exactly the recorded entries

  Scenario: Closing while another program keeps the database locked sets the entries aside
    Given the tool has started its audit service
    And another program holds the audit database's write lock
    And the tool has recorded 10 entries
    When the tool closes the audit service, waiting at most 0.5 seconds
    Then closing reports that not everything could be committed
    And the dead-letter file holds every recorded entry
    And the service reports 10 dead-lettered entries
    When the other program releases the write lock
    Then the audit database holds no entries
