"""asv benchmarks for audit_engine (see docs/performance.md)."""
