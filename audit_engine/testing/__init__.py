"""Helpers for applications that test their auditing (docs/integrations.md)."""
