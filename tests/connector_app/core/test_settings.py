"""Connector settings: URL normalisation and the TLS rule."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from connector_app.core.settings import ConnectorSettings


def make(**values: object) -> ConnectorSettings:
    base: dict[str, object] = {"broker_url": "wss://b.example/relay"}
    base["broker_token"] = SecretStr("t")
    base.update(values)
    return ConnectorSettings(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://b.example", "wss://b.example/relay"),
        ("http://127.0.0.1:8443", "ws://127.0.0.1:8443/relay"),
        ("wss://b.example/custom/relay", "wss://b.example/custom/relay"),
    ],
)
def test_broker_url_is_normalised(given: str, expected: str) -> None:
    assert make(broker_url=given).broker_url == expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://127.0.0.1:11434", "http://127.0.0.1:11434"),
        ("http://127.0.0.1:8080/v1", "http://127.0.0.1:8080"),
        ("http://127.0.0.1:8080/v1/", "http://127.0.0.1:8080"),
        ("http://host:1234/prefix", "http://host:1234/prefix"),
    ],
)
def test_llm_url_accepts_a_trailing_v1(given: str, expected: str) -> None:
    assert make(llm_url=given).llm_url == expected


@pytest.mark.parametrize("url", ["ws://broker.example/relay", "http://10.1.2.3:8443"])
def test_plain_ws_to_a_remote_host_needs_insecure(url: str) -> None:
    with pytest.raises(ValidationError, match="wss://"):
        make(broker_url=url)
    assert make(broker_url=url, insecure=True).broker_url.startswith("ws://")


@pytest.mark.parametrize(
    "url", ["ws://127.0.0.1:8443/relay", "ws://localhost/relay", "ws://[::1]/"]
)
def test_plain_ws_to_loopback_is_fine(url: str) -> None:
    assert make(broker_url=url).broker_url.startswith("ws://")


def test_models_from_the_environment_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMOTELLM_CONNECTOR_MODEL", "llama3:8b,qwen2.5")
    assert make().model == ["llama3:8b", "qwen2.5"]


@pytest.mark.parametrize("name", ["", "two\nlines", "x" * 257, "tab\there"])
def test_a_name_the_broker_would_refuse_is_refused_here_first(name: str) -> None:
    with pytest.raises(ValidationError, match="name must be 1 to 256 printable characters"):
        make(name=name)
    assert make(name="box-1 (GPU)").name == "box-1 (GPU)"


@pytest.mark.parametrize("given", ["WARNING", "Error", "debug"])
def test_log_level_is_accepted_in_any_case(given: str) -> None:
    from connector_app.cli import build_parser

    assert make(log_level=given).log_level == given.lower()
    args = build_parser().parse_args(["--headless", "--log-level", given])
    assert args.log_level == given.lower()
