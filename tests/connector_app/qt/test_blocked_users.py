"""The tray enforces the union of the users its settings block and those
REMOTELLM_CONNECTOR_BLOCKED_USERS names, before and after a right-click block."""

from __future__ import annotations

import pytest

from connector_app.core.profile import ProfileStore
from tests.connector_app.qt.conftest import (
    QLoop,
    complete_profile,
    live_services,
    make_bridge,
    until,
)
from tests.e2e.test_owner_controls import chat, user_key


def test_users_blocked_by_the_environment_stay_blocked_beside_the_saved_ones(
    store: ProfileStore, qloop: QLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        async with live_services() as (stub, broker):
            alice, alice_key = await user_key(broker, "alice")
            bob, bob_key = await user_key(broker, "bob")
            carol, carol_key = await user_key(broker, "carol")
            monkeypatch.setenv("REMOTELLM_CONNECTOR_BLOCKED_USERS", bob)
            profile = complete_profile(broker.port, stub.url)
            profile.values["blocked_users"] = [alice]
            bridge = make_bridge(store, profile)
            assert bridge.blocked_users == {alice, bob}
            assert bridge.start()
            try:
                await until(lambda: bridge.status.models == ("stub-model",))
                await until(lambda: bool(broker.hub.models()))
                for key in (alice_key, bob_key):
                    status, answer = await chat(broker, key)
                    assert status == 403, answer
                assert (await chat(broker, carol_key))[0] == 200

                bridge.set_user_blocked(carol, True)  # must not drop the environment's bob
                for key in (alice_key, bob_key, carol_key):
                    assert (await chat(broker, key))[0] == 403
                await until(lambda: not bridge._background)
                # Only what the person chose is saved; the environment's user is not.
                assert store.load().values["blocked_users"] == sorted([alice, carol])
            finally:
                await bridge.shutdown(1.0)

    qloop.run(scenario())
