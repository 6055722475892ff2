Feature: An operator keeps the audit trail from a shell with the audit-engine command
  As an operator who looks after an application's audit trail from a terminal and from scripts
  I want one command that records, queries, proves, prunes and repairs the trail
  So that I never open the SQLite file by hand, and a script can rely on exit codes and output

  Background:
    Given an operator's shell in an empty directory

  Scenario: A shell script records its steps; a broken line is reported and the others are kept
    Given the operator has run "audit-engine init"
    When a shell script pipes these lines into "audit-engine record --stdin":
      """
      {"action": "backup.start", "actor": "cron", "details": {"target": "/srv/notes"}}
      {"action": "backup.copy", "actor": "cron", "details": {"files": 120}
      {"action": "backup.finish", "actor": "cron", "operation": "update"}
      """
    Then audit-engine exits with status 1
    And audit-engine prints "accepted 2, filtered 0, written 2"
    And audit-engine reports "Error: line 2: not JSON (Expecting ',' delimiter)"
    And the operator's audit trail holds the actions "backup.start, backup.finish"

  @sqlite_only
  Scenario: A script learns that an entry it recorded was not written
    Given the operator has run "audit-engine init"
    When a shell script pipes these lines into "audit-engine record --stdin":
      """
      {"action": "import.row", "event_id": "row-1"}
      {"action": "import.row", "event_id": "row-1"}
      """
    Then audit-engine exits with status 1
    And audit-engine prints "accepted 2, filtered 0, written 1, dead-lettered 1"
    And audit-engine ends its report with "Error: 1 entry was not committed (IntegrityError: UNIQUE constraint failed: audit_entries.event_id): kept in audit.db.deadletter.jsonl; `audit-engine replay-deadletter` stores them once the cause is fixed"

  @sqlite_only
  Scenario: The demo never writes simulated entries into a real audit trail
    Given the operator's audit trail holds 2 entries recorded today
    When the operator runs "audit-engine --db audit.db demo --events 5"
    Then audit-engine exits with status 1
    And audit-engine reports "Error: audit.db was not made by the demo: it writes simulated entries only to a new file or to one an earlier demo made; choose another --db"
    And the operator's audit trail file is as the application left it, byte for byte
    When the operator runs "audit-engine demo --events 5"
    Then audit-engine exits with status 0
    When the operator runs "audit-engine demo --events 5"
    Then audit-engine exits with status 0
    And audit-engine's first line is "Audited 5 events into audit-demo.db"

  Scenario: The operator asks what one user did in the last hour, as JSON for a script
    Given the operator's audit trail holds these entries:
      | action      | actor | operation | recorded       |
      | note.create | alice | create    | 3 hours ago    |
      | note.save   | alice | update    | 10 minutes ago |
      | note.save   | bob   | update    | 5 minutes ago  |
      | note.delete | alice | delete    | 1 minute ago   |
    When the operator runs "audit-engine query --actor alice --since 1h --format json"
    Then audit-engine exits with status 0
    And the output is one JSON array of the entries "note.save, note.delete", each by "alice"

  Scenario: A clean audit trail verifies with one line naming its head
    Given the operator's audit trail holds 3 entries recorded today
    When the operator runs "audit-engine verify"
    Then audit-engine exits with status 0
    And audit-engine prints "OK: 3 rows verified" and the head of the chain

  Scenario: A tampered audit trail fails verification, naming the row
    Given the operator's audit trail holds 3 entries recorded today
    And someone with write access to the file has changed the actor of entry 2 to "mallory"
    When the operator runs "audit-engine verify"
    Then audit-engine exits with status 1
    And audit-engine prints nothing
    And audit-engine reports "Error: chain broken at row 2: row 2 was modified (its hash does not match its contents) (1 row verified before it)"

  Scenario: The operator purges entries older than 90 days, after a dry run
    Given the operator's audit trail holds 3 entries recorded 200 days ago and 2 recorded today
    When the operator runs "audit-engine purge --older-than 90d --dry-run"
    Then audit-engine exits with status 0
    And audit-engine prints a line starting "Would purge 3 entries older than"
    And the operator's audit trail holds 5 entries
    When the operator runs "audit-engine purge --older-than 90d --batch-size 2"
    Then audit-engine exits with status 0
    And audit-engine prints a line starting "Purged 3 entries older than"
    And the operator's audit trail holds 2 entries
    When the operator runs "audit-engine verify"
    Then audit-engine exits with status 0
    And audit-engine prints "OK: 2 rows verified" and the head of the chain

  @sqlite_only
  Scenario: The operator replays the dead-letter file once the disk problem is fixed
    Given the operator's audit trail holds 2 entries recorded today
    And the writer has set aside 2 entries in the dead-letter file because "disk I/O error"
    When the operator runs "audit-engine replay-deadletter"
    Then audit-engine exits with status 0
    And audit-engine prints "Replayed 2 entries (0 already stored); 0 lines kept"
    And the dead-letter file is gone
    And the operator's audit trail holds 4 entries, the set-aside ones last
    When the operator runs "audit-engine replay-deadletter"
    Then audit-engine exits with status 0
    And audit-engine prints "Nothing to replay: no dead-letter file at audit.db.deadletter.jsonl"

  @sqlite_only
  Scenario: A mistyped database path is an error, not a new empty database
    Given the operator has run "audit-engine init"
    When the operator runs "audit-engine --db audti.db stats"
    Then audit-engine exits with status 1
    And audit-engine reports "Error: no audit database at audti.db"
    And the operator's directory holds no file "audti.db"
