"""What the store hands out: users, keys, connector tokens and usage, as plain values.

The `*_from_row` functions turn the rows of `broker.accounts.schema` into them.
"""

from __future__ import annotations

import json
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
    connector_id: int | None = None
    """The connector token that served it (None: a token from the settings, or no connector)."""


@dataclass(frozen=True)
class UsageTotal:
    group: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    errors: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Served:
    """What one connector served one user (or the configured keys, `user_id` None)."""

    connector_id: int
    user_id: int | None
    username: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    errors: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def user_from_row(row: Any) -> User:
    models = tuple(json.loads(row.models)) if row.models is not None else None
    return User(
        id=row.id,
        username=row.username,
        name=row.name,
        status=row.status,
        role=row.role,
        created=row.created,
        gitlab_id=row.gitlab_id,
        rpm=row.rpm,
        concurrency=row.concurrency,
        daily_tokens=row.daily_tokens,
        models=models,
    )


def key_from_row(row: Any) -> ApiKey:
    return ApiKey(
        id=row.id,
        user_id=row.user_id,
        name=row.name,
        prefix=row.prefix,
        created=row.created,
        last_used=row.last_used,
        expires=row.expires,
        revoked=row.revoked,
    )


def token_from_row(row: Any) -> ConnectorToken:
    return ConnectorToken(
        id=row.id,
        name=row.name,
        owner_id=row.owner_id,
        prefix=row.prefix,
        created=row.created,
        last_seen=row.last_seen,
        revoked=row.revoked,
    )
