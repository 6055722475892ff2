Feature: Changes a tool saves through its ORM are audited field by field
  As the author of a note-taking tool built on SQLAlchemy
  I want every note the tool saves to record who changed which field, from what to what
  So that the trail answers "who changed this note, and what was it before" without audit code at every save

  Background:
    Given the note-taking tool keeps its notes through SQLAlchemy in the audited database

  Scenario Outline: Editing a note records who changed which field (<when>)
    Given the tool's audit captures note changes <when>
    And alice wrote the note "Groceries" saying "milk"
    When bob retitles the note "Groceries" to "Shopping"
    Then the trail shows bob changed the title of the note from "Groceries" to "Shopping"
    And the trail shows alice created the note "Groceries"
    And the audit trail verifies, checking 2 entries

    Examples:
      | when                        |
      | in the same transaction     |
      | once the save has committed |

  Scenario Outline: An edit that is cancelled leaves no change entry (<when>)
    Given the tool's audit captures note changes <when>
    And alice wrote the note "Groceries" saying "milk"
    When bob retitles the note "Groceries" to "Shopping" but the tool cancels the save
    Then the note "Groceries" is still called "Groceries"
    And the trail shows no change by bob

    Examples:
      | when                        |
      | in the same transaction     |
      | once the save has committed |

  Scenario: With failed attempts recorded, a cancelled edit shows as a failure
    Given the tool's audit captures note changes in the same transaction, recording cancelled attempts
    And alice wrote the note "Groceries" saying "milk"
    When bob retitles the note "Groceries" to "Shopping" but the tool cancels the save
    Then the note "Groceries" is still called "Groceries"
    And the trail shows bob's attempt to retitle the note from "Groceries" to "Shopping" failed

  Scenario: Archiving notes in bulk is one entry with the number of notes
    Given the tool's audit captures note changes in the same transaction
    And alice wrote 5 notes
    When carol archives every note at once
    Then the trail shows one bulk archive of notes by carol covering 5 notes
    And the trail shows no entry per archived note

  Scenario Outline: Labelling a note records each label put on or taken off (<when>)
    Given the tool's audit captures note changes <when>
    And alice wrote the note "Groceries" saying "milk"
    When bob labels the note "Groceries" "urgent" and "home"
    And carol takes the label "urgent" off the note "Groceries"
    Then the trail shows bob put the labels "urgent" and "home" on the note
    And the trail shows carol took the label "urgent" off the note

    Examples:
      | when                        |
      | in the same transaction     |
      | once the save has committed |

  Scenario Outline: Moving a note to another folder records the folder it left (<when>)
    Given the tool's audit captures note changes <when>
    And alice filed the note "Groceries" in the folder "Home"
    When bob moves the note "Groceries" to the folder "Work"
    And carol takes the note "Groceries" out of every folder
    Then the trail shows bob moved the note from the folder "Home" to the folder "Work"
    And the trail shows carol moved the note from the folder "Work" to no folder

    Examples:
      | when                        |
      | in the same transaction     |
      | once the save has committed |

  Scenario: A save committed after the audit service shut down is kept, its entry set aside
    Given the tool's audit captures note changes once the save has committed
    When the audit service shuts down while bob's new note "Groceries" is being saved
    Then bob's save of the note "Groceries" succeeded
    And the entry of bob's note waits in the dead-letter file for a replay
