Feature: One audit entry per action and resource within a unit of work
  As an app author whose save button may write the same note several times in one command
  I want repeats of the same action on the same resource inside a unit of work recorded once
  So that the trail tells what the user did, not how often my code called save

  Scenario: The same save twice in one unit of work is stored once
    Given a tool with an audit service
    When the tool starts a unit of work
    And the tool saves note "n-1"
    And the tool saves note "n-1"
    And the tool saves note "n-2"
    And the tool ends the unit of work
    Then the saves returned, in order: an event id, nothing, an event id
    When the tool flushes the audit trail
    Then the audit database holds the save of note "n-1" once
    And the audit database holds the save of note "n-2" once
    And the service's statistics show:
      | counter      | value |
      | deduplicated | 1     |

  Scenario: Outside a unit of work both saves are stored
    Given a tool with an audit service
    When the tool saves note "n-1"
    And the tool saves note "n-1"
    And the tool flushes the audit trail
    Then the saves returned, in order: an event id, an event id
    And the audit database holds the save of note "n-1" 2 times

  Scenario: A nested unit of work shares what was recorded, unless it is started fresh
    Given a tool with an audit service
    When the tool starts a unit of work
    And the tool saves note "n-1"
    And the tool starts a unit of work inside it
    And the tool saves note "n-1"
    And the tool ends the unit of work
    And the tool starts a fresh unit of work inside it
    And the tool saves note "n-1"
    And the tool saves note "n-1"
    And the tool ends the unit of work
    And the tool ends the unit of work
    And the tool flushes the audit trail
    Then the saves returned, in order: an event id, nothing, an event id, nothing
    And the audit database holds the save of note "n-1" 2 times
    And the service's statistics show:
      | counter      | value |
      | deduplicated | 2     |

  Scenario: The tool decides what counts as a repeat
    Given a tool with an audit service
    When the tool starts a unit of work in which any save of the same note counts as a repeat
    And "alice" saves note "n-1"
    And "bob" saves note "n-1"
    And the tool ends the unit of work
    And the tool flushes the audit trail
    Then the saves returned, in order: an event id, nothing
    And the audit database holds the save of note "n-1" once

  Scenario: Critical entries are never de-duplicated
    Given a tool with an audit service
    When the tool starts a unit of work
    And the tool saves note "n-1" as a critical entry
    And the tool saves note "n-1" as a critical entry
    And the tool ends the unit of work
    And the tool flushes the audit trail
    Then the saves returned, in order: an event id, an event id
    And the audit database holds the save of note "n-1" 2 times
    And the service's statistics show:
      | counter      | value |
      | deduplicated | 0     |

  Scenario: A save that failed while the database was locked is stored when tried again
    Given a tool with an audit service configured with:
      | setting      | value |
      | async_writes | false |
      | busy_timeout | 0.1   |
    And another program holds the audit database's write lock
    When the tool starts a unit of work
    And the tool tries to save note "n-1"
    Then recording fails with an audit write error
    When the other program releases the write lock
    And the tool saves note "n-1"
    And the tool ends the unit of work
    Then the saves returned, in order: an event id
    And the audit database holds the save of note "n-1" once
    And the service's statistics show:
      | counter      | value |
      | deduplicated | 0     |
