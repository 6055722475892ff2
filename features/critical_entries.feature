Feature: Privileged access to sensitive data is always audited, and on disk at once
  As an operator answerable for who looked at sensitive records
  I want critical entries to bypass the level, the exclusions and sampling, and to be committed before
  recording returns
  So that no setting meant to cut noise can hide a break-glass access, and a crash cannot lose it

  Background:
    Given the tool's audit settings are:
      | setting               | value          |
      | level                 | writes_only    |
      | exclude_resources     | patient_record |
      | sample_rate           | 0              |
      | buffer_flush_interval | 30             |

  Scenario: A critical read of an excluded resource is audited and committed before recording returns
    Given the tool has started its audit service
    When an administrator reads patient record "p-17" as a critical entry, another program looking right after
    Then recording returned an event id and the other program saw the entry committed
    And the service's statistics show:
      | counter           | value |
      | accepted          | 1     |
      | written           | 1     |
      | filtered_by_level | 0     |
      | excluded          | 0     |
      | sampled_out       | 0     |

  Scenario: The same read as an ordinary entry is not audited, and an ordinary write is written behind
    Given the tool has started its audit service
    When a clerk reads patient record "p-18" as an ordinary entry
    Then only these recordings returned an event id: nothing
    When the tool records a create of note "n-1", another program looking right after
    Then recording returned an event id but the other program did not see the entry yet
    When the tool flushes the audit trail
    Then the other program now sees the entry committed
    And the service's statistics show:
      | counter           | value |
      | filtered_by_level | 1     |

  Scenario: With critical_sync off a critical entry is still audited, but written behind
    Given the tool's audit settings are:
      | setting       | value |
      | critical_sync | false |
    And the tool has started its audit service
    When an administrator reads patient record "p-19" as a critical entry, another program looking right after
    Then recording returned an event id but the other program did not see the entry yet
    When the tool flushes the audit trail
    Then the other program now sees the entry committed

  @sqlite_only
  Scenario: A critical entry the database refuses is not reported as recorded, and is kept aside
    Given the tool has started its audit service
    When an administrator reads patient record "p-20" as a critical entry with event id "evt-7"
    Then that recording returned the event id "evt-7"
    When an administrator reads patient record "p-21" as a critical entry with event id "evt-7"
    Then recording failed with an audit write error starting "critical entry evt-7 was not committed: IntegrityError: UNIQUE constraint failed: audit_entries.event_id; it is in the dead-letter file"
    And the dead-letter file holds the critical read of patient record "p-21"
