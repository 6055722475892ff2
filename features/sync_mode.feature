Feature: Committing each entry before the tool goes on
  As an operator of a tool where every audited action must be on disk before it completes
  I want to switch write-behind off
  So that recording returns only once its entry is committed

  Background:
    Given a tool with an audit service configured with:
      | setting      | value |
      | async_writes | false |
      | busy_timeout | 0.2   |

  Scenario: Each entry is visible to other programs as soon as recording returns
    When the tool records 5 entries, another program looking after each one
    Then the other program saw each entry as soon as recording returned
    And the audit service runs no writer thread

  Scenario: A database locked for longer than busy_timeout makes recording fail loudly
    Given another program holds the audit database's write lock
    When the tool tries to record an entry
    Then recording fails with an audit write error
    When the other program releases the write lock
    Then the audit database holds no entries
