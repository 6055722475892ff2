Feature: Recording without waiting on the database
  As a desktop tool author
  I want recording an audit entry to return at once, even while the database is busy
  So that my users never wait on the audit trail

  Scenario: Entries are accepted while another program holds the database's write lock
    Given a tool with an audit service
    And another program holds the audit database's write lock
    When the tool records 25 entries
    Then every recording returned an event id while the lock was still held
    And the audit database holds no entries yet
    When the other program releases the write lock
    And the tool flushes the audit trail
    Then the audit database holds the recorded entries in recording order

  Scenario: Recorded entries are committed behind the tool's back, in batches
    Given a tool with an audit service configured with:
      | setting               | value |
      | buffer_flush_interval | 30    |
    When the tool records 100 entries
    Then every recording returned an event id
    And the audit database holds no entries yet
    When the tool flushes the audit trail
    Then the audit database holds exactly the recorded entries
    And the service reports 100 accepted entries
