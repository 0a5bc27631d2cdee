"""The format of API keys and connector tokens: prefix, random part, checksum.

`sk-` + 32 base62 characters (about 190 random bits) + a 6-character CRC-32 checksum.
A typo fails the checksum before any look-up, and the fixed prefix lets secret
scanners spot a leaked key. Connector tokens use the same shape with `rlc-`.
Only a SHA-256 digest of a secret is ever stored.
"""

from __future__ import annotations

import hashlib
import secrets
import zlib

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
API_KEY_PREFIX = "sk-"
CONNECTOR_TOKEN_PREFIX = "rlc-"
RANDOM_LENGTH = 32
CHECKSUM_LENGTH = 6
DISPLAY_LENGTH = 8


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(ALPHABET[digit])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), CHECKSUM_LENGTH)


def generate(prefix: str = API_KEY_PREFIX) -> str:
    """A new secret: prefix, random base62 characters, checksum."""
    body = "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_LENGTH))
    return f"{prefix}{body}{_checksum(body)}"


def well_formed(secret: str, prefix: str = API_KEY_PREFIX) -> bool:
    """True when `secret` has this prefix, the right length and alphabet, and a valid checksum."""
    if not secret.startswith(prefix):
        return False
    rest = secret[len(prefix) :]
    if len(rest) != RANDOM_LENGTH + CHECKSUM_LENGTH or not all(c in ALPHABET for c in rest):
        return False
    body, check = rest[:RANDOM_LENGTH], rest[RANDOM_LENGTH:]
    return secrets.compare_digest(_checksum(body), check)


def fingerprint(secret: str) -> str:
    """The hex SHA-256 of a secret: what the store keeps and looks up by."""
    return hashlib.sha256(secret.encode()).hexdigest()


def display_prefix(secret: str) -> str:
    """The part of a secret that may be shown again later (prefix and a few characters)."""
    head, _, _ = secret.partition("-")
    return secret[: len(head) + 1 + DISPLAY_LENGTH]
