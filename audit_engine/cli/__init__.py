"""The ``audit-engine`` command line: commands that translate, and the output they print.

- :mod:`.commands`: the click group and the operator commands (``audit-engine --help``).
- :mod:`.record`, :mod:`.reports`: the ``record``, ``stats``, ``demo`` and ``bench`` commands.
- :mod:`.output`: what the commands print (errors, progress, the reference).
- :mod:`.demo`, :mod:`.bench`: the demo data and the benchmark behind those commands.
"""

from audit_engine.cli.commands import main

__all__ = ["main"]
