Feature: Tampering with the audit trail shows when it is verified
  As a compliance reviewer who must trust the audit trail as evidence
  I want any change to the stored entries to fail verification, naming the entry where it shows
  So that an edited, deleted, forged, reordered or shortened trail cannot pass for the original

  Scenario: An untouched trail verifies, and its head is the one published
    Given an audit trail of 10 entries recorded an hour ago, whose chain head the operator published
    When the reviewer verifies the audit trail
    Then verification succeeds, checking 10 entries
    And verification ends at entry 10, the same as the published head

  Scenario Outline: Someone who <tampering> is caught at entry <bad>
    Given an audit trail of 10 entries recorded an hour ago, whose chain head the operator published
    When someone <tampering> directly in the database file
    And the reviewer verifies the audit trail
    Then verification fails at entry <bad>: "<reason>"

    Examples:
      | tampering                                 | bad | reason                                                        |
      | changes the actor of entry 4 to "mallory" | 4   | row 4 was modified (its hash does not match its contents)     |
      | deletes entry 6                           | 7   | row 6 is missing (deleted from the chain)                     |
      | deletes entries 1 to 3                    | 4   | rows 1..3 are missing (deleted from the chain)                |
      | inserts a forged entry after entry 5      | 7   | row 7 does not link to the row before it (prev_hash mismatch) |
      | swaps entries 3 and 4                     | 3   | row 3 does not link to the row before it (prev_hash mismatch) |

  Scenario: Deleting the newest entries shows only against a head published earlier
    Given an audit trail of 10 entries recorded an hour ago, whose chain head the operator published
    When someone deletes the newest 3 entries directly in the database file
    And the reviewer verifies the audit trail
    Then verification succeeds, checking 7 entries
    When the reviewer verifies the audit trail against the published head
    Then verification fails at entry 8: "the chain ends at id 7, before the expected head 10: rows were deleted from its end"

  Scenario: A forger who recomputes every hash after a forged entry is caught by the published head
    Given an audit trail of 10 entries recorded an hour ago, whose chain head the operator published
    When someone inserts a forged entry after entry 5 and recomputes every hash after it directly in the database file
    And the reviewer verifies the audit trail
    Then verification succeeds, checking 11 entries
    When the reviewer verifies the audit trail against the published head
    Then verification fails at entry 10: "row 10 differs from the expected head (hash mismatch)"

  Scenario Outline: Deleting entries behind a forged purge anchor is caught, with or without the published head
    Given an audit trail of 50 entries recorded an hour ago, whose chain head the operator published
    When someone deletes entries 1 to <last> and adds a purge anchor for entry <last> directly in the database file
    And the reviewer verifies the audit trail
    Then verification fails: "anchor 1 is not part of the anchor chain (it has no hash: a purge did not write it)"
    When the reviewer verifies the audit trail against the published head
    Then verification fails: "anchor 1 is not part of the anchor chain (it has no hash: a purge did not write it)"

    Examples:
      | last |
      | 50   |
      | 40   |

  Scenario: A forger who recomputes the anchor's hash cannot hide the published head
    Given an audit trail of 50 entries recorded an hour ago, whose chain head the operator published
    When someone deletes entries 1 to 50 and adds a purge anchor with a recomputed hash directly in the database file
    And the reviewer verifies the audit trail against the published head, with no minimum retention
    Then verification fails at entry 50: "row 50, the expected head, is gone (an anchor claims it was purged): a published head must still be in the table; publish heads more often than the retention period"

  Scenario: A forger who recomputes the anchor's hash over recent entries breaks the retention setting
    Given an audit trail of 50 entries recorded an hour ago, whose chain head the operator published
    When someone deletes entries 1 to 40 and adds a purge anchor with a recomputed hash directly in the database file
    And the reviewer verifies the audit trail with a minimum retention of 90 days
    Then verification fails, saying "anchor 1 purged rows younger than the minimum retention of 90 days: its cutoff"

  Scenario: Entries recorded after the head was published still verify against it
    Given an audit trail of 10 entries recorded an hour ago, whose chain head the operator published
    When the tool starts its audit service and records 5 entries
    And the reviewer verifies the audit trail against the published head
    Then verification succeeds, checking 15 entries

  @sqlite_only
  Scenario Outline: Verifying <file> fails with a clear message
    Given <file> named "notes.db"
    When the reviewer tries to verify "notes.db"
    Then verification is refused with the message "<message>"
    And "notes.db" is unchanged

    Examples:
      | file                                  | message                                                             |
      | another application's SQLite database | notes.db is not an audit database (no audit_entries table)          |
      | a text file                           | notes.db is not a usable audit database: file is not a database     |
      | an empty directory                    | notes.db is a directory, not an audit database                      |

  @sqlite_only
  Scenario: Verifying a file that does not exist fails and creates nothing
    When the reviewer tries to verify "missing.db"
    Then verification is refused with the message "no audit database at missing.db"
    And there is no file "missing.db"

  Scenario: A day's entries exported as JSON lines verify offline, linked to the head published before
    Given an audit trail recorded in this order:
      | entries | recorded   |
      | 4       | 3 days ago |
    And the operator has published the chain head
    And an audit trail recorded in this order:
      | entries | recorded   |
      | 6       | 2 days ago |
      | 5       | 1 day ago  |
    When the operator exports the entries of the day 2 days ago as JSON lines
    Then the export holds entries 5 to 10
    When the reviewer verifies the export offline, starting from the published head
    Then verification succeeds, checking 6 entries
    And verification ends at entry 10

  Scenario Outline: An exported day in which someone <tampering> fails offline verification
    Given an audit trail recorded in this order:
      | entries | recorded   |
      | 4       | 3 days ago |
    And the operator has published the chain head
    And an audit trail recorded in this order:
      | entries | recorded   |
      | 6       | 2 days ago |
      | 5       | 1 day ago  |
    When the operator exports the entries of the day 2 days ago as JSON lines
    And someone <tampering> in the exported file
    And the reviewer verifies the export offline, starting from the published head
    Then verification fails at entry <bad>: "<reason>"

    Examples:
      | tampering                                 | bad | reason                                                                                                                 |
      | changes the actor of entry 7 to "mallory" | 7   | row 7 was modified (its hash does not match its contents); if the trail is keyed, verify the export with its chain key |
      | changes the details of entry 9            | 9   | row 9 was modified (its hash does not match its contents); if the trail is keyed, verify the export with its chain key |
      | removes the line of entry 8               | 9   | row 8 is missing (deleted from the chain)                                                                              |
      | removes the line of entry 5               | 6   | row 5 is missing (deleted from the chain)                                                                              |
      | swaps the lines of entries 6 and 7        | 7   | row 6 is missing (deleted from the chain)                                                                              |

  Scenario: Two tools writing the same trail keep one chain
    Given a tool with an audit service
    When the tool records 5 entries
    And the tool flushes the audit trail
    And a second tool, in a program of its own, records 3 entries in the same audit trail
    And the tool records 4 entries
    And the tool closes the audit service
    And the reviewer verifies the audit trail
    Then verification succeeds, checking 12 entries
    And verification ends at entry 12
    And the audit trail holds entries 1 to 12, those of both tools in the order they were recorded
