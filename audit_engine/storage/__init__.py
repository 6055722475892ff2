"""Storage: everything that speaks SQL or touches the database's files.

- :mod:`.chain`: the hash chain's canonical form, linking and verifying.
- :mod:`.anchors`: purge anchors and the cleanup-run log that keep the chain checkable.
- :mod:`.retention`: purging old rows (and the cleanup thread).
- :mod:`.deadletter`: the dead-letter file for entries the database refused.
- :mod:`.replay`: re-importing dead letters.
- :mod:`.summary`: the ``stats`` summary of a database.
- :mod:`.sqlite`: the SQLite backend (schema, append, reads).

Storage imports neither :mod:`audit_engine.pipeline` nor :mod:`audit_engine.cli`.
"""
