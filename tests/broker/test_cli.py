"""`remotellm-broker` configuration: flags, environment, YAML, and clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from broker.cli import main
from broker.settings import BrokerSettings
from shared.settings import ConfigError, load


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse reports usage errors this way
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "mentions"),
    [
        (["--port", "99999"], "port"),
        (["serve", "--max-body-size", "10"], "max_body_size"),
        (["--request-timeout", "0"], "request_timeout"),
        (["--max-user-share", "1.5"], "max_user_share"),
        (["--max-user-share", "0"], "max_user_share"),
        (["--port", "eighty"], "invalid int value"),
        (["--log-format", "xml"], "invalid choice"),
        (["--config", "/nonexistent/broker.yaml"], "does not exist"),
    ],
)
def test_bad_config_is_one_clear_line_and_exit_2(
    argv: list[str], mentions: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(argv, capsys)
    assert code == 2
    assert mentions in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("remotellm-broker") and "error:" in last


def test_bad_environment_value_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REMOTELLM_BROKER_PORT", "not-a-port")
    code, err = run([], capsys)
    assert code == 2
    assert "'port'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("content", "mentions"),
    [("port: [1, 2\n", "not valid YAML"), ("- a\n- b\n", "mapping"), ("colour: red\n", "unknown")],
)
def test_bad_yaml_file_exits_2(
    tmp_path: Path, content: str, mentions: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "broker.yaml"
    path.write_text(content)
    code, err = run(["--config", str(path)], capsys)
    assert code == 2
    assert mentions in err


def test_flags_beat_environment_beat_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "broker.yaml"
    path.write_text("port: 1000\nhost: 10.0.0.1\nlog_level: debug\nuser_api_key: [from-yaml]\n")
    monkeypatch.setenv("REMOTELLM_BROKER_PORT", "2000")
    monkeypatch.setenv("REMOTELLM_BROKER_HOST", "127.0.0.2")
    settings = load(BrokerSettings, {"port": 3000}, path)
    assert settings.port == 3000
    assert settings.host == "127.0.0.2"
    assert settings.log_level == "debug"
    assert [k.get_secret_value() for k in settings.user_api_key] == ["from-yaml"]


def test_list_settings_accept_commas_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMOTELLM_BROKER_USER_API_KEY", "sk-a, sk-b")
    settings = load(BrokerSettings, {}, None)
    assert [k.get_secret_value() for k in settings.user_api_key] == ["sk-a", "sk-b"]


def test_secrets_do_not_show_in_the_settings_repr() -> None:
    settings = load(BrokerSettings, {"user_api_key": ["sk-very-secret"]}, None)
    assert "sk-very-secret" not in repr(settings)


def test_defaults_match_the_documented_ones() -> None:
    settings = load(BrokerSettings, {}, None)
    assert (settings.host, settings.port) == ("0.0.0.0", 8443)
    assert settings.request_timeout >= 600


def test_unknown_yaml_key_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text("prot: 1\n")
    with pytest.raises(ConfigError, match="prot"):
        load(BrokerSettings, {}, path)


def test_unusable_tls_files_are_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "cert.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    argv = ["--host", "127.0.0.1", "--port", "0", "--tls-cert", str(bad), "--tls-key", str(bad)]
    done = subprocess.run(
        [sys.executable, "-m", "broker.cli", *argv], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "remotellm-broker: error: cannot use --tls-cert/--tls-key" in done.stderr


def test_tls_cert_without_key_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    code, err = run(["--tls-cert", str(cert)], capsys)
    assert code == 2
    assert "tls_cert and tls_key must be given together" in err


@pytest.mark.parametrize("given", ["WARNING", "Warning", "warning"])
def test_log_level_is_accepted_in_any_case(
    given: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from broker.cli import build_parser

    args = build_parser().parse_args(["serve", "--log-level", given])
    assert args.log_level == "warning"
    assert load(BrokerSettings, {"log_level": given}, None).log_level == "warning"
    monkeypatch.setenv("REMOTELLM_BROKER_LOG_LEVEL", given)
    assert load(BrokerSettings, {}, None).log_level == "warning"
    demo = build_parser().parse_args(["demo", "--log-level", given])
    assert demo.log_level == "warning"


def test_an_unknown_log_level_is_still_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(["--log-level", "LOUD"], capsys)
    assert code == 2 and "invalid choice" in err
