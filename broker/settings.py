"""The broker's settings: command line, REMOTELLM_BROKER_* environment, optional YAML file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Final, Literal
from urllib.parse import urlsplit

import platformdirs
from pydantic import BeforeValidator, Field, FilePath, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.protocol import MAX_REQUEST_BODY
from shared.settings import LogLevel, split_list
from shared.text import is_clean, shown

SecretList = Annotated[list[SecretStr], NoDecode, BeforeValidator(split_list)]
StrList = Annotated[list[str], NoDecode, BeforeValidator(split_list)]


_SCHEME: Final = re.compile(r"[a-z][a-z0-9+.-]*")


def normalise_origin(value: str) -> str:
    """An origin as browsers send it (`https://app.example.com[:port]`, lower case), or `*`."""
    if value == "*":
        return value
    text = value.strip().rstrip("/").lower()
    if not is_clean(text, 200) or any(char.isspace() for char in text):
        raise ValueError(f"{shown(value[:200])} is not an origin")
    parts = urlsplit(text)
    if (
        not _SCHEME.fullmatch(parts.scheme)
        or not parts.netloc
        or "@" in parts.netloc
        or parts.path
        or parts.query
        or parts.fragment
        or "://" not in text
    ):
        raise ValueError(
            f"{shown(value[:200])} is not an origin; give scheme://host[:port], such as"
            " https://app.example.com, without a path (or * for any origin)"
        )
    return text


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
    log_level: LogLevel = Field("info", description="Log level.")
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
    max_user_share: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Share of one connector's slots a user may hold while others wait for it"
        " (0 to 1; 1: no cap).",
    )
    head_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a client gets to send a whole request head once it has begun.",
    )
    body_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a request body may go without a byte arriving before the broker"
        " hangs up.",
    )
    idle_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a kept-alive connection may wait for its next request.",
    )
    stall_timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds a client may take none of its answer before the broker cuts it off.",
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
    data_dir: Path = Field(
        default_factory=lambda: platformdirs.user_data_path("remotellm"),
        description="Directory of the SQLite store and the session secret.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy async URL of the store (default: SQLite in --data-dir).",
    )
    public_url: str | None = Field(
        None, description="Base URL users see (default http://HOST:PORT); used by the portal."
    )
    gitlab_url: str = Field("https://gitlab.com", description="GitLab instance for sign-in.")
    gitlab_client_id: str | None = Field(
        None, description="OAuth application id on GitLab; enables the sign-in portal."
    )
    gitlab_client_secret: SecretStr | None = Field(
        None, description="OAuth application secret on GitLab."
    )
    gitlab_allowed_group: StrList = Field(
        default_factory=list,
        description="Only members of these GitLab groups may sign in (repeatable; empty: anyone).",
    )
    gitlab_read_groups: bool = Field(
        False,
        description="Read each user's GitLab groups at sign-in (asks for read_api), so"
        " connectors can be shared with groups.",
    )
    pairing: Literal["users", "admins", "off"] = Field(
        "users",
        description="Who may pair a connector by signing in: users (whoever may sign in to the"
        " portal), admins, or off.",
    )
    session_secret: SecretStr | None = Field(
        None, description="Key for the portal's session cookies (default: generated in --data-dir)."
    )
    redis_url: SecretStr | None = Field(
        None,
        description="Redis URL (redis://, rediss:// or unix://); turns on cluster mode, in which"
        " several brokers share connectors, limits and portal state.",
    )
    cluster_secret: SecretStr | None = Field(
        None,
        description="Secret the brokers of one cluster share to authenticate requests they"
        " forward to each other (at least 32 characters; required with --redis-url).",
    )
    internal_url: str | None = Field(
        None,
        description="Base URL the other brokers of the cluster reach this one on (default"
        " http(s)://HOST:PORT of the listening address).",
    )
    key_rpm: int = Field(0, ge=0, description="Requests per minute per API key (0: unlimited).")
    key_concurrency: int = Field(
        0, ge=0, description="Concurrent requests per API key (0: unlimited)."
    )
    key_daily_tokens: int = Field(
        0, ge=0, description="Tokens per API key per UTC day (0: unlimited)."
    )
    cors_origin: StrList = Field(
        default_factory=list,
        description="Origins whose browser pages may call the API (repeatable; * for any).",
    )

    @field_validator("cors_origin")
    @classmethod
    def _origins(cls, values: list[str]) -> list[str]:
        return [normalise_origin(value) for value in values]

    @model_validator(mode="after")
    def _tls_pair(self) -> BrokerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        return self

    @model_validator(mode="after")
    def _gitlab_pair(self) -> BrokerSettings:
        if bool(self.gitlab_client_id) != bool(self.gitlab_client_secret):
            raise ValueError("gitlab_client_id and gitlab_client_secret must be given together")
        return self

    @model_validator(mode="after")
    def _cluster(self) -> BrokerSettings:
        if self.redis_url is None:
            if self.cluster_secret is not None or self.internal_url is not None:
                raise ValueError("cluster_secret and internal_url need redis_url (cluster mode)")
            return self
        scheme = urlsplit(self.redis_url.get_secret_value()).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        if self.cluster_secret is None or len(self.cluster_secret.get_secret_value()) < 32:
            raise ValueError(
                "cluster mode needs cluster_secret: at least 32 characters every broker of the"
                " cluster shares (for example the output of `openssl rand -hex 32`)"
            )
        if self.internal_url is not None:
            parts = urlsplit(self.internal_url)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
                raise ValueError(
                    "internal_url must be a base URL such as http://10.0.0.5:8443, without a path"
                )
        return self

    @property
    def cluster(self) -> bool:
        """True in cluster mode (a Redis URL is set)."""
        return self.redis_url is not None

    @property
    def portal(self) -> bool:
        """True when GitLab sign-in is configured."""
        return bool(self.gitlab_client_id)

    @property
    def tls(self) -> tuple[Path, Path] | None:
        if self.tls_cert is None or self.tls_key is None:
            return None
        return self.tls_cert, self.tls_key
