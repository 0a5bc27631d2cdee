"""One connector pairing and its rules: what a poll gets, and when a person may still decide.

A pairing is `pending` until the person who signed in approves or denies it; an approved one
becomes `collected` when the connector's next poll takes its token, so each pairing yields
at most one token. Past `expires` nothing is given out, whatever the state. Plain values and
pure functions: the store (`broker.accounts.pairings`) applies them in its transactions,
and the time is always passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

State = Literal["pending", "approved", "denied", "collected"]
PollAnswer = Literal[
    "authorization_pending", "slow_down", "expired_token", "access_denied", "approved"
]

INTERVAL: Final = 5
"""Seconds a connector waits between polls, as RFC 8628 suggests."""
SLOW_DOWN_STEP: Final = 5
"""Seconds added to the interval of a connector that polled too soon (RFC 8628 section 3.5)."""
LIFETIME: Final = 900
"""Seconds a pairing may wait for its approval."""


@dataclass(frozen=True)
class Pairing:
    """A connector's request to be paired, as the store holds it."""

    id: int
    name: str
    ip: str
    created: float
    expires: float
    interval: int
    state: str
    last_poll: float | None = None
    user_id: int | None = None
    token_id: int | None = None

    def expired(self, now: float) -> bool:
        return now >= self.expires


def poll_answer(pairing: Pairing, now: float) -> PollAnswer:
    """What a connector's poll gets now (the store then records the poll's time)."""
    if pairing.state == "collected" or pairing.expired(now):
        return "expired_token"
    if pairing.state == "denied":
        return "access_denied"
    if pairing.state == "approved":
        return "approved"
    if pairing.last_poll is not None and now - pairing.last_poll < pairing.interval:
        return "slow_down"
    return "authorization_pending"


def next_interval(pairing: Pairing, answer: PollAnswer) -> int:
    """The interval after this answer: it grows by 5 s with each `slow_down`."""
    return pairing.interval + SLOW_DOWN_STEP if answer == "slow_down" else pairing.interval


Undecidable = Literal["expired", "decided"]


def why_undecidable(pairing: Pairing, now: float) -> Undecidable | None:
    """None while a person may still approve or deny this pairing, else why not."""
    if pairing.state != "pending":
        return "decided"
    if pairing.expired(now):
        return "expired"
    return None


def pairing_from_row(row: Any) -> Pairing:
    return Pairing(
        id=row.id,
        name=row.name,
        ip=row.ip,
        created=row.created,
        expires=row.expires,
        interval=row.interval,
        state=row.state,
        last_poll=row.last_poll,
        user_id=row.user_id,
        token_id=row.token_id,
    )
