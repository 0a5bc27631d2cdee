"""The pairings table: connectors waiting to be paired by a person who signs in.

`Store.pairings` is the one `PairingBook` of a store. Codes are looked up by their SHA-256
(`broker.accounts.pairingcode`); the rules of a pairing are `broker.accounts.pairing`, applied
here inside each transaction, with conditional updates so two polls or two decisions at
once cannot both win. Rows past their expiry by a day are deleted when a new pairing starts.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from broker.accounts.pairing import (
    INTERVAL,
    LIFETIME,
    Pairing,
    PollAnswer,
    next_interval,
    pairing_from_row,
    poll_answer,
    why_undecidable,
)
from broker.accounts.schema import pairings

KEEP_FINISHED = 86400.0
"""Seconds a finished or expired pairing stays in the table (for the "already used" page)."""


class PairingBook:
    """Every query about pairings, on the store's engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def start(
        self, device_hash: str, code_hash: str, name: str, ip: str, now: float
    ) -> Pairing:
        """Record a new pending pairing (and forget the long-expired ones)."""
        async with self.engine.begin() as conn:
            await conn.execute(pairings.delete().where(pairings.c.expires < now - KEEP_FINISHED))
            result = await conn.execute(
                pairings.insert().values(
                    device_hash=device_hash,
                    code_hash=code_hash,
                    name=name,
                    ip=ip,
                    created=now,
                    expires=now + LIFETIME,
                    interval=INTERVAL,
                    state="pending",
                )
            )
            key = result.inserted_primary_key
            assert key is not None
            row = (await conn.execute(sa.select(pairings).where(pairings.c.id == key[0]))).one()
        return pairing_from_row(row)

    async def pending(self, now: float) -> int:
        """How many pairings wait for a person's decision now (pending, not expired)."""
        async with self.engine.connect() as conn:
            count = await conn.scalar(
                sa.select(sa.func.count())
                .select_from(pairings)
                .where(pairings.c.state == "pending", pairings.c.expires > now)
            )
        return int(count or 0)

    async def by_user_code(self, code_hash: str) -> Pairing | None:
        """The newest pairing with this user code, in whatever state."""
        query = (
            sa.select(pairings)
            .where(pairings.c.code_hash == code_hash)
            .order_by(pairings.c.id.desc())
            .limit(1)
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return pairing_from_row(row) if row is not None else None

    async def poll(self, device_hash: str, now: float) -> tuple[PollAnswer, Pairing] | None:
        """A connector's poll: the answer, and the pairing as it was; None for an unknown code.

        An `approved` answer means this poll, and no other, moved the pairing to `collected`:
        the caller makes the connector's token."""
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(sa.select(pairings).where(pairings.c.device_hash == device_hash))
            ).first()
            if row is None:
                return None
            pairing = pairing_from_row(row)
            answer = poll_answer(pairing, now)
            values: dict[str, object] = {
                "last_poll": now,
                "interval": next_interval(pairing, answer),
            }
            match = [pairings.c.id == pairing.id, pairings.c.state == pairing.state]
            if answer == "approved":
                values["state"] = "collected"
            result = await conn.execute(pairings.update().where(*match).values(**values))
            if answer == "approved" and result.rowcount != 1:
                answer = "expired_token"  # another poll took it first
        return answer, pairing

    async def decide(self, pairing: Pairing, user_id: int, approve: bool, now: float) -> bool:
        """Approve or deny `pairing`, as the consent page read it; False when it can no longer
        be decided (expired, or decided since it was read).

        The update is conditional on the state that was read: of two approvals of one code
        (two tabs, two people), the one whose update comes second changes no row and loses.
        """
        if why_undecidable(pairing, now) is not None:
            return False
        async with self.engine.begin() as conn:
            result = await conn.execute(
                pairings.update()
                .where(pairings.c.id == pairing.id, pairings.c.state == pairing.state)
                .values(state="approved" if approve else "denied", user_id=user_id)
            )
        return bool(result.rowcount)

    async def collected(self, pairing_id: int, token_id: int) -> None:
        """Remember which connector token a collected pairing made."""
        async with self.engine.begin() as conn:
            await conn.execute(
                pairings.update().where(pairings.c.id == pairing_id).values(token_id=token_id)
            )
