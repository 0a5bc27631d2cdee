"""What the store hands out: users, keys, connector tokens and usage, as plain values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["active", "blocked"]
Role = Literal["user", "admin"]
GroupBy = Literal["user", "model", "connector", "day"]


class StoreError(Exception):
    """A store operation that cannot be done as asked (unknown user, duplicate name, …)."""


@dataclass(frozen=True)
class User:
    id: int
    username: str
    name: str
    status: str
    role: str
    created: float
    gitlab_id: int | None = None
    rpm: int | None = None
    concurrency: int | None = None
    daily_tokens: int | None = None
    models: tuple[str, ...] | None = None

    @property
    def blocked(self) -> bool:
        return self.status == "blocked"

    @property
    def admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class ApiKey:
    id: int
    user_id: int
    name: str
    prefix: str
    created: float
    last_used: float | None
    expires: float | None
    revoked: float | None

    def usable(self, now: float) -> bool:
        return self.revoked is None and (self.expires is None or self.expires > now)


@dataclass(frozen=True)
class ConnectorToken:
    id: int
    name: str
    owner_id: int | None
    prefix: str
    created: float
    last_seen: float | None
    revoked: float | None


@dataclass(frozen=True)
class UsageRow:
    """One API request, as the ledger records it."""

    time: float
    request_id: str
    endpoint: str
    status: int
    duration_ms: float
    user_id: int | None = None
    key_id: int | None = None
    model: str | None = None
    connector: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttfb_ms: float | None = None
    cancelled: bool = False


@dataclass(frozen=True)
class UsageTotal:
    group: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    errors: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
