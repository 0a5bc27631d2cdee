"""The codes of a connector pairing: the user code a person types, the connector's device code.

The user code is 8 characters from an alphabet without vowels (no words) and without the
characters people confuse (0/O, 1/I/L), shown as `XXXX-XXXX`, as RFC 8628 section 6.1
suggests: 27 symbols, about 38 bits, enough for a code that lives 15 minutes behind a rate
limit. The device code is a long random secret only the connector sees. The store keeps the
SHA-256 of both, never the codes themselves.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Final

USER_CODE_ALPHABET: Final = "BCDFGHJKMNPQRSTVWXZ23456789"
USER_CODE_LENGTH: Final = 8
DEVICE_CODE_BYTES: Final = 32


def new_user_code() -> str:
    """A fresh user code, as shown: `XXXX-XXXX`."""
    body = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_LENGTH))
    return f"{body[:4]}-{body[4:]}"


def new_device_code() -> str:
    """A fresh device code: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(DEVICE_CODE_BYTES)


def normalise_user_code(typed: str) -> str | None:
    """The 8 characters of a typed user code (any case, with or without the dash or spaces),
    or None when it cannot be one."""
    text = "".join(ch for ch in typed.upper() if ch not in "- \t")
    if len(text) != USER_CODE_LENGTH or any(ch not in USER_CODE_ALPHABET for ch in text):
        return None
    return text


def shown_user_code(code: str) -> str:
    """The 8 characters of a user code as people see it: `XXXX-XXXX`."""
    return f"{code[:4]}-{code[4:]}"


def code_hash(code: str) -> str:
    """The hex SHA-256 the store keeps of a (normalised) code."""
    return hashlib.sha256(code.encode()).hexdigest()
