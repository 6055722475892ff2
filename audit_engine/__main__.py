"""``python -m audit_engine``: the same as the ``audit-engine`` command."""

from audit_engine.cli import main

if __name__ == "__main__":  # pragma: no cover
    main(prog_name="audit-engine")
