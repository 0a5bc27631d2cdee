"""How a failed relay link is described to the operator."""

from __future__ import annotations

import json

from connector_app.core.failures import describe_failure, is_fatal, is_revoked
from shared.handshake import TOKEN_REVOKED
from shared.upgrade import HandshakeError


def test_a_failure_that_is_not_the_network_is_not_called_unreachable() -> None:
    error = UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed")
    described = describe_failure(error)
    assert "cannot reach the broker" not in described
    assert "UnicodeEncodeError" in described
    assert describe_failure(ConnectionRefusedError(111, "refused")).startswith(
        "cannot reach the broker"
    )


def test_a_revoked_token_is_told_apart_from_an_unknown_one() -> None:
    """Only the broker's `connector_token_revoked` stops the connector for good: an unknown
    token may yet be configured on the broker, and is retried slowly."""

    def refusal(code: str) -> HandshakeError:
        body = json.dumps({"error": {"message": "m", "type": "t", "param": None, "code": code}})
        return HandshakeError("HTTP 401", 401, body.encode())

    revoked = refusal(TOKEN_REVOKED)
    assert is_revoked(revoked) and is_fatal(revoked)
    assert "revoked" in describe_failure(revoked) and "pair it again" in describe_failure(revoked)
    for other in (refusal("invalid_connector_token"), HandshakeError("HTTP 401", 401, b"")):
        assert not is_revoked(other) and is_fatal(other)
        assert "HTTP 401" in describe_failure(other)
    assert not is_revoked(HandshakeError("HTTP 403", 403, revoked.body))
