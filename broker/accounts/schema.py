"""The broker's database schema, written once for every backend (SQLAlchemy Core).

`Store.open` creates it and migrates it (`broker.accounts.migration`); `SCHEMA_VERSION` is
kept in the `meta` table. Times are UNIX seconds (floats).
"""

from __future__ import annotations

import sqlalchemy as sa

SCHEMA_VERSION = 2
"""1: the first release. 2: `usage.connector_id`, the connector token that served a request."""

metadata = sa.MetaData()

meta = sa.Table(
    "meta",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(255), nullable=False),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("gitlab_id", sa.BigInteger, unique=True, nullable=True),
    sa.Column("username", sa.String(255), unique=True, nullable=False),
    sa.Column("name", sa.String(255), nullable=False, default=""),
    sa.Column("status", sa.String(16), nullable=False, default="active"),
    sa.Column("role", sa.String(16), nullable=False, default="user"),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("rpm", sa.Integer, nullable=True),
    sa.Column("concurrency", sa.Integer, nullable=True),
    sa.Column("daily_tokens", sa.BigInteger, nullable=True),
    sa.Column("models", sa.Text, nullable=True),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False, index=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("prefix", sa.String(32), nullable=False),
    sa.Column("hash", sa.String(64), unique=True, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("last_used", sa.Float, nullable=True),
    sa.Column("expires", sa.Float, nullable=True),
    sa.Column("revoked", sa.Float, nullable=True),
)

connector_tokens = sa.Table(
    "connector_tokens",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("owner_id", sa.Integer, sa.ForeignKey("users.id"), nullable=True),
    sa.Column("prefix", sa.String(32), nullable=False),
    sa.Column("hash", sa.String(64), unique=True, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=True),
    sa.Column("revoked", sa.Float, nullable=True),
)

pairings = sa.Table(
    "pairings",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("device_hash", sa.String(64), unique=True, nullable=False),
    sa.Column("code_hash", sa.String(64), nullable=False, index=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("ip", sa.String(64), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("expires", sa.Float, nullable=False, index=True),
    sa.Column("interval", sa.Integer, nullable=False),
    sa.Column("last_poll", sa.Float, nullable=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=True),
    sa.Column("token_id", sa.Integer, sa.ForeignKey("connector_tokens.id"), nullable=True),
)

connector_access = sa.Table(
    "connector_access",
    metadata,
    sa.Column("token_id", sa.Integer, sa.ForeignKey("connector_tokens.id"), primary_key=True),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("members", sa.Text, nullable=False),
    sa.Column("changed", sa.Float, nullable=False),
)
"""Who each connector admits (`broker.accounts.access`); no row: everyone."""

user_groups = sa.Table(
    "user_groups",
    metadata,
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), primary_key=True),
    sa.Column("group_path", sa.String(255), primary_key=True),
)
"""The GitLab groups each user was a member of at their last sign-in."""

usage = sa.Table(
    "usage",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("time", sa.Float, nullable=False, index=True),
    sa.Column("request_id", sa.String(128), nullable=False),
    sa.Column("user_id", sa.Integer, nullable=True, index=True),
    sa.Column("key_id", sa.Integer, nullable=True, index=True),
    sa.Column("model", sa.String(255), nullable=True),
    sa.Column("connector", sa.String(255), nullable=True),
    # The connector token that served the request (schema 2); None for a connector whose
    # token is in the settings, for rows of schema 1 and requests no connector took.
    sa.Column("connector_id", sa.Integer, nullable=True, index=True),
    sa.Column("endpoint", sa.String(64), nullable=False),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("prompt_tokens", sa.Integer, nullable=True),
    sa.Column("completion_tokens", sa.Integer, nullable=True),
    sa.Column("duration_ms", sa.Float, nullable=False),
    sa.Column("ttfb_ms", sa.Float, nullable=True),
    sa.Column("cancelled", sa.Boolean, nullable=False, default=False),
)
