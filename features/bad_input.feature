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
      | problem                                          | field         |
      | an empty action                                  | action        |
      | a blank action                                   | action        |
      | a timestamp without a time zone                  | timestamp     |
      | details larger than 1024 bytes                   | details       |
      | a prepared entry whose details exceed 1024 bytes | details       |
      | an unknown operation                             | operation     |
      | a control character slipped into a copied entry  | actor         |
      | a lone surrogate slipped into a copied entry     | actor         |
      | a right-to-left override in the resource id      | resource_id   |
      | details nested 5000 levels deep                  | details       |
      | a 5000-digit number in details                   | details.count |
      | a value details cannot hold                      | details.blob  |

  Scenario: The values a tool has at hand are stored as JSON, in one fixed form
    When the tool records a note save whose details hold a date, a decimal, a set and an enum
    And the tool flushes the audit trail
    Then the stored details read {"amount":"12.50","on":"2026-12-01","state":"draft","tags":["a","b"]}
    And the stored resource id is "42"
