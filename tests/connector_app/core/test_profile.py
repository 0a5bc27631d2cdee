"""Saved tray configuration: connector.yaml for plain settings, the keyring for secrets."""

from __future__ import annotations

from pathlib import Path

import keyring.backend
import pytest
import yaml
from keyring.backends import fail

from connector_app.core.profile import Profile, ProfileStore, TrayPrefs, default_config_path
from connector_app.core.secrets import NO_KEYRING_HELP, KeyringStore, KeyringUnavailable
from shared.settings import ConfigError


class MemoryKeyring(keyring.backend.KeyringBackend):
    """An in-memory keyring backend, so the real keyring API is exercised."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.store: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.store.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.store[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        del self.store[(service, username)]


@pytest.fixture
def backend() -> MemoryKeyring:
    return MemoryKeyring()


@pytest.fixture
def store(tmp_path: Path, backend: MemoryKeyring) -> ProfileStore:
    return ProfileStore(tmp_path / "remotellm" / "connector.yaml", KeyringStore(backend))


def complete() -> Profile:
    return Profile(
        {"broker_url": "wss://broker.example", "llm_url": "http://127.0.0.1:8080/v1"},
        TrayPrefs(disabled_models=["big"]),
        {"broker_token": "ct-secret-token", "llm_api_key": "llm-secret-key"},
    )


def test_secrets_go_to_the_keyring_and_never_to_the_file(
    store: ProfileStore, backend: MemoryKeyring
) -> None:
    store.save(complete())
    text = store.path.read_text()
    assert "secret" not in text
    assert yaml.safe_load(text)["broker_url"] == "wss://broker.example"
    assert backend.store == {
        ("remotellm", "broker_token"): "ct-secret-token",
        ("remotellm", "llm_api_key"): "llm-secret-key",
    }
    loaded = store.load()
    assert loaded.secrets["broker_token"] == "ct-secret-token"
    assert loaded.prefs.disabled_models == ["big"]
    settings = store.settings(loaded)
    assert settings.broker_url == "wss://broker.example/relay"
    assert settings.llm_url == "http://127.0.0.1:8080"
    assert settings.broker_token.get_secret_value() == "ct-secret-token"


def test_clearing_a_secret_deletes_it_from_the_keyring(
    store: ProfileStore, backend: MemoryKeyring
) -> None:
    store.save(complete())
    profile = store.load()
    profile.secrets["llm_api_key"] = None
    store.save(profile)
    assert ("remotellm", "llm_api_key") not in backend.store


def test_environment_beats_file_and_keyring(
    store: ProfileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.save(complete())
    monkeypatch.setenv("REMOTELLM_CONNECTOR_BROKER_TOKEN", "from-env")
    monkeypatch.setenv("REMOTELLM_CONNECTOR_MAX_CONCURRENCY", "9")
    settings = store.settings(store.load())
    assert settings.broker_token.get_secret_value() == "from-env"
    assert settings.max_concurrency == 9
    assert store.overridden() == {"broker_token", "max_concurrency"}


def test_incomplete_configuration_is_reported(store: ProfileStore) -> None:
    profile = store.load()
    assert not store.is_complete(profile)
    with pytest.raises(ConfigError, match="broker_url"):
        store.settings(profile)


def test_a_secret_in_the_file_is_refused_with_advice(store: ProfileStore) -> None:
    store.path.parent.mkdir(parents=True)
    store.path.write_text("broker_url: wss://b.example\nbroker_token: oops\n")
    with pytest.raises(ConfigError, match="belong in the keyring"):
        store.load()


def test_unknown_keys_in_the_file_are_refused(store: ProfileStore) -> None:
    store.path.parent.mkdir(parents=True)
    store.path.write_text("brokr_url: wss://b.example\n")
    with pytest.raises(ConfigError, match="brokr_url"):
        store.load()


def test_without_a_keyring_the_app_says_so_and_env_vars_still_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = KeyringStore(fail.Keyring())
    assert not secrets.available
    with pytest.raises(KeyringUnavailable, match="PYTHON_KEYRING_BACKEND"):
        secrets.set("broker_token", "x")
    store = ProfileStore(tmp_path / "connector.yaml", secrets)
    profile = store.load()
    assert profile.secrets_error == NO_KEYRING_HELP
    assert "REMOTELLM_CONNECTOR_BROKER_TOKEN" in NO_KEYRING_HELP
    profile.values["broker_url"] = "wss://b.example"
    monkeypatch.setenv("REMOTELLM_CONNECTOR_BROKER_TOKEN", "from-env")
    assert store.settings(profile).broker_token.get_secret_value() == "from-env"


def test_the_default_file_is_in_the_user_config_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", "/tmp/xdg-test-home")
    assert default_config_path() == Path("/tmp/xdg-test-home/remotellm/connector.yaml")


def test_a_plain_text_file_backend_counts_only_when_chosen_explicitly(tmp_path: Path) -> None:
    from keyrings.alt.file import PlaintextKeyring

    from connector_app.core.secrets import backend_works

    plain = PlaintextKeyring()
    assert not backend_works(plain, {})  # picked by keyring on its own: not a silent fallback
    chosen = {"PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring"}
    assert backend_works(plain, chosen)
    assert backend_works(MemoryKeyring(), {})
    assert not backend_works(fail.Keyring(), chosen)


def test_the_file_is_replaced_atomically(
    tmp_path: Path, backend: MemoryKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    store = ProfileStore(tmp_path / "connector.yaml", KeyringStore(backend))
    store.save(Profile({"broker_url": "wss://one.example/relay"}))
    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def replace(src: str, dst: str) -> None:
        replaced.append((str(src), str(dst)))
        assert "one.example" in store.path.read_text()  # the old file is whole until now
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    store.save(Profile({"broker_url": "wss://two.example/relay"}))
    assert [dst for _, dst in replaced] == [str(store.path)]
    assert "two.example" in store.path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["connector.yaml"]  # no temp left
