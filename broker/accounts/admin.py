"""The admin commands: users, keys, connector tokens and usage, straight against the store.

They open the same store as the server (safe while it runs: SQLite in WAL mode, short
transactions) and print plain text tables. Changes reach a running broker within
its key cache's second (connector tokens and access rules within its 5 s check); given the
cluster's Redis (`--redis-url`, in cluster mode), a command that changes something also
tells every broker of the cluster, which apply it at once (`broker.cluster.events`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from broker.accounts.accessadmin import access_command, add_access_parser
from broker.accounts.change import (
    AccessChanged,
    Change,
    ConnectorRevoked,
    KeyRevoked,
    UserChanged,
)
from broker.accounts.records import GroupBy, StoreError, User
from broker.accounts.store import Store, database_url
from broker.settings import BrokerSettings


class AdminError(Exception):
    """A command that cannot be done as asked; the message says why."""


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M")


def _table(out: TextIO, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def _limit(value: int | None) -> str:
    if value is None:
        return "default"
    return "unlimited" if value == 0 else str(value)


def parse_since(text: str | None) -> float:
    """`YYYY-MM-DD` (UTC midnight) or an ISO date-time; None means since the beginning."""
    if not text:
        return 0.0
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise AdminError(f"--since must be a date like 2026-11-01, not '{text}'") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


async def run(
    args: argparse.Namespace,
    settings: BrokerSettings,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    store = await Store.open(database_url(settings.data_dir, settings.database_url))
    try:
        changes = await _dispatch(store, args, out)
    except (StoreError, AdminError) as exc:
        print(f"remotellm-broker: error: {exc}", file=err)
        return 1
    finally:
        await store.close()
    if changes and settings.redis_url is not None:
        await _tell_cluster(settings.redis_url.get_secret_value(), changes, err)
    return 0


async def _tell_cluster(url: str, changes: list[Change], err: TextIO) -> None:
    """Tell the cluster's brokers of the change; when Redis does not answer, say when they
    apply it anyway (the change is made either way)."""
    from broker.cluster.events import publish_once

    try:
        await publish_once(url, changes)
    except Exception as exc:
        print(
            f"remotellm-broker: warning: cannot reach Redis to tell the brokers now"
            f" ({type(exc).__name__}); they apply the change within 5 seconds",
            file=err,
        )


async def _dispatch(store: Store, args: argparse.Namespace, out: TextIO) -> list[Change]:
    """Run the command; the changes it made to what brokers hold in memory."""
    match args.command:
        case "users":
            return await _users(store, args, out)
        case "keys":
            return await _keys(store, args, out)
        case "connectors":
            return await _connectors(store, args, out)
        case "usage":
            await _usage(store, args, out)
            return []
    raise AdminError(f"unknown command {args.command} {args.action}")


async def _users(store: Store, args: argparse.Namespace, out: TextIO) -> list[Change]:
    match args.action:
        case "list":
            await _users_list(store, out)
        case "create":
            user = await store.create_user(
                args.user, args.name or "", "admin" if args.admin else "user"
            )
            out.write(f"created user {user.username} (id {user.id}, {user.role})\n")
        case ("block" | "unblock") as action:
            user = await store.find_user(args.user)
            await store.set_status(user.id, "blocked" if action == "block" else "active")
            effect = "stop working" if action == "block" else "work again"
            out.write(f"{action}ed {user.username}: their keys {effect} within a second\n")
            return [UserChanged(user.id)]
        case ("promote" | "demote") as action:
            user = await store.find_user(args.user)
            await store.set_role(user.id, "admin" if action == "promote" else "user")
            out.write(f"{user.username} is now {'an admin' if action == 'promote' else 'a user'}\n")
            return [UserChanged(user.id)]
        case "set-limits":
            return [UserChanged(await _set_limits(store, args, out))]
        case _:
            raise AdminError(f"unknown command users {args.action}")
    return []


async def _keys(store: Store, args: argparse.Namespace, out: TextIO) -> list[Change]:
    match args.action:
        case "create":
            user = await store.find_user(args.user)
            expires = parse_since(args.expires) if args.expires else None
            raw, key = await store.create_key(user.id, args.name, expires)
            out.write(f"created key {key.prefix}… for {user.username} (id {key.id})\n")
            out.write("It is shown only this once; store it now:\n")
            out.write(raw + "\n")
        case "list":
            await _keys_list(store, args.user, out)
        case "revoke":
            if not await store.revoke_key(args.key_id):
                raise AdminError(f"no live key with id {args.key_id}")
            out.write(f"revoked key {args.key_id}\n")
            return [KeyRevoked(args.key_id)]
        case _:
            raise AdminError(f"unknown command keys {args.action}")
    return []


async def _connectors(store: Store, args: argparse.Namespace, out: TextIO) -> list[Change]:
    match args.action:
        case "create":
            owner = (await store.find_user(args.owner)).id if args.owner else None
            raw, token = await store.create_connector_token(args.name, owner)
            out.write(f"created connector token '{token.name}' ({token.prefix}…)\n")
            out.write("It is shown only this once; give it to the connector (--broker-token):\n")
            out.write(raw + "\n")
        case "list":
            tokens = await store.connector_tokens()
            names = {u.id: u.username for u in await store.list_users()}
            _table(
                out,
                ["ID", "NAME", "OWNER", "PREFIX", "CREATED", "LAST SEEN", "STATE"],
                [
                    (
                        t.id,
                        t.name,
                        names.get(t.owner_id, "-") if t.owner_id is not None else "-",
                        t.prefix + "…",
                        _when(t.created),
                        _when(t.last_seen),
                        "revoked" if t.revoked else "active",
                    )
                    for t in tokens
                ],
            )
        case "revoke":
            ident = str(args.name)
            matching = [
                t.id
                for t in await store.connector_tokens()
                if t.revoked is None and (t.name == ident or str(t.id) == ident)
            ]
            if not await store.revoke_connector_token(args.name):
                raise AdminError(f"no live connector token named '{args.name}'")
            out.write(f"revoked connector token '{args.name}'\n")
            return [ConnectorRevoked(token_id) for token_id in matching]
        case "access":
            token_id = await access_command(store, args, out)
            return [AccessChanged(token_id)] if token_id is not None else []
        case _:
            raise AdminError(f"unknown command connectors {args.action}")
    return []


async def _usage(store: Store, args: argparse.Namespace, out: TextIO) -> None:
    by: GroupBy = args.by
    totals = await store.usage.totals(by, parse_since(args.since))
    _table(
        out,
        [by.upper(), "REQUESTS", "ERRORS", "PROMPT TOKENS", "COMPLETION TOKENS"],
        [(t.group, t.requests, t.errors, t.prompt_tokens, t.completion_tokens) for t in totals],
    )


async def _users_list(store: Store, out: TextIO) -> None:
    users = await store.list_users()
    _table(
        out,
        [
            "ID",
            "USERNAME",
            "NAME",
            "STATUS",
            "ROLE",
            "RPM",
            "CONCURRENCY",
            "TOKENS/DAY",
            "MODELS",
            "CREATED",
        ],
        [
            (
                u.id,
                u.username,
                u.name or "-",
                u.status,
                u.role,
                _limit(u.rpm),
                _limit(u.concurrency),
                _limit(u.daily_tokens),
                ",".join(u.models) if u.models is not None else "all",
                _when(u.created),
            )
            for u in users
        ],
    )


async def _keys_list(store: Store, ident: str | None, out: TextIO) -> None:
    owner: User | None = await store.find_user(ident) if ident else None
    keys = await store.keys(owner.id if owner else None)
    names = {u.id: u.username for u in await store.list_users()}
    now = time.time()
    _table(
        out,
        ["ID", "USER", "NAME", "PREFIX", "CREATED", "LAST USED", "EXPIRES", "STATE"],
        [
            (
                k.id,
                names.get(k.user_id, "?"),
                k.name,
                k.prefix + "…",
                _when(k.created),
                _when(k.last_used),
                _when(k.expires),
                "revoked" if k.revoked else ("expired" if not k.usable(now) else "active"),
            )
            for k in keys
        ],
    )


async def _set_limits(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    user = await store.find_user(args.user)
    if args.reset:
        rpm = concurrency = daily = None
        models: Sequence[str] | None = None
    else:
        rpm = args.rpm if args.rpm is not None else user.rpm
        concurrency = args.concurrency if args.concurrency is not None else user.concurrency
        daily = args.daily_tokens if args.daily_tokens is not None else user.daily_tokens
        models = user.models
        if args.all_models:
            models = None
        elif args.models:
            models = [m.strip() for item in args.models for m in item.split(",") if m.strip()]
    for name, value in (("--rpm", rpm), ("--concurrency", concurrency), ("--daily-tokens", daily)):
        if value is not None and value < 0:
            raise AdminError(f"{name} must be 0 (unlimited) or more")
    await store.set_limits(
        user.id, rpm=rpm, concurrency=concurrency, daily_tokens=daily, models=models
    )
    out.write(
        f"limits of {user.username}: rpm {_limit(rpm)}, concurrency {_limit(concurrency)},"
        f" tokens/day {_limit(daily)}, models {','.join(models) if models is not None else 'all'}\n"
    )
    return user.id


def add_commands(commands: Any, store_options: Any) -> None:
    """The `users`, `keys`, `connectors` and `usage` sub-commands of `remotellm-broker`."""
    _add_users(commands, store_options)
    _add_keys(commands, store_options)
    _add_connectors(commands, store_options)
    usage = commands.add_parser("usage", help="requests and tokens, grouped")
    usage.set_defaults(action="report")
    usage.add_argument("--since", help="from this date (YYYY-MM-DD, UTC)")
    usage.add_argument("--by", choices=["user", "model", "connector", "day"], default="user")
    store_options(usage)


def _add_users(commands: Any, store_options: Any) -> None:
    users = commands.add_parser("users", help="list, create, block, promote users; set limits")
    user_actions = users.add_subparsers(dest="action", required=True)
    store_options(user_actions.add_parser("list", help="every user with status, role, limits"))
    create = user_actions.add_parser("create", help="a user who does not sign in with GitLab")
    create.add_argument("user", help="username")
    create.add_argument("--name", help="display name")
    create.add_argument("--admin", action="store_true", help="make them an admin")
    store_options(create)
    for action, what in (
        ("block", "block a user: their keys stop working"),
        ("unblock", "unblock a user"),
        ("promote", "make a user an admin"),
        ("demote", "make an admin a plain user"),
    ):
        sub = user_actions.add_parser(action, help=what)
        sub.add_argument("user", help="username or user id")
        store_options(sub)
    limits = user_actions.add_parser("set-limits", help="per-user limits and allowed models")
    limits.add_argument("user", help="username or user id")
    limits.add_argument("--rpm", type=int, help="requests per minute per key (0: unlimited)")
    limits.add_argument("--concurrency", type=int, help="requests at once per key (0: unlimited)")
    limits.add_argument(
        "--daily-tokens", type=int, help="tokens per key per UTC day (0: unlimited)"
    )
    limits.add_argument("--models", action="append", help="allowed models (repeatable or a,b)")
    limits.add_argument("--all-models", action="store_true", help="allow every model again")
    limits.add_argument("--reset", action="store_true", help="back to the broker's defaults")
    store_options(limits)


def _add_keys(commands: Any, store_options: Any) -> None:
    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    key_actions = keys.add_subparsers(dest="action", required=True)
    create_key = key_actions.add_parser("create", help="a new key for a user (printed once)")
    create_key.add_argument("--user", required=True, help="username or user id")
    create_key.add_argument("--name", default="admin-created", help="a name for the key")
    create_key.add_argument("--expires", help="expiry date (YYYY-MM-DD, UTC)")
    store_options(create_key)
    list_keys = key_actions.add_parser("list", help="keys (never the secret) of all or one user")
    list_keys.add_argument("--user", help="only this user's keys")
    store_options(list_keys)
    revoke = key_actions.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id", type=int, help="the key's id (from keys list)")
    store_options(revoke)


def _add_connectors(commands: Any, store_options: Any) -> None:
    connectors = commands.add_parser("connectors", help="create, list and revoke connector tokens")
    connector_actions = connectors.add_subparsers(dest="action", required=True)
    create_token = connector_actions.add_parser(
        "create", help="a new connector token (printed once)"
    )
    create_token.add_argument("name", help="a name for the connector")
    create_token.add_argument("--owner", help="username of the person running it")
    store_options(create_token)
    store_options(connector_actions.add_parser("list", help="connector tokens and last seen"))
    revoke_token = connector_actions.add_parser("revoke", help="revoke a connector token")
    revoke_token.add_argument("name", help="the connector's name (or token id)")
    store_options(revoke_token)
    add_access_parser(connector_actions, store_options)
