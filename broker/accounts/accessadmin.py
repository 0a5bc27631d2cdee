"""The admin command `connectors access NAME [--everyone | --groups G1,G2 | --users U1,U2 |
--owner-only]`: shows, or sets, who may use a connector (`broker.accounts.access`).

A running broker applies a rule set here within its five-second check of the connectors, or at
once in cluster mode when the command is given the cluster's Redis (`broker.accounts.admin`).
"""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from broker.accounts.access import AccessError, AccessRule, clean_groups
from broker.accounts.records import ConnectorToken, StoreError
from broker.accounts.store import Store


async def live_token(store: Store, ident: str) -> ConnectorToken:
    """The live connector token named `ident` (or with that id); StoreError when none is."""
    for token in await store.connector_tokens():
        if token.revoked is None and (token.name == ident or str(token.id) == ident):
            return token
    raise StoreError(f"no live connector named '{ident}' (connectors list shows them)")


async def describe(store: Store, rule: AccessRule) -> str:
    """Who `rule` admits, in words (usernames for user ids)."""
    if rule.mode == "everyone":
        return "everyone signed in on this broker"
    if rule.mode == "owner":
        return "only its owner"
    if rule.mode == "groups":
        return "its owner and members of the GitLab groups " + ", ".join(rule.groups)
    names = []
    for user_id in rule.users:
        user = await store.user(user_id)
        names.append(user.username if user is not None else f"#{user_id}")
    return "its owner and the users " + ", ".join(names)


async def rule_from(store: Store, args: argparse.Namespace) -> AccessRule | None:
    """The rule the options ask for; None when they ask for none (show the current one)."""
    if args.everyone:
        return AccessRule()
    if args.owner_only:
        return AccessRule("owner")
    if args.groups is not None:
        return AccessRule("groups", groups=clean_groups(args.groups.split(",")))
    if args.users is not None:
        ids: dict[int, None] = {}
        for ident in args.users.split(","):
            if ident.strip():
                ids.setdefault((await store.find_user(ident.strip())).id, None)
        return AccessRule("users", users=tuple(ids))
    return None


async def access_command(store: Store, args: argparse.Namespace, out: TextIO) -> int | None:
    """Print the connector's rule, after setting the one asked for (if any); the connector
    token's id when its rule changed."""
    token = await live_token(store, args.name)
    try:
        wanted = await rule_from(store, args)
    except AccessError as exc:
        raise StoreError(str(exc)) from exc
    if wanted is not None:
        await store.access.set_rule(token.id, wanted)
    rule = await store.access.rule(token.id)
    owner = await store.user(token.owner_id) if token.owner_id is not None else None
    owned = f"owner {owner.username}" if owner is not None else "no owner"
    verb = "now admits" if wanted is not None else "admits"
    out.write(f"connector '{token.name}' ({owned}) {verb} {await describe(store, rule)}\n")
    return token.id if wanted is not None else None


def add_access_parser(actions: Any, store_options: Any) -> None:
    """`connectors access`, under the `connectors` command's actions."""
    access = actions.add_parser(
        "access", help="show or set who may use a connector (no option: show it)"
    )
    access.add_argument("name", help="the connector's name (or token id)")
    rule = access.add_mutually_exclusive_group()
    rule.add_argument(
        "--everyone", action="store_true", help="everyone signed in on this broker (default)"
    )
    rule.add_argument("--groups", metavar="G1,G2", help="members of these GitLab groups")
    rule.add_argument("--users", metavar="U1,U2", help="these users (usernames or ids)")
    rule.add_argument("--owner-only", action="store_true", help="only the connector's owner")
    store_options(access)
