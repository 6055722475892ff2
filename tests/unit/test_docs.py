"""Docs that cannot go stale: every setting is documented and listed in .env.example."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit_engine.settings import AuditSettings, env_var

ROOT = Path(__file__).resolve().parents[2]
FIELDS = sorted(AuditSettings.model_fields)


@pytest.mark.parametrize("field", FIELDS)
def test_every_setting_has_a_row_in_the_configuration_docs(field: str) -> None:
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert f"| `{field}` | `{env_var(field)}` |" in text


@pytest.mark.parametrize("field", FIELDS)
def test_every_setting_is_in_env_example_with_its_default(field: str) -> None:
    lines = (ROOT / ".env.example").read_text(encoding="utf-8").splitlines()
    values = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    assert env_var(field) in values
    default = AuditSettings.model_fields[field].get_default(call_default_factory=True)
    shown = values[env_var(field)]
    if default is None:  # unset: an empty value means the same
        assert shown == ""
        assert getattr(AuditSettings(**{field: ""}), field) is None
    elif isinstance(default, list):
        assert shown.split(",") == default or (shown == "" and default == [])
    elif isinstance(default, bool):
        assert shown == str(default).lower()
    elif isinstance(default, float | int):
        assert float(shown) == default
    else:
        assert shown == str(default)
