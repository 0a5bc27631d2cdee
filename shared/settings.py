"""What both commands share about settings: env prefixes, list parsing, YAML files, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeVar, cast

import yaml
from pydantic import BeforeValidator, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    YamlConfigSettingsSource,
)

S = TypeVar("S", bound=BaseSettings)

LOG_LEVELS: Final = ("debug", "info", "warning", "error")


def lowered(value: Any) -> Any:
    """A string in lower case (`WARNING` as most tools accept it); anything else unchanged."""
    return value.lower() if isinstance(value, str) else value


LogLevel = Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(lowered)]
"""A log level setting, in any case."""


class ConfigError(Exception):
    """Configuration that cannot be used; the message is one line for the user."""


def split_list(value: Any) -> Any:
    """Accept a comma-separated string (from an env var) where a list is expected."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def secret_values(secrets: list[SecretStr]) -> list[str]:
    return [s.get_secret_value() for s in secrets]


def describe(error: ValidationError) -> str:
    """Turn pydantic's report into one line naming the setting and the problem."""
    first = error.errors()[0]
    name = ".".join(str(p) for p in first["loc"]) or "configuration"
    extra = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"invalid setting {name!r}: {first['msg']}{extra}"


def load(cls: type[S], cli: dict[str, Any], config_file: Path | None) -> S:
    """Build settings with the precedence: command line > environment > YAML file > defaults."""
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(f"config file {str(config_file)!r} does not exist")
        try:
            content = yaml.safe_load(config_file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"config file {str(config_file)!r} is not valid YAML: {exc}"
            ) from None
        if not isinstance(content, dict):
            raise ConfigError(f"config file {str(config_file)!r} must hold a mapping of settings")
        unknown = sorted(set(content) - set(cls.model_fields))
        if unknown:
            raise ConfigError(f"config file {str(config_file)!r} has unknown settings: {unknown}")

    class WithFile(cls):  # type: ignore[valid-type,misc]
        @classmethod
        def settings_customise_sources(
            cls_inner,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
            if config_file is not None:
                sources += (YamlConfigSettingsSource(settings_cls, yaml_file=config_file),)
            return sources

    try:
        built = WithFile(**{k: v for k, v in cli.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(describe(exc)) from None
    return cast(S, cls.model_construct(**dict(built)))
