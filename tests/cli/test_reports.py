"""Bounds of the report commands' options: a typo is a usage error, never a traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from audit_engine.cli import main


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        (
            "--events",
            "100000000000000000000",
            "Error: Invalid value for '--events': 100000000000000000000 is not in the range "
            "1<=x<=1000000.\n",
        ),
        (
            "--threads",
            "100000",
            "Error: Invalid value for '--threads': 100000 is not in the range 1<=x<=64.\n",
        ),
    ],
)
def test_bench_bounds_are_usage_errors(option: str, value: str, message: str) -> None:
    result = CliRunner().invoke(main, ["bench", option, value], prog_name="audit-engine")

    assert result.exit_code == 2
    assert result.output.startswith("Usage: audit-engine bench [OPTIONS]\n")
    assert result.output.endswith(message)
