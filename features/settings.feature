Feature: Configuring the audit trail with defaults and environment variables
  As an operator deploying a desktop or command-line tool
  I want sensible defaults that I can override with AUDIT_TRAIL_* environment variables
  So that I tune auditing without changing the tool, and a bad value is reported, not ignored

  Scenario: Defaults when nothing is configured
    Given no AUDIT_TRAIL_ environment variables are set
    When the tool loads its audit settings
    Then the audit settings are:
      | setting               | value    |
      | database              | audit.db |
      | enabled               | true     |
      | async_writes          | true     |
      | queue_maxsize         | 10000    |
      | buffer_max_size       | 500      |
      | buffer_flush_interval | 1.0      |
      | on_full               | block    |
      | block_timeout         | 10.0     |
      | synchronous           | NORMAL   |
      | busy_timeout          | 5.0      |
      | max_details_bytes     | 65536    |

  Scenario Outline: <variable>=<value> overrides the default of <setting>
    Given the environment variable <variable> is set to "<value>"
    When the tool loads its audit settings
    Then the setting <setting> is "<expected>"

    Examples:
      | variable                          | value                   | setting               | expected                |
      | AUDIT_TRAIL_DATABASE              | /var/lib/notes/audit.db | database              | /var/lib/notes/audit.db |
      | AUDIT_TRAIL_QUEUE_MAXSIZE         | 250                     | queue_maxsize         | 250                     |
      | AUDIT_TRAIL_BUFFER_MAX_SIZE       | 50                      | buffer_max_size       | 50                      |
      | AUDIT_TRAIL_BUFFER_FLUSH_INTERVAL | 0.25                    | buffer_flush_interval | 0.25                    |
      | AUDIT_TRAIL_ASYNC                 | false                   | async_writes          | false                   |
      | AUDIT_TRAIL_ENABLED               | 0                       | enabled               | false                   |
      | AUDIT_TRAIL_ON_FULL               | drop                    | on_full               | drop                    |
      | AUDIT_TRAIL_ON_FULL               | SYNC                    | on_full               | sync                    |
      | AUDIT_TRAIL_SYNCHRONOUS           | full                    | synchronous           | FULL                    |
      | AUDIT_TRAIL_BLOCK_TIMEOUT         | 2.5                     | block_timeout         | 2.5                     |

  Scenario: A value the tool sets in code wins over the environment
    Given the environment variable AUDIT_TRAIL_QUEUE_MAXSIZE is set to "250"
    When the tool loads its audit settings with queue_maxsize set to 64 in code
    Then the setting queue_maxsize is "64"

  Scenario Outline: A bad value for <variable> is refused with a message naming it
    Given the environment variable <variable> is set to "<value>"
    When the tool loads its audit settings
    Then loading fails with a settings error that says "invalid setting <setting> (<variable>)"
    And the settings error quotes the bad value "<value>"

    Examples:
      | variable                          | value   | setting               |
      | AUDIT_TRAIL_QUEUE_MAXSIZE         | 0       | queue_maxsize         |
      | AUDIT_TRAIL_QUEUE_MAXSIZE         | lots    | queue_maxsize         |
      | AUDIT_TRAIL_ASYNC                 | maybe   | async_writes          |
      | AUDIT_TRAIL_ON_FULL               | explode | on_full               |
      | AUDIT_TRAIL_SYNCHRONOUS           | OFF     | synchronous           |
      | AUDIT_TRAIL_BUFFER_FLUSH_INTERVAL | -1      | buffer_flush_interval |

  @sqlite_only
  Scenario: A service started without settings in code follows the environment
    Given the environment variable AUDIT_TRAIL_DATABASE names a file in the tool's folder
    And the environment variable AUDIT_TRAIL_ASYNC is set to "false"
    When the tool starts its audit service without settings
    And the tool records 3 entries
    Then the audit database holds exactly the recorded entries
    And the audit service runs no writer thread

  @sqlite_only
  Scenario: A tool opens its trail by path and overrides one setting in code
    Given the environment variable AUDIT_TRAIL_ASYNC is set to "false"
    When the tool starts its audit service on "tool-audit.db" with queue_maxsize set to 50 in code
    And the tool records 3 entries
    Then the audit database holds exactly the recorded entries
    And the service setting queue_maxsize is "50"
    And the service setting async_writes is "false"

  Scenario: A misspelt option is refused, naming it, and nothing is opened
    When the tool starts its audit service on "tool-audit.db" with queue_max_size set to 50 in code
    Then starting fails with a type error that says "AuditService() got an unexpected keyword argument 'queue_max_size'"
    And the tool's folder holds no audit database
