Feature: Auditing the tool's domain events
  As a desktop tool author who already publishes domain events on an event bus
  I want the audit service to listen on that bus
  So that every event is audited without an audit call beside each one

  Scenario: Each emitted event becomes an audit entry, in the order emitted
    Given a tool with an audit service
    And the audit service listens to the tool's event bus
    When the tool emits these note events:
      | event       | actor | note | words |
      | note.create | alice | 7    | 0     |
      | note.save   | alice | 7    | 120   |
      | note.delete | bob   | 7    | 120   |
    And the tool flushes the audit trail
    Then the audit database holds these audit entries in order:
      | action      | actor | resource type | resource id | words |
      | note.create | alice | note          | 7           | 0     |
      | note.save   | alice | note          | 7           | 120   |
      | note.delete | bob   | note          | 7           | 120   |

  Scenario: A failing listener does not stop the audit
    Given a tool with an audit service
    And a listener that fails on every event listens to the tool's event bus first
    And the audit service listens to the tool's event bus
    When the tool emits these note events:
      | event       | actor | note | words |
      | note.save   | alice | 9    | 42    |
      | note.delete | alice | 9    | 42    |
    Then the tool is told the failing listener broke on each event
    When the tool flushes the audit trail
    Then the audit database holds these audit entries in order:
      | action      | actor | resource type | resource id | words |
      | note.save   | alice | note          | 9           | 42    |
      | note.delete | alice | note          | 9           | 42    |

  Scenario: The tool chooses which events are audited
    Given a tool with an audit service
    And the audit service listens to the tool's event bus, skipping "note.preview" events
    When the tool emits these note events:
      | event        | actor | note | words |
      | note.preview | alice | 3    | 10    |
      | note.save    | alice | 3    | 10    |
    And the tool flushes the audit trail
    Then the audit database holds these audit entries in order:
      | action    | actor | resource type | resource id | words |
      | note.save | alice | note          | 3           | 10    |

  Scenario: A plain domain event says who did what to which resource
    Given a tool with an audit service
    And the audit service listens to the tool's event bus
    When the tool emits a plain domain event "note.save" in which "alice" updates note "42"
    And the tool flushes the audit trail
    Then the audit database holds one entry: "note.save" by "alice", operation "update", on note "42"

  Scenario: A domain event with a field the tool misspelt is refused where it is made
    Given a tool with an audit service
    And the audit service listens to the tool's event bus
    When the tool builds a plain domain event with the unknown field "user"
    Then building the event fails in the tool's own thread naming "user"
    When the tool flushes the audit trail
    Then the audit database holds no entries
