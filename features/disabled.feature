Feature: Switching auditing off
  As an operator running a tool where no audit trail is wanted
  I want to switch auditing off entirely
  So that the tool runs without an audit database or a writer thread

  Scenario Outline: A disabled audit service records nothing and creates no file (<where>)
    Given auditing is switched off <where>
    When the tool records 3 entries
    Then no recording returned an event id
    And flushing and closing the audit service both succeed
    And no audit database file was created
    And the audit service started no writer thread

    Examples:
      | where                                        |
      | in the tool's code                           |
      | with the environment variable AUDIT_TRAIL_ENABLED |
