Feature: Choosing what happens when the audit queue is full
  As an operator of a desktop tool
  I want to choose whether a full audit queue makes the tool wait, drops entries, or writes directly
  So that I trade responsiveness against completeness knowingly, never by accident

  # Each scenario makes the queue full for real: another program holds the write lock, the writer
  # is stuck retrying with one entry in hand, and the tool fills the two free places.

  Scenario: "block" waits a bounded time for room, then refuses the entry loudly
    Given a tool with an audit service configured with:
      | setting         | value |
      | queue_maxsize   | 2     |
      | buffer_max_size | 1     |
      | on_full         | block |
      | block_timeout   | 0.3   |
    And another program holds the audit database's write lock
    And the audit writer is stuck behind the lock with one entry in hand
    And the tool has filled the audit queue with 2 entries
    When the tool tries to record an entry
    Then recording fails with AuditQueueFull after waiting about 0.3 seconds
    When the other program releases the write lock
    And the tool flushes the audit trail
    Then the audit database holds exactly the recorded entries
    And the audit database holds 3 entries

  Scenario: "drop" discards the entries that do not fit and counts them
    Given a tool with an audit service configured with:
      | setting         | value |
      | queue_maxsize   | 2     |
      | buffer_max_size | 1     |
      | on_full         | drop  |
    And another program holds the audit database's write lock
    And the audit writer is stuck behind the lock with one entry in hand
    And the tool has filled the audit queue with 2 entries
    When the tool records 5 entries
    Then none of those 5 entries was accepted
    And the service reports 5 dropped entries
    And the operator is warned in the log that audit entries were dropped
    When the other program releases the write lock
    And the tool flushes the audit trail
    Then the audit database holds exactly the recorded entries
    And the audit database holds 3 entries

  Scenario: "sync" writes the entry in the tool's own thread once the lock is released
    Given a tool with an audit service configured with:
      | setting         | value |
      | queue_maxsize   | 2     |
      | buffer_max_size | 1     |
      | on_full         | sync  |
      | busy_timeout    | 5     |
    And another program holds the audit database's write lock
    And the audit writer is stuck behind the lock with one entry in hand
    And the tool has filled the audit queue with 2 entries
    And the other program will release the write lock in 0.3 seconds
    When the tool tries to record an entry
    Then recording returned an event id only after the lock was released
    And that entry is in the audit database before any flush
    When the tool flushes the audit trail
    Then the audit database holds exactly the recorded entries
    And the audit database holds 4 entries
