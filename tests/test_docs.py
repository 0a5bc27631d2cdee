"""The docs describe what the code does: every setting is in the README's tables."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from broker.settings import BrokerSettings
from connector_app.core.settings import ConnectorSettings
from shared.protocol import FrameType

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def table_rows(prefix: str) -> list[str]:
    return [line for line in README.splitlines() if line.startswith("| `--") and prefix in line]


@pytest.mark.parametrize(
    ("settings", "prefix"),
    [(BrokerSettings, "REMOTELLM_BROKER_"), (ConnectorSettings, "REMOTELLM_CONNECTOR_")],
)
def test_every_setting_has_a_row_with_its_flag_and_env_var(
    settings: type[BaseSettings], prefix: str
) -> None:
    rows = table_rows(prefix)
    documented = {row.split("`")[1] for row in rows}
    expected = {"--" + name.replace("_", "-") for name in settings.model_fields}
    assert documented == expected
    for name in settings.model_fields:
        assert any(f"`{prefix}{name.upper()}`" in row for row in rows), name


def test_readme_opens_with_the_two_commands() -> None:
    head = README[: README.index("## ")]
    assert "uv run remotellm-broker demo" in head
    assert "uv run pytest" in head


def test_protocol_spec_names_every_frame_type() -> None:
    spec = (ROOT / "docs" / "protocol.md").read_text()
    for frame in FrameType:
        assert frame.name in spec, frame.name
        assert f"0x{frame.value:02x}" in spec.lower(), frame.name


def test_ci_runs_exactly_the_readme_test_command() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    assert script.rstrip().splitlines()[-1] == "uv run pytest"


def test_every_admin_command_is_in_the_accounts_guide() -> None:
    import argparse

    from broker.cli import build_parser

    guide = (ROOT / "docs" / "accounts.md").read_text()
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("users", "keys", "connectors"):
        sub = commands.choices[name]
        actions = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction))
        for action in actions.choices:
            assert f"remotellm-broker {name} {action}" in guide or (f"| {action} USER" in guide), (
                f"{name} {action}"
            )
    assert "remotellm-broker usage" in guide
