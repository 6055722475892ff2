Feature: Auditing the commands of a tool
  As the author of a notes tool whose commands run from the command line
  I want each command audited by marking it once, where it is defined
  So that every run leaves one entry saying who ran it, on which note, and whether it worked

  Scenario: A successful export records one success naming the note
    Given the notes tool's "export" command is audited as "note.export"
    When "alice" exports note "n-7"
    And the tool flushes the audit trail
    Then the export finished without an error
    And the stored command entries are, in order:
      | action      | actor | note | outcome | error |
      | note.export | alice | n-7  | success |       |

  Scenario: A failing export records the failure and the user still sees the original error
    Given the notes tool's "export" command is audited as "note.export"
    And the export folder cannot be written to
    When "alice" exports note "n-8"
    And the tool flushes the audit trail
    Then the user sees the export's own error "cannot write export folder/n-8.md"
    And the stored command entries are, in order:
      | action      | actor | note | outcome | error           |
      | note.export | alice | n-8  | failure | PermissionError |

  Scenario: Every run is recorded, and an export the user cancels counts as a failure
    Given the notes tool's "export" command is audited as "note.export"
    When "alice" exports note "n-1"
    And "bob" starts exporting note "n-2" and cancels it
    And "alice" exports note "n-3"
    And the tool flushes the audit trail
    Then the stored command entries are, in order:
      | action      | actor | note | outcome | error |
      | note.export | alice | n-1  | success |       |
      | note.export | bob   | n-2  | failure | Abort |
      | note.export | alice | n-3  | success |       |
    And no entry holds the text of an error message
