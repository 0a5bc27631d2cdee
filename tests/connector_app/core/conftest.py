"""The connector core's tests dial loopback only: no proxy setting of the machine applies."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests that want a proxy set one; none comes from the machine's environment."""
    for name in ("http", "https", "all", "no", "ws", "wss", "socks"):
        monkeypatch.delenv(f"{name}_proxy", raising=False)
        monkeypatch.delenv(f"{name.upper()}_PROXY", raising=False)
