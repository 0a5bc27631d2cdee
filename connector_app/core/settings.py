"""The connector's settings: command line, REMOTELLM_CONNECTOR_* environment, YAML file."""

from __future__ import annotations

import ipaddress
import socket
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BeforeValidator,
    Field,
    FilePath,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.settings import LogLevel, split_list
from shared.text import MAX_NAME_LENGTH, is_clean

StrList = Annotated[list[str], NoDecode, BeforeValidator(split_list)]


def _user_ids(value: Any) -> Any:
    """A list of user ids: a YAML file may write a numeric id as a number."""
    value = split_list(value)
    if isinstance(value, list):
        return [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
    return value


UserIds = Annotated[list[str], NoDecode, BeforeValidator(_user_ids)]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def normalise_broker_url(url: str) -> str:
    """Accept ws(s):// or http(s):// broker URLs; default the path to /relay."""
    parts = urlsplit(url.strip())
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError("must be a ws://, wss://, http:// or https:// URL with a host")
    path = parts.path if parts.path not in ("", "/") else "/relay"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def normalise_llm_url(url: str) -> str:
    """The local server's base URL, without a trailing /v1 (paths are forwarded as sent)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class ConnectorSettings(BaseSettings):
    """Every knob of the connector, headless or tray."""

    model_config = SettingsConfigDict(env_prefix="REMOTELLM_CONNECTOR_", extra="forbid")

    broker_url: str = Field(description="The broker's relay URL, e.g. wss://broker.example/relay.")
    broker_token: SecretStr = Field(description="Connector token issued by the broker operator.")
    llm_url: str = Field(
        "http://127.0.0.1:11434", description="Base URL of the local LLM server (/v1 optional)."
    )
    llm_api_key: SecretStr | None = Field(
        None, description="API key the local LLM server wants, sent as a Bearer token."
    )
    model: StrList = Field(
        default_factory=list, description="Models to serve (repeatable); empty = discover them."
    )
    max_concurrency: int = Field(4, ge=1, le=1024, description="Requests served at once.")
    name: str = Field(
        default_factory=socket.gethostname, description="Name shown to the broker's operator."
    )
    ca_file: FilePath | None = Field(
        None,
        description="PEM CA bundle to trust, instead of the system's store, for a wss:// broker "
        "whose certificate a private CA issued.",
    )
    insecure: bool = Field(False, description="Allow ws:// to a host that is not loopback.")
    discovery_interval: float = Field(
        30.0, gt=0, description="Seconds between model discoveries on the local server."
    )
    heartbeat: float = Field(
        10.0, gt=0, description="Seconds between pings; a dead link is seen within two."
    )
    shutdown_grace: float = Field(
        30.0, ge=0, description="Seconds in-flight requests get to finish on shutdown."
    )
    blocked_users: UserIds = Field(
        default_factory=list,
        description="User ids (as the broker names them) whose requests this connector "
        "refuses (repeatable; the broker tries another connector).",
    )
    log_level: LogLevel = Field("info", description="Log level.")
    log_format: Literal["json", "console"] = Field("json", description="Log line format.")

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        return normalise_broker_url(value)

    @field_validator("llm_url")
    @classmethod
    def _llm_url(cls, value: str) -> str:
        return normalise_llm_url(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        # The broker refuses any other name at the hello; say so before connecting.
        if not is_clean(value):
            raise ValueError(f"name must be 1 to {MAX_NAME_LENGTH} printable characters")
        return value

    @model_validator(mode="after")
    def _tls(self) -> ConnectorSettings:
        parts = urlsplit(self.broker_url)
        if parts.scheme == "ws" and not self.insecure and not is_loopback(parts.hostname or ""):
            raise ValueError(
                "broker_url uses unencrypted ws:// to a remote host; use wss:// "
                "(or pass --insecure if you really mean it)"
            )
        if not self.broker_token.get_secret_value():
            raise ValueError("broker_token must not be empty")
        return self
