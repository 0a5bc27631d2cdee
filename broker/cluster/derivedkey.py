"""Keys derived from the cluster secret, one per purpose, the same on every broker."""

from __future__ import annotations

import base64
import hashlib
import hmac


def derived_key(cluster_secret: str, purpose: str) -> bytes:
    """A Fernet key (urlsafe base64 of 32 bytes) for `purpose`, from the cluster secret
    (HMAC-SHA256 with the purpose as the message): a key for one purpose tells nothing about
    another's, nor about the secret."""
    digest = hmac.new(cluster_secret.encode(), f"remotellm {purpose}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(digest.digest())
