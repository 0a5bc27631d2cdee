"""An admitted request, as its stream's drivers carry it: who asked, for what, and the slot."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from broker.accounts.limits import Lease
from broker.accounts.principals import Principal


@dataclass(slots=True)
class Ticket:
    """What admission (`broker.api.admission`) hands the stream's drivers."""

    principal: Principal
    body: bytes
    model: str
    lease: Lease
    """The key's slot, given back (with the tokens to charge) when the request is counted."""
    forwarded: bool = False
    """Another broker of the cluster admitted it and forwarded it here: that broker counts
    it against the key and writes its usage row."""

    @property
    def user(self) -> Hashable:
        """Who the request is for, as the hub shares busy connectors (`user_of`)."""
        return user_of(self.principal)


def user_of(principal: Principal) -> Hashable:
    """Whose turn a request takes when connectors are busy: its key's owner, else the key.

    Two keys of one person share one turn, so a second key does not buy a second place.
    """
    # A user id is an int and a key's bucket a str: the two never compare equal.
    return principal.user_id if principal.user_id is not None else principal.bucket
