Feature: Entries keep the order they were recorded in
  As an operator reading the audit trail after an incident
  I want the entries of one thread stored in the order that thread recorded them
  So that the trail tells what happened in the sequence it happened

  Background:
    Given a tool with an audit service configured with:
      | setting               | value |
      | buffer_max_size       | 7     |
      | buffer_flush_interval | 0.05  |

  Scenario: One thread's entries are stored in recording order, across many batches
    When the tool records 150 entries
    And the tool flushes the audit trail
    Then the audit database holds the recorded entries in recording order
    And the audit writer needed more than 10 transactions

  Scenario Outline: Several threads recording at once each keep their own order
    When <threads> threads of the tool each record <per_thread> entries at the same time
    And the tool flushes the audit trail
    Then the audit database holds <total> entries
    And each thread's entries are stored in the order that thread recorded them

    Examples:
      | threads | per_thread | total |
      | 2       | 100        | 200   |
      | 8       | 40         | 320   |
