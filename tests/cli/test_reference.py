"""docs/cli.md is generated from --help: it must match what the commands say now."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from audit_engine.cli.commands import PROG, main
from audit_engine.cli.output import render_reference

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_cli_reference_is_up_to_date() -> None:
    assert DOC.read_text(encoding="utf-8") == render_reference(main, PROG), (
        "docs/cli.md is stale: run `audit-engine cli-docs > docs/cli.md`"
    )


def test_every_visible_command_is_in_the_reference() -> None:
    text = DOC.read_text(encoding="utf-8")
    for name, command in main.commands.items():
        assert (f"## `{PROG} {name}`" in text) is (not command.hidden)


def test_cli_docs_command_prints_the_reference() -> None:
    result = CliRunner().invoke(main, ["cli-docs"])
    assert result.exit_code == 0
    assert result.output == render_reference(main, PROG)
