"""The pipeline: the caller's side of ``record()`` through to the writer thread.

caller → :mod:`.service` → :mod:`.intake` (validate, build the row) → :mod:`.policy` and
:mod:`.scope` → :mod:`.handoff` (the bounded queue) → :mod:`.writer` (the thread: retry, split,
:mod:`.setaside` and dead letters) → :mod:`audit_engine.storage`. :mod:`.syncwrite` writes in the
caller's thread instead; :mod:`.lifecycle` flushes at exit and on signals; :mod:`.bus` turns domain
events into entries.

The pipeline imports storage, never :mod:`audit_engine.cli`.
"""
