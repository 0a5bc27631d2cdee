"""`remotellm-connector` configuration errors and the TLS rule."""

from __future__ import annotations

import pytest

from connector_app.cli import main

BASE = ["--headless", "--broker-token", "tok"]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "mentions"),
    [
        (["--headless", "--broker-token", "tok"], "broker_url"),
        (["--headless", "--broker-url", "wss://b.example/relay"], "broker_token"),
        ([*BASE, "--broker-url", "ws://broker.example/relay"], "wss://"),
        ([*BASE, "--broker-url", "ftp://broker.example"], "broker_url"),
        ([*BASE, "--broker-url", "wss://b.example", "--llm-url", "localhost:11434"], "llm_url"),
        ([*BASE, "--broker-url", "wss://b.example", "--max-concurrency", "0"], "max_concurrency"),
    ],
)
def test_bad_config_exits_2_with_one_clear_line(
    argv: list[str], mentions: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(argv, capsys)
    assert code == 2
    assert mentions in err
    assert len(err.strip().splitlines()) == 1
    assert "tok" not in err.replace("broker_token", "")


def test_without_headless_it_says_the_tray_app_is_not_there_yet(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, err = run([], capsys)
    assert code == 2
    assert "--headless" in err
