Feature: A chain keyed with the team's secret cannot be forged by someone who only has the database
  As a compliance reviewer who must trust the trail even if someone could write its database
  I want every entry's link to be an HMAC under a chain key kept outside the database
  So that an edited entry with a recomputed chain fails verification, and no one without the key can call the trail ok

  Scenario: A trail keyed with the team's chain key verifies with that key
    Given a trail keyed with the team's chain key, holding 10 entries
    When the reviewer verifies the trail with the chain key
    Then verification succeeds, checking 10 entries

  Scenario: Someone who can write the database but has no key edits a row and recomputes the chain
    Given a trail keyed with the team's chain key, holding 10 entries
    When someone who can write the database but has no key changes the actor of entry 4 to "mallory" and recomputes the chain after it
    And the reviewer verifies the trail with the chain key
    Then verification fails at entry 4, reporting the row as modified

  Scenario: Verifying a keyed trail without the key does not call it ok
    Given a trail keyed with the team's chain key, holding 10 entries
    When the reviewer verifies the trail without the chain key
    Then verification does not call the trail ok: the entries from 1 on cannot be checked without the chain key
    And the report names the chain key's id and how to pass the key, but never the key itself

  Scenario: A trail that started without a key and switched to one verifies in both parts
    Given a tool that has recorded 5 entries without a chain key
    When the tool is restarted with the team's chain key and records 5 entries
    And the reviewer verifies the trail with the chain key
    Then verification succeeds, checking 10 entries
    And the trail is keyed from entry 6 on

  Scenario: A rotated key writes from the rotation on, and the old key still verifies what it wrote
    Given a trail keyed with the team's chain key, holding 5 entries
    When the operator rotates the chain key, putting a new key first in the key file and keeping the old one
    And the tool is restarted with the rotated key file and records 5 entries
    And the reviewer verifies the trail with the rotated key file
    Then verification succeeds, checking 10 entries
    And entries 1 to 5 are keyed with the old key and entries 6 to 10 with the new one

  Scenario: A tool started without the key on a keyed trail refuses to start rather than write unkeyed entries
    Given a trail keyed with the team's chain key, holding 3 entries
    When the tool tries to start its audit service without the chain key
    Then the audit service refuses to start, saying the trail is keyed from entry 1 on and to set chain_key_file

  Scenario: The operator generates the keys and verifies the keyed trail from a shell
    Given an operator's shell in an empty directory
    When the operator runs "audit-engine keygen --out keys"
    Then audit-engine exits with status 0
    And the operator's key directory holds chain.key and signing.key readable by the owner only, and signing.pub
    When the application records 4 entries with the chain key "keys/chain.key"
    And the operator runs "audit-engine --chain-key-file keys/chain.key verify"
    Then audit-engine exits with status 0
    And audit-engine prints "OK: 4 rows verified" and the head of the chain
    When the operator runs "audit-engine verify"
    Then audit-engine exits with status 1
    And audit-engine's error says the rows from id 1 on cannot be checked without the chain key
    When the operator runs "audit-engine keygen --out keys"
    Then audit-engine exits with status 1
    And audit-engine's error names the existing key file "chain.key" and leaves the keys unchanged

  Scenario: A keyed trail rewritten as an unkeyed one passes its links, but not the chain key or the signed checkpoints
    Given a trail keyed with the team's chain key and signing a checkpoint every 5 entries, holding 12 entries
    When someone who can write the database but has no key rewrites the trail as an unkeyed one, recomputing every hash
    And the reviewer verifies the trail without the chain key
    Then verification succeeds, checking 12 entries
    When the reviewer verifies the trail with the chain key
    Then verification does not call the trail ok: its 12 entries link, but none of them is keyed although a chain key was given
    When the reviewer verifies the trail against the checkpoint log
    Then verification fails, naming checkpoint 1 of the log, at size 5
