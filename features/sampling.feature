Feature: Keeping only a sample of the reads
  As an operator of a tool whose reads would flood the audit trail
  I want to keep only a share of the reads while every write is still audited
  So that the trail stays small, and the same event is kept or left out the same way every time

  Scenario: With sample_rate 0 no read is stored, but every write is
    Given a tool with an audit service configured with:
      | setting     | value |
      | level       | all   |
      | sample_rate | 0     |
    When the tool records these actions:
      | action      | operation | resource | id |
      | note.create | create    | note     | 1  |
      | note.open   | read      | note     | 1  |
      | note.list   | read      | note     |    |
      | note.delete | delete    | note     | 1  |
    Then only these recordings returned an event id: note.create, note.delete
    When the tool flushes the audit trail
    Then the audit database holds these actions in order: note.create, note.delete
    And the service's statistics show:
      | counter           | value |
      | sampled_out       | 2     |
      | filtered_by_level | 0     |

  Scenario: With sample_reads off, sampling applies to writes too
    Given a tool with an audit service configured with:
      | setting      | value |
      | level        | all   |
      | sample_rate  | 0     |
      | sample_reads | false |
    When the tool records these actions:
      | action      | operation | resource | id |
      | note.create | create    | note     | 1  |
      | note.open   | read      | note     | 1  |
    Then only these recordings returned an event id: nothing
    And the service's statistics show:
      | counter     | value |
      | sampled_out | 2     |
      | accepted    | 0     |

  Scenario: The same event id gets the same sampling decision in every service
    Given the tool's audit settings are:
      | setting     | value |
      | level       | all   |
      | sample_rate | 0.5   |
    When two freshly started audit services each record reads with the event ids "read-1" to "read-40"
    Then both services kept the same event ids
    And some reads were kept and the others were counted as sampled out
