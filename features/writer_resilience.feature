Feature: The audit writer survives database trouble
  As an operator responsible for the audit trail
  I want the writer to wait out a busy database and to set aside an entry it cannot store
  So that neither problem loses accepted entries or stops auditing

  Scenario: A database that stays busy for a while is retried and nothing is lost
    Given a tool with an audit service configured with:
      | setting               | value |
      | buffer_flush_interval | 0.05  |
    And another program holds the audit database's write lock
    When the tool records 30 entries
    Then the audit writer retries while the database is busy
    And a flush limited to 0.3 seconds reports that not everything is committed yet
    When the other program releases the write lock
    And the tool flushes the audit trail
    Then the audit database holds the recorded entries in recording order
    And the service reports 0 dead-lettered entries
    And the audit writer is still running

  @sqlite_only
  Scenario: An entry that cannot be stored goes to the dead-letter file; the rest of its batch is committed
    Given a tool with an audit service configured with:
      | setting               | value |
      | buffer_flush_interval | 30    |
    When the tool records these entries:
      | action      | event id |
      | note.create |          |
      | note.save   | dup-0001 |
      | note.rename |          |
      | note.copy   | dup-0001 |
      | note.delete |          |
    And the tool flushes the audit trail
    Then the audit database holds these actions in order: note.create, note.save, note.rename, note.delete
    And the dead-letter file holds only the "note.copy" entry with event id "dup-0001"
    And the dead-letter file says why: "UNIQUE"
    And the service reports 1 dead-lettered entry
    And the operator is told in the log that an entry was moved to the dead-letter file

  Scenario: The writer keeps working after setting an entry aside
    Given a tool with an audit service
    And the writer has already set aside an entry that reused another entry's event id
    When the tool records 20 entries
    And the tool flushes the audit trail
    Then the audit database holds 21 entries
    And every entry recorded after the failure is in the audit database
    And the audit writer is still running

  @sqlite_only
  Scenario: Entries that only reach the log are counted, closing reports failure, and the saved log brings them back
    Given a tool with an audit service
    And the audit database refuses entries by "mallory"
    And the dead-letter file cannot be written
    When the tool records 2 entries
    And the tool records an entry by "mallory"
    And the tool records 2 entries
    Then a flush reports that not every entry is safe
    And the service counts 1 entry kept only in the log
    And the log holds the entry by "mallory" as a dead-letter line
    And closing the audit service reports failure
    When the database stops refusing entries by "mallory"
    And the operator saves the log to "app.log" and runs "audit-engine replay-deadletter --from app.log"
    Then the replay prints "Replayed 1 entry (0 already stored) from app.log; 0 lines could not be read"
    And the audit database holds 5 entries
