"""KeyringStore against a real Secret Service (gnome-keyring on a private D-Bus bus)."""

from __future__ import annotations

from pathlib import Path

import pytest
from keyring.backends import SecretService as secretservice_backend

from connector_app.core.profile import ProfileStore
from connector_app.core.secrets import KeyringStore
from tests.secretservice import SecretService

TOKEN = "ct-9b7e-secret-service-token"


@pytest.fixture
def secret_service_store(
    secret_service: SecretService, monkeypatch: pytest.MonkeyPatch
) -> KeyringStore:
    """The store the tray app builds, on keyring's Secret Service backend, which finds the
    bus through the environment at each call."""
    for name, value in secret_service.env.items():
        monkeypatch.setenv(name, value)
    return KeyringStore(secretservice_backend.Keyring())  # type: ignore[no-untyped-call]


def test_a_profile_load_reads_the_token_stored_in_the_secret_service(
    secret_service: SecretService, secret_service_store: KeyringStore, tmp_path: Path
) -> None:
    secret_service.store("broker_token", TOKEN)  # by libsecret's secret-tool, not keyring
    profile = ProfileStore(tmp_path / "connector.yaml", secret_service_store).load()
    assert profile.secrets_error is None
    assert profile.secrets == {"broker_token": TOKEN, "llm_api_key": None}


def test_a_profile_save_writes_and_clears_the_secrets_in_the_secret_service(
    secret_service: SecretService, secret_service_store: KeyringStore, tmp_path: Path
) -> None:
    store = ProfileStore(tmp_path / "connector.yaml", secret_service_store)
    profile = store.load()
    profile.secrets = {"broker_token": TOKEN, "llm_api_key": "llm-key-1"}
    store.save(profile)
    assert secret_service.lookup("broker_token") == TOKEN
    assert secret_service.lookup("llm_api_key") == "llm-key-1"
    assert TOKEN not in store.path.read_text()
    profile.secrets["llm_api_key"] = None
    store.save(profile)
    assert secret_service.lookup("llm_api_key") is None
    assert store.load().secrets == {"broker_token": TOKEN, "llm_api_key": None}
