"""Who may use a connector: the rule its owner chose, as a plain value, and its check.

A connector (its token in the store) admits everyone signed in on this broker (the default),
the members of chosen GitLab groups, listed users, or only its owner. The owner is always
admitted, whatever the rule. Keys from the broker's settings have no user: only `everyone`
admits them. The rules are stored by `broker.accounts.accessbook`; the relay turns them into
the set of user ids each connected connector admits (`broker.relay.gates`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Final, Literal, get_args

Mode = Literal["everyone", "groups", "users", "owner"]
MODES: Final[tuple[Mode, ...]] = get_args(Mode)

MAX_MEMBERS: Final = 200
"""Most groups or users one rule may list."""

MAX_GROUP_PATH: Final = 255
"""Longest group path a rule keeps (as GitLab's own limit on a full path)."""


class AccessError(ValueError):
    """A rule that cannot be kept as asked (an unknown mode, an empty list)."""


@dataclass(frozen=True, slots=True)
class AccessRule:
    """Who a connector admits besides its owner."""

    mode: Mode = "everyone"
    groups: tuple[str, ...] = ()
    """GitLab group paths (`my-org/llm-users`), for `groups`."""
    users: tuple[int, ...] = ()
    """User ids, for `users`."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise AccessError(f"unknown access mode '{self.mode}'; use one of {', '.join(MODES)}")
        if self.mode == "groups" and not self.groups:
            raise AccessError("a groups rule needs at least one group")
        if self.mode == "users" and not self.users:
            raise AccessError("a users rule needs at least one user")
        if len(self.groups) > MAX_MEMBERS or len(self.users) > MAX_MEMBERS:
            raise AccessError(f"a rule lists at most {MAX_MEMBERS} groups or users")
        if any(len(group) > MAX_GROUP_PATH for group in self.groups):
            raise AccessError(f"a group path is at most {MAX_GROUP_PATH} characters")

    def admits(self, user_id: int | None, owner_id: int | None, groups: Collection[str]) -> bool:
        """Whether the user `user_id` (None: a key from the settings), member of `groups`,
        may use a connector owned by `owner_id` under this rule."""
        if self.mode == "everyone":
            return True
        if user_id is None:
            return False
        if user_id == owner_id:
            return True
        if self.mode == "users":
            return user_id in self.users
        if self.mode == "groups":
            return any(group_matches(group, self.groups) for group in groups)
        return False


EVERYONE: Final = AccessRule()


def group_matches(member_of: str, wanted: Iterable[str]) -> bool:
    """Whether membership of `member_of` counts for one of the `wanted` groups: that group,
    or a parent of it (GitLab's members of a group are members of its subgroups too),
    compared without case."""
    member_of = member_of.lower()
    for group in wanted:
        group = group.lower()
        if group == member_of or group.startswith(member_of + "/"):
            return True
    return False


def clean_groups(text: Iterable[str]) -> tuple[str, ...]:
    """Group paths as typed (`my-org/llm-users`, spaces and slashes around them dropped),
    without duplicates, in their order."""
    seen: dict[str, None] = {}
    for group in text:
        group = group.strip().strip("/")
        if group:
            seen.setdefault(group, None)
    return tuple(seen)
