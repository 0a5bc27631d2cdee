"""The task driver (`broker.stream.trip`) on what only it meets: links that close under it."""

from __future__ import annotations

import json

from broker.relay.link import ConnectorLink
from tests.broker.relay.test_misbehaving_connectors import FakeConnector, fakes
from tests.broker.stream.test_callbacktrip import attach
from tests.conftest import MakeBroker
from tests.e2e.test_relay import CHAT, post

__all__ = ["fakes"]  # a fixture, used by name


async def test_a_link_the_hub_still_lists_after_it_closed_is_retried_not_a_bug(
    make_broker: MakeBroker, fakes: list[FakeConnector]
) -> None:
    broker = await make_broker(connector_wait=0)
    await attach(broker, fakes)
    (link,) = broker.hub.links
    assert isinstance(link, ConnectorLink)
    # The socket has closed, and the hub lists the link a moment longer (`ConnectorLink.gone`):
    # opening a stream on it fails, before anything reached the client.
    link._closed = True
    try:
        status, _, body = await post(f"{broker.base_url}/v1/chat/completions", CHAT)
    finally:
        link._closed = False  # the fake's own close ends the link as usual
    # Retried on another connector (there is none): the 503 of a model whose connector is
    # away, not the 500 of a bug.
    assert status == 503
    assert json.loads(body)["error"]["code"] == "no_connector_available"
