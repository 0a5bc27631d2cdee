"""The tray app's saved configuration: `connector.yaml` plus the keyring, under env overrides.

Non-secret settings live in `connector.yaml` in platformdirs' user config directory for
`remotellm`; the connector token and the LLM key live in a `SecretStore`. A
`REMOTELLM_CONNECTOR_*` environment variable beats both, exactly as in headless mode.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import platformdirs
import yaml
from pydantic import BaseModel, Field, ValidationError

from connector_app.core.secrets import SECRET_FIELDS, KeyringUnavailable, SecretStore
from connector_app.core.settings import ConnectorSettings
from shared.settings import ConfigError, describe, load

CONFIG_NAME: Final = "connector.yaml"
ENV_PREFIX: Final = "REMOTELLM_CONNECTOR_"


def default_config_path() -> Path:
    """`connector.yaml` in the user config directory (e.g. ~/.config/remotellm on Linux)."""
    return platformdirs.user_config_path("remotellm") / CONFIG_NAME


class TrayPrefs(BaseModel):
    """Settings only the tray app has."""

    model_config = {"extra": "forbid"}

    serve_on_launch: bool = Field(True, description="Start serving when the app starts.")
    notifications: bool = Field(True, description="Notify when the link drops or comes back.")
    disabled_models: list[str] = Field(
        default_factory=list, description="Discovered models switched off by the operator."
    )


@dataclass
class Profile:
    """What the settings dialog edits: stored values, before environment overrides."""

    values: dict[str, Any] = field(default_factory=dict)
    """Non-secret ConnectorSettings fields, as stored."""
    prefs: TrayPrefs = field(default_factory=TrayPrefs)
    secrets: dict[str, str | None] = field(default_factory=dict)
    secrets_error: str | None = None
    """Why the secrets could not be read (no keyring), for the user."""

    def copy(self) -> Profile:
        """A snapshot that later edits of this profile do not change."""
        return Profile(
            dict(self.values),
            self.prefs.model_copy(deep=True),
            dict(self.secrets),
            self.secrets_error,
        )


class ProfileStore:
    """Loads and saves a Profile; builds ConnectorSettings from it."""

    def __init__(self, path: Path, secrets: SecretStore) -> None:
        self.path = path
        self.secrets = secrets

    @staticmethod
    def overridden() -> set[str]:
        """Settings an environment variable currently decides."""
        return {
            name
            for name in ConnectorSettings.model_fields
            if os.environ.get(ENV_PREFIX + name.upper())
        }

    def load(self) -> Profile:
        """Read the file (missing is fine) and the secrets; ConfigError on a bad file."""
        content: Any = {}
        if self.path.is_file():
            try:
                content = yaml.safe_load(self.path.read_text()) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"{self.path} is not valid YAML: {exc}") from None
        if not isinstance(content, dict):
            raise ConfigError(f"{self.path} must hold a mapping of settings")
        leaked = sorted(set(content) & set(SECRET_FIELDS))
        if leaked:
            raise ConfigError(
                f"{self.path} holds {', '.join(leaked)}; secrets belong in the keyring or the "
                "environment, so remove them from the file and enter them in Settings"
            )
        prefs_keys = set(TrayPrefs.model_fields)
        unknown = sorted(set(content) - prefs_keys - set(ConnectorSettings.model_fields))
        if unknown:
            raise ConfigError(f"{self.path} has unknown settings: {unknown}")
        try:
            prefs = TrayPrefs(**{k: v for k, v in content.items() if k in prefs_keys})
        except ValidationError as exc:
            raise ConfigError(describe(exc)) from None
        return self._with_secrets(
            Profile({k: v for k, v in content.items() if k not in prefs_keys}, prefs)
        )

    def blank(self) -> Profile:
        """Default settings plus the stored secrets: what Settings edits when the file is bad."""
        return self._with_secrets(Profile())

    def _with_secrets(self, profile: Profile) -> Profile:
        try:
            profile.secrets = {name: self.secrets.get(name) for name in SECRET_FIELDS}
        except KeyringUnavailable as exc:
            profile.secrets_error = str(exc)
        return profile

    def save(self, profile: Profile, *, with_secrets: bool = True) -> None:
        """Write the non-secret values to the file and (unless told not to) the secrets to the
        store; raises KeyringUnavailable after writing the file when the keyring is missing."""
        self._write(profile)
        if with_secrets:
            for name in SECRET_FIELDS:
                if name in profile.secrets:
                    self.secrets.set(name, profile.secrets[name])

    def _write(self, profile: Profile) -> None:
        content: dict[str, Any] = {
            k: v for k, v in profile.values.items() if v not in (None, "", []) and k in _PLAIN
        }
        content.update(profile.prefs.model_dump())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Write a temporary file beside it and rename it over: a crash or a full disk leaves
        # the old file whole instead of a truncated one that stops the next start.
        fd, temp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as file:
                file.write(yaml.safe_dump(content, sort_keys=True))
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, self.path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def settings(self, profile: Profile) -> ConnectorSettings:
        """The connector's settings: environment > keyring/file; ConfigError if incomplete."""
        merged: dict[str, Any] = dict(profile.values)
        merged.update({k: v for k, v in profile.secrets.items() if v})
        for name in self.overridden():
            merged.pop(name, None)
        return load(ConnectorSettings, merged, None)

    def is_complete(self, profile: Profile) -> bool:
        try:
            self.settings(profile)
        except ConfigError:
            return False
        return True


_PLAIN: Final = frozenset(ConnectorSettings.model_fields) - frozenset(SECRET_FIELDS)
