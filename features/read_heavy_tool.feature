Feature: A read-heavy tool audited at writes_only
  As an operator of a tool that does nine reads for every write
  I want writes_only to keep the trail to the writes
  So that the audit database grows with the changes, and I can still see how much was left out

  Scenario: 90 % reads and 10 % writes: only the writes are stored, the reads are counted
    Given a tool with an audit service configured with:
      | setting | value       |
      | level   | writes_only |
    When the tool performs 1000 operations, one write after every 9 reads
    And the tool flushes the audit trail
    Then the audit database holds exactly the recorded entries
    And the audit database holds 100 entries
    And every stored entry is a write
    And at most 10 % of the operations are in the audit database
    And the service's statistics show:
      | counter           | value |
      | accepted          | 100   |
      | written           | 100   |
      | filtered_by_level | 900   |
      | excluded          | 0     |
      | sampled_out       | 0     |
