Feature: Configuring the audit policy with environment variables
  As an operator deploying a tool I did not write
  I want to set the audit level, exclusions, sampling and redaction with AUDIT_TRAIL_* variables
  So that I tune what is audited without changing the tool, and a typo stops the tool instead of
  silently auditing the wrong things

  Scenario: The policy's defaults audit every write, whole and in full
    Given no AUDIT_TRAIL_ environment variables are set
    When the tool starts its audit service from the environment
    Then the tool's audit policy is:
      | setting           | value       |
      | level             | writes_only |
      | exclude_actions   |             |
      | exclude_resources |             |
      | sample_rate       | 1.0         |
      | sample_reads      | true        |
      | critical_sync     | true        |
    And details keys named password, api_key, token, secret and authorization are redacted by default

  Scenario: Every part of the policy is read from the environment
    Given the environment variable AUDIT_TRAIL_LEVEL is set to "Mutations_Only"
    And the environment variable AUDIT_TRAIL_EXCLUDE_ACTIONS is set to "health_check, metrics_*"
    And the environment variable AUDIT_TRAIL_EXCLUDE_RESOURCES is set to "metric,health"
    And the environment variable AUDIT_TRAIL_SAMPLE_RATE is set to "0.25"
    And the environment variable AUDIT_TRAIL_SAMPLE_READS is set to "false"
    And the environment variable AUDIT_TRAIL_REDACT_FIELDS is set to "password,pin"
    And the environment variable AUDIT_TRAIL_CRITICAL_SYNC is set to "false"
    When the tool starts its audit service from the environment
    Then the tool's audit policy is:
      | setting           | value                  |
      | level             | mutations_only         |
      | exclude_actions   | health_check,metrics_* |
      | exclude_resources | metric,health          |
      | sample_rate       | 0.25                   |
      | sample_reads      | false                  |
      | redact_fields     | password,pin           |
      | critical_sync     | false                  |

  Scenario Outline: A bad value in <variable> stops the tool at startup with a message naming it
    Given the environment variable <variable> is set to "<value>"
    When the tool starts its audit service from the environment
    Then the tool fails to start with a settings error that says "invalid setting <setting> (<variable>): "
    And the settings error quotes the bad value "<value>"
    And no audit database file was created

    Examples:
      | variable                  | value     | setting       |
      | AUDIT_TRAIL_LEVEL         | sometimes | level         |
      | AUDIT_TRAIL_SAMPLE_RATE   | 1.5       | sample_rate   |
      | AUDIT_TRAIL_SAMPLE_RATE   | -0.1      | sample_rate   |
      | AUDIT_TRAIL_SAMPLE_RATE   | half      | sample_rate   |
      | AUDIT_TRAIL_SAMPLE_READS  | perhaps   | sample_reads  |
      | AUDIT_TRAIL_CRITICAL_SYNC | maybe     | critical_sync |
