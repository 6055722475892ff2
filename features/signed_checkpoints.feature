Feature: Signed checkpoints kept outside the database catch a trail that was cut, rewritten, rolled back or swapped
  As a compliance reviewer who cannot trust anything stored only in the audit database
  I want the writer to sign checkpoints of the trail into a log kept elsewhere, and to verify the trail against that log
  So that a truncated, rewritten, rolled-back or swapped trail fails, naming the first checkpoint it contradicts,
  and an auditor can check one entry offline with a proof

  Background:
    Given the team's signing key pair
    And a tool that signs a checkpoint every 5 entries into the checkpoint log, having recorded 12 entries and closed

  Scenario: The writer signed a checkpoint every 5 entries and one at close
    Then the checkpoint log holds 3 checkpoints, at sizes 5, 10 and 12
    And the trail keeps the same 3 checkpoints for convenience
    When the reviewer verifies the trail against the checkpoint log
    Then verification succeeds, checking 12 entries and 3 checkpoints

  Scenario: The operator verifies the trail against the checkpoint log from a shell
    Given an operator's shell in the trail's directory
    When the operator runs "audit-engine verify --checkpoints checkpoints.jsonl --public-key keys/signing.pub"
    Then audit-engine exits with status 0
    And audit-engine's report says 12 rows and 3 checkpoints were verified

  Scenario Outline: A trail that was <what> fails against the checkpoint log, naming checkpoint <line>
    When <tampering>
    Then the trail alone, without the checkpoint log, still verifies
    When the reviewer verifies the trail against the checkpoint log
    Then verification fails, naming checkpoint <line> of the log, at size <size>

    Examples:
      | what                     | tampering                                                                                            | line | size |
      | truncated                | someone who can write the database deletes its newest 3 entries                                     | 2    | 10   |
      | rewritten after entry 5  | someone who can write the database changes the actor of entry 6 and recomputes every hash after it | 2    | 10   |
      | rolled back to a backup  | the trail is restored from a backup taken after entry 7, and the tool records 5 more entries         | 2    | 10   |
      | swapped for another one  | the trail is swapped for another team's trail of 12 entries                                          | 1    | 5    |

  Scenario: A trail rolled back to a backup, with nothing written since, fails as truncated or rolled back
    When the trail is restored from a backup taken after entry 7
    And the reviewer verifies the trail against the checkpoint log
    Then verification fails, naming checkpoint 2 of the log, at size 10
    And the reason says rows were deleted from the end or the trail was rolled back to an older copy

  Scenario: A checkpoint whose signed root was edited in the log fails its signature
    When someone changes the signed root of checkpoint 2 in the checkpoint log
    And the reviewer verifies the trail against the checkpoint log
    Then verification fails, naming checkpoint 2 of the log, at size 10

  Scenario: An auditor receives a proof for one entry and checks it offline
    Given an operator's shell in the trail's directory
    When the operator proves entry 7 against the checkpoint log into "proof.json"
    Then audit-engine exits with status 0
    When the auditor runs "audit-engine verify-proof proof.json --public-key keys/signing.pub" without the database
    Then audit-engine exits with status 0
    And audit-engine says the entry is row 7 of the trail, as of its checkpoint of 12 entries

  Scenario Outline: A proof in which one byte of <part> was changed fails offline
    Given an operator's shell in the trail's directory
    When the operator proves entry 7 against the checkpoint log into "proof.json"
    And someone changes one byte of <part> in "proof.json"
    And the auditor runs "audit-engine verify-proof proof.json --public-key keys/signing.pub" without the database
    Then audit-engine exits with status 1
    And audit-engine reports an error saying "<saying>"

    Examples:
      | part                  | saying                                                                   |
      | the entry's actor     | row 7's hash does not match its contents                                 |
      | the first path hash   | the audit path does not lead from row 7 to the checkpoint's signed root  |
      | the checkpoint's root | its signature does not verify with the public key                        |
