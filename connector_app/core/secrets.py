"""Where the connector token and the local LLM key live: the OS keyring, never the config file.

`KeyringStore` goes through the `keyring` library (service `remotellm`), so it uses the
macOS Keychain, Windows Credential Locker or the Secret Service on Linux. When no backend
works (a Linux box without a desktop session), it says so in words and names the
fallbacks instead of failing silently.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final, Protocol

import keyring
import keyring.backend
import keyring.errors
from keyring.backends import chainer, fail

SERVICE: Final = "remotellm"
SECRET_FIELDS: Final = ("broker_token", "llm_api_key")

NO_KEYRING_HELP: Final = (
    "No OS keyring is available here (no Keychain, Credential Locker or Secret Service), "
    "so the connector token and LLM key cannot be stored. Either set them in the environment "
    "(REMOTELLM_CONNECTOR_BROKER_TOKEN, REMOTELLM_CONNECTOR_LLM_API_KEY), or opt in to the "
    "plain-text file backend by starting the app with "
    "PYTHON_KEYRING_BACKEND=keyrings.alt.file.PlaintextKeyring."
)


class KeyringUnavailable(Exception):
    """No keyring backend works; the message says what to do instead."""


class SecretStore(Protocol):
    """Named secrets; `None` means not stored."""

    def get(self, name: str) -> str | None: ...

    def set(self, name: str, value: str | None) -> None: ...


def backend_works(
    backend: keyring.backend.KeyringBackend, environ: Mapping[str, str] = os.environ
) -> bool:
    """False for keyring's placeholder backends that can only fail, and for a plain-text
    keyrings.alt backend that keyring picked on its own: storing secrets in a file must be
    an explicit choice (PYTHON_KEYRING_BACKEND), never a silent fallback."""
    if isinstance(backend, fail.Keyring):
        return False
    if isinstance(backend, chainer.ChainerBackend) and not backend.backends:
        return False
    chosen = environ.get("PYTHON_KEYRING_BACKEND", "")
    module = type(backend).__module__
    return not module.startswith("keyrings.alt") or chosen.startswith(module)


class KeyringStore:
    """Secrets in the OS keyring under the service `remotellm`."""

    def __init__(
        self, backend: keyring.backend.KeyringBackend | None = None, service: str = SERVICE
    ) -> None:
        self.backend = backend if backend is not None else keyring.get_keyring()
        self.service = service

    @property
    def available(self) -> bool:
        return backend_works(self.backend)

    def describe(self) -> str:
        """The backend's name, e.g. "SecretService Keyring". When keyring chains several
        backends, the first one, which is where new secrets go."""
        backend = self.backend
        if isinstance(backend, chainer.ChainerBackend) and backend.backends:
            backend = backend.backends[0]
        return getattr(backend, "name", type(backend).__name__)

    def _check(self) -> None:
        if not self.available:
            raise KeyringUnavailable(NO_KEYRING_HELP)

    def get(self, name: str) -> str | None:
        self._check()
        try:
            return self.backend.get_password(self.service, name)
        except keyring.errors.KeyringError as exc:
            raise KeyringUnavailable(
                f"The keyring could not be read ({exc}). {NO_KEYRING_HELP}"
            ) from None

    def set(self, name: str, value: str | None) -> None:
        self._check()
        try:
            if value:
                self.backend.set_password(self.service, name, value)
            elif self.backend.get_password(self.service, name) is not None:
                self.backend.delete_password(self.service, name)
        except keyring.errors.KeyringError as exc:
            raise KeyringUnavailable(
                f"The keyring refused the secret ({exc}). {NO_KEYRING_HELP}"
            ) from None


class MemoryStore:
    """Secrets in a dict: for tests and for a session that must not persist them."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def set(self, name: str, value: str | None) -> None:
        if value:
            self.values[name] = value
        else:
            self.values.pop(name, None)
