Feature: Keeping health checks and metrics out of the audit trail
  As an operator of a tool that polls its own health and metrics all day
  I want to exclude actions and resource types by name or by pattern
  So that the trail shows what people did, not what the monitoring did

  Scenario: Excluded actions and resources set in the environment are not audited, a create still is
    Given the environment variable AUDIT_TRAIL_LEVEL is set to "all"
    And the environment variable AUDIT_TRAIL_EXCLUDE_ACTIONS is set to "health_check,metrics_read"
    And the environment variable AUDIT_TRAIL_EXCLUDE_RESOURCES is set to "metric,health"
    When the tool starts its audit service from the environment
    And the tool records these actions:
      | action        | operation | resource | id    |
      | health_check  | execute   |          |       |
      | metrics_read  | read      | report   | daily |
      | gauge.update  | update    | metric   | cpu   |
      | probe.run     | execute   | health   | db    |
      | note.create   | create    | note     | 1     |
    Then only these recordings returned an event id: note.create
    When the tool flushes the audit trail
    Then the audit database holds these actions in order: note.create
    And the service's statistics show:
      | counter           | value |
      | accepted          | 1     |
      | excluded          | 4     |
      | filtered_by_level | 0     |

  Scenario: A glob excludes every action that starts with health_
    Given a tool with an audit service configured with:
      | setting         | value    |
      | exclude_actions | health_* |
    When the tool records these actions:
      | action           | operation |
      | health_check     | create    |
      | health_db        | update    |
      | note.create      | create    |
      | app.health_check | create    |
    Then only these recordings returned an event id: note.create, app.health_check
    When the tool flushes the audit trail
    Then the audit database holds these actions in order: note.create, app.health_check
    And the service's statistics show:
      | counter  | value |
      | excluded | 2     |

  Scenario: The level is applied before the exclusions
    Given a tool with an audit service configured with:
      | setting           | value       |
      | level             | writes_only |
      | exclude_resources | metric*     |
    When the tool records these actions:
      | action       | operation | resource   | id  |
      | metrics.list | read      | metric     |     |
      | gauge.reset  | update    | metric_cpu | cpu |
      | note.create  | create    | note       | 1   |
    And the tool flushes the audit trail
    Then the audit database holds these actions in order: note.create
    And the service's statistics show:
      | counter           | value |
      | filtered_by_level | 1     |
      | excluded          | 1     |
