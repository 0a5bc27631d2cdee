"""The broker's dependencies: one object from the app factory, its store's parts set at start."""

from __future__ import annotations

import aiohttp
import pytest

from broker.app import create_app
from broker.services import SERVICES, NotStarted
from tests.conftest import USER_KEY, MakeBroker, broker_settings

OPENED_AT_START = ("store", "accounts", "limiter", "ledger", "store_probe")


def test_the_app_factory_builds_every_dependency_and_the_store_waits_for_start() -> None:
    settings = broker_settings()
    services = create_app(settings)[SERVICES]
    assert services.settings is settings
    assert services.relay.hub is services.hub  # the relay registers links where routing looks
    assert services.relay.links == set()
    assert not services.started
    for part in OPENED_AT_START:
        with pytest.raises(NotStarted, match="opened when its app starts; it has not started"):
            getattr(services, part)


async def test_start_up_opens_the_store_and_its_parts_for_the_request_path(
    make_broker: MakeBroker,
) -> None:
    broker = await make_broker()
    services = broker.services
    assert services.started
    assert await services.store_probe.answers()
    user = await services.store.create_user("kim")
    raw, _ = await services.store.create_key(user.id, "laptop")
    async with aiohttp.ClientSession() as session:
        for key in (USER_KEY, raw):  # a key from the settings, and one only the store knows
            headers = {"Authorization": f"Bearer {key}"}
            async with session.get(f"{broker.base_url}/v1/models", headers=headers) as resp:
                assert resp.status == 200
