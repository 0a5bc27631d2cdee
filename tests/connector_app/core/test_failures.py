"""How a failed relay link is described to the operator."""

from __future__ import annotations

from connector_app.core.failures import describe_failure


def test_a_failure_that_is_not_the_network_is_not_called_unreachable() -> None:
    error = UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed")
    described = describe_failure(error)
    assert "cannot reach the broker" not in described
    assert "UnicodeEncodeError" in described
    assert describe_failure(ConnectionRefusedError(111, "refused")).startswith(
        "cannot reach the broker"
    )
