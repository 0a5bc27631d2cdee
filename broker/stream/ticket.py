"""An admitted request, as its stream's drivers carry it: who asked, for what, and the slot."""

from __future__ import annotations

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
