Feature: Secrets in audit details never reach the audit database
  As an operator whose audit database is copied to backups and read by auditors
  I want passwords, API keys and other secrets in an entry's details masked before they are written
  So that the audit trail never becomes a second place to steal credentials from

  @sqlite_only
  Scenario: A password and an API key, nested and in any case, are masked before they are written
    Given a tool with an audit service
    When the tool records a change to user "alice" with these details:
      """
      {
        "display_name": "Alice Example",
        "Password": "hunter2-Secret-0815",
        "integrations": [
          {"name": "mail", "API_KEY": "sk-live-4242-mail"},
          {"name": "chat", "settings": {"Api-Key": "sk-live-7777-chat", "channel": "#ops"}}
        ]
      }
      """
    And the tool flushes the audit trail
    Then the stored details of that entry are:
      """
      {
        "display_name": "Alice Example",
        "Password": "[REDACTED]",
        "integrations": [
          {"name": "mail", "API_KEY": "[REDACTED]"},
          {"name": "chat", "settings": {"Api-Key": "[REDACTED]", "channel": "#ops"}}
        ]
      }
      """
    And the write-ahead log of the audit database is on disk
    And the audit database's files on disk do contain "Alice Example"
    And the audit database's files on disk contain none of these values:
      | value               |
      | hunter2-Secret-0815 |
      | sk-live-4242-mail   |
      | sk-live-7777-chat   |
    When the tool closes the audit service
    Then the audit database's files on disk do contain "Alice Example"
    And the audit database's files on disk contain none of these values:
      | value               |
      | hunter2-Secret-0815 |
      | sk-live-4242-mail   |
      | sk-live-7777-chat   |

  @sqlite_only
  Scenario: The operator names the tool's own sensitive fields
    Given the environment variable AUDIT_TRAIL_REDACT_FIELDS is set to "password, pin, recovery_code"
    When the tool starts its audit service from the environment
    And the tool records a change to user "bob" with these details:
      """
      {"devices": [{"model": "phone", "PIN": "4711-0815", "Recovery-Code": "RC-ABCD-EFGH"}]}
      """
    And the tool flushes the audit trail
    Then the stored details of that entry are:
      """
      {"devices": [{"model": "phone", "PIN": "[REDACTED]", "Recovery-Code": "[REDACTED]"}]}
      """
    And the audit database's files on disk contain none of these values:
      | value        |
      | 4711-0815    |
      | RC-ABCD-EFGH |
