Feature: Who and which request, said once for a whole block of work
  As an app author whose commands run on behalf of a signed-in user
  I want to name the user and the request once, where the command starts
  So that every entry recorded inside names them without each call site passing them

  Scenario: Every entry recorded while handling a request names its user and request
    Given a tool with an audit service
    When the tool starts handling a request from "alice" with request id "req-1"
    And the tool saves note "n-1" without naming anyone
    And the tool's event bus announces that note "n-2" was shared
    And the tool finishes handling the request
    And the tool saves note "n-3" without naming anyone
    And the tool flushes the audit trail
    Then the stored entries name, in order:
      | note | actor  | request |
      | n-1  | alice  | req-1   |
      | n-2  | alice  | req-1   |
      | n-3  |        |         |

  Scenario: An entry that names its own actor keeps it
    Given a tool with an audit service
    When the tool starts handling a request from "alice" with request id "req-2"
    And the tool saves note "n-1" on behalf of "scheduler"
    And the tool finishes handling the request
    And the tool flushes the audit trail
    Then the stored entries name, in order:
      | note | actor     | request |
      | n-1  | scheduler | req-2   |

  Scenario: An inner block of work names a different user, then the outer one comes back
    Given a tool with an audit service
    When the tool starts handling a request from "alice" with request id "req-3"
    And the tool starts handling a request from "support" with request id "req-4"
    And the tool saves note "n-1" without naming anyone
    And the tool finishes handling the request
    And the tool saves note "n-2" without naming anyone
    And the tool finishes handling the request
    And the tool flushes the audit trail
    Then the stored entries name, in order:
      | note | actor   | request |
      | n-1  | support | req-4   |
      | n-2  | alice   | req-3   |

  Scenario: Work handed to a background thread names the user only when the context is passed on
    Given a tool with an audit service
    When the tool starts handling a request from "alice" with request id "req-5"
    And a background thread saves note "n-1" without the request's context
    And a background thread saves note "n-2" with a copy of the request's context
    And the tool finishes handling the request
    And the tool flushes the audit trail
    Then the stored entries name, in order:
      | note | actor | request |
      | n-1  |       |         |
      | n-2  | alice | req-5   |

  Scenario: A maintenance script with auditing switched off records only critical entries
    Given a tool with an audit service
    When the tool switches auditing off for a maintenance run
    And the tool saves note "n-1" without naming anyone
    And the tool saves note "n-2" without naming anyone
    And the tool records a critical entry "admin.override"
    And the tool switches auditing back on
    And the tool saves note "n-3" without naming anyone
    And the tool flushes the audit trail
    Then the audit database holds 2 entries
    And the service's statistics show:
      | counter          | value |
      | skipped_disabled | 2     |
