"""The pytest plugin of audit_engine.testing (registered as a ``pytest11`` entry point)."""
