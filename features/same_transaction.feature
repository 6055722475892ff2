Feature: Audit entries that commit or roll back with the change they describe
  As a desktop tool author who keeps notes in SQLite
  I want the audit entry written in the same transaction as my change
  So that the trail never shows a change that did not happen, nor misses one that did

  Background:
    Given the tool keeps its notes in a SQLite database where note 42 reads "first draft"

  @sqlite_only
  Scenario Outline: The audit entry commits together with the change (<how>)
    Given the tool audits through <how>
    When the tool saves note 42 as "final text" and records "note.save" in one transaction
    Then another program still sees note 42 as "first draft" and no audit entry
    When the tool commits the transaction
    Then another program sees note 42 as "final text"
    And the notes database holds one audit entry "note.save" for note 42

    Examples:
      | how                                        |
      | an audit service bound to that connection  |
      | that connection passed with each entry     |

  @sqlite_only
  Scenario Outline: Rolling back keeps neither the change nor the audit entry (<how>)
    Given the tool audits through <how>
    When the tool saves note 42 as "final text" and records "note.save" in one transaction
    And the tool rolls the transaction back
    Then another program sees note 42 as "first draft"
    And the notes database holds no audit entries

    Examples:
      | how                                        |
      | an audit service bound to that connection  |
      | that connection passed with each entry     |
