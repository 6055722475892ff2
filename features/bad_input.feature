Feature: Bad audit entries are refused where they are made
  As a desktop tool author
  I want a malformed entry to fail in my own code, naming the field at fault
  So that I fix the bug where it is, instead of finding a gap in the trail later

  Background:
    Given a tool with an audit service configured with:
      | setting           | value |
      | max_details_bytes | 1024  |

  Scenario Outline: An entry with <problem> is refused naming "<field>"
    When the tool tries to record an entry with <problem>
    Then recording fails in the tool's own thread with an error that names "<field>"
    And the service reports 0 accepted entries
    When the tool flushes the audit trail
    Then the audit database holds no entries

    Examples:
      | problem                                         | field     |
      | an empty action                                 | action    |
      | a blank action                                  | action    |
      | a timestamp without a time zone                 | timestamp |
      | details larger than 1024 bytes                  | details   |
      | a prepared entry whose details exceed 1024 bytes | details   |
      | an unknown operation                            | operation |
