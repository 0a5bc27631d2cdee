"""The broker's settings: command line, REMOTELLM_BROKER_* environment, optional YAML file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, FilePath, SecretStr, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.protocol import MAX_REQUEST_BODY
from shared.settings import split_list

SecretList = Annotated[list[SecretStr], NoDecode, BeforeValidator(split_list)]


class BrokerSettings(BaseSettings):
    """Every knob of `remotellm-broker serve`. Tests build it directly."""

    model_config = SettingsConfigDict(env_prefix="REMOTELLM_BROKER_", extra="forbid")

    host: str = Field("0.0.0.0", description="Address to listen on.")
    port: int = Field(8443, ge=0, le=65535, description="TCP port (0 picks a free one).")
    user_api_key: SecretList = Field(
        default_factory=list, description="API key accepted from users (repeatable)."
    )
    connector_token: SecretList = Field(
        default_factory=list, description="Token accepted from connectors (repeatable)."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level."
    )
    log_format: Literal["json", "console"] = Field("json", description="Log line format.")
    max_body_size: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        le=MAX_REQUEST_BODY,
        description="Largest request body in bytes (at most 256 MiB); larger gets 413.",
    )
    request_timeout: float = Field(
        600.0, gt=0, description="Seconds a request may take end to end before 504."
    )
    connector_wait: float = Field(
        5.0,
        ge=0,
        description="Seconds to hold a request while no connector serves its model before 503.",
    )
    queue_timeout: float = Field(
        30.0,
        ge=0,
        description="Seconds to wait for a free slot when every connector of a model is busy.",
    )
    shutdown_grace: float = Field(
        30.0, ge=0, description="Seconds in-flight requests get to finish on SIGTERM."
    )
    heartbeat: float = Field(
        15.0, gt=0, description="Seconds between WebSocket pings to each connector."
    )
    tls_cert: FilePath | None = Field(
        None, description="PEM certificate chain; with --tls-key the broker serves HTTPS/WSS."
    )
    tls_key: FilePath | None = Field(None, description="PEM private key for --tls-cert.")

    @model_validator(mode="after")
    def _tls_pair(self) -> BrokerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        return self

    @property
    def tls(self) -> tuple[Path, Path] | None:
        if self.tls_cert is None or self.tls_key is None:
            return None
        return self.tls_cert, self.tls_key
