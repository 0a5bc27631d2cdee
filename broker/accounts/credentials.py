"""API keys and connector tokens: held as SHA-256 digests, checked by digest."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class Credentials:
    """A set of accepted secrets, held as digests (this object keeps no raw secret)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._digests = frozenset(digest(s) for s in secrets if s)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def accepts(self, presented: str | None) -> bool:
        if not presented:
            return False
        candidate = digest(presented)
        # Compare against every digest so timing says nothing about which matched.
        found = False
        for known in self._digests:
            found |= hmac.compare_digest(known, candidate)
        return found


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The secret in `Authorization: Bearer …`, the only place a connector sends its token."""
    auth = headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The secret a client sent: `Authorization: Bearer …`, else `x-api-key` (Anthropic SDK)."""
    return bearer_token(headers) or headers.get("x-api-key") or None
