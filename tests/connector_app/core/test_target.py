"""Where a broker's relay URL points."""

from __future__ import annotations

import pytest

from connector_app.core.target import Target, parse_ws_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ws://broker/relay", Target("broker", 80, False, "broker", "/relay")),
        ("wss://broker/relay", Target("broker", 443, True, "broker", "/relay")),
        ("wss://broker:8443/relay", Target("broker", 8443, True, "broker:8443", "/relay")),
        ("ws://broker:80", Target("broker", 80, False, "broker", "/")),
        ("ws://[::1]:9000/relay?x=1", Target("::1", 9000, False, "[::1]:9000", "/relay?x=1")),
        ("wss://[::1]/relay", Target("::1", 443, True, "[::1]", "/relay")),
    ],
)
def test_a_relay_url_gives_host_port_tls_and_the_upgrade_target(url: str, expected: Target) -> None:
    assert parse_ws_url(url) == expected


@pytest.mark.parametrize("url", ["http://broker/relay", "broker:9000", "wss:///relay", ""])
def test_anything_but_a_ws_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="not a ws:// or wss:// URL"):
        parse_ws_url(url)
