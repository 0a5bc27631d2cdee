"""The keys the pairing start limit counts under, and the sliding window itself."""

from __future__ import annotations

from broker.api.iplimit import IpWindow, network_of


def test_an_ipv6_host_counts_as_its_64() -> None:
    assert network_of("2001:db8:1:2::1") == network_of("2001:db8:1:2:ffff:1:2:3")
    assert network_of("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert network_of("2001:db8:1:3::1") != network_of("2001:db8:1:2::1")
    assert network_of("::ffff:192.0.2.7") == "192.0.2.7"  # IPv4 through a dual-stack socket
    assert network_of("192.0.2.7") == "192.0.2.7"
    assert network_of("192.0.2.8") != network_of("192.0.2.7")
    assert network_of("unknown") == "unknown"


def test_one_64_shares_one_window() -> None:
    now = [0.0]
    window = IpWindow(2, 60.0, lambda: now[0])
    assert window.attempt(network_of("2001:db8::1")) is None
    assert window.attempt(network_of("2001:db8::2")) is None
    assert window.attempt(network_of("2001:db8::3")) == 60
    assert window.attempt(network_of("2001:db8:0:1::1")) is None  # the next /64
    now[0] = 60.0
    assert window.attempt(network_of("2001:db8::3")) is None
