Feature: Choosing which operations are audited
  As an operator of a tool that reads far more often than it writes
  I want to choose an audit level
  So that the trail holds the operations my compliance rules ask for, and not every read

  Scenario: writes_only audits a create but not a list of notes
    Given a tool with an audit service configured with:
      | setting | value       |
      | level   | writes_only |
    When the tool records these actions:
      | action      | operation | resource | id |
      | note.create | create    | note     | 1  |
      | note.list   | read      | note     |    |
    Then only these recordings returned an event id: note.create
    When the tool flushes the audit trail
    Then the audit database holds these actions in order: note.create
    And the service's statistics show:
      | counter           | value |
      | accepted          | 1     |
      | filtered_by_level | 1     |
      | excluded          | 0     |
      | sampled_out       | 0     |

  Scenario: mutations_only audits an update but not a create
    Given a tool with an audit service configured with:
      | setting | value          |
      | level   | mutations_only |
    When the tool records these actions:
      | action      | operation | resource | id |
      | note.create | create    | note     | 1  |
      | note.rename | update    | note     | 1  |
    Then only these recordings returned an event id: note.rename
    When the tool flushes the audit trail
    Then the audit database holds these actions in order: note.rename
    And the service's statistics show:
      | counter           | value |
      | filtered_by_level | 1     |

  Scenario Outline: At level <level> the trail keeps <kept>
    Given a tool with an audit service configured with:
      | setting | value   |
      | level   | <level> |
    When the tool records a create, a read, an update and a delete of note "7"
    Then only these recordings returned an event id: <kept>
    When the tool flushes the audit trail
    Then the audit database holds these operations in order: <kept>
    And the service's statistics show:
      | counter           | value      |
      | filtered_by_level | <filtered> |

    Examples:
      | level          | kept                         | filtered |
      | all            | create, read, update, delete | 0        |
      | writes_only    | create, update, delete       | 1        |
      | mutations_only | update, delete               | 2        |
      | deletes_only   | delete                       | 3        |
      | failures_only  | nothing                      | 4        |

  Scenario: failures_only audits every operation that failed, reads included
    Given a tool with an audit service configured with:
      | setting | value         |
      | level   | failures_only |
    When the tool records these actions:
      | action      | operation | resource | id | outcome |
      | note.create | create    | note     | 1  | success |
      | note.open   | read      | note     | 2  | failure |
      | note.delete | delete    | note     | 3  | failure |
      | note.delete | delete    | note     | 1  | success |
    And the tool flushes the audit trail
    Then the audit database holds these operations in order: read, delete
    And the service's statistics show:
      | counter           | value |
      | accepted          | 2     |
      | filtered_by_level | 2     |
