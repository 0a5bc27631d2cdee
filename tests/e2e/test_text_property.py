"""Arbitrary strings and bytes through the broker's edges, on one running broker and connector.

Generated request bodies (any `model`, any other fields, bodies that are not JSON objects),
header values (any bytes, over a raw socket, on both lanes) and model names a local server
lists (any text). After each, the shared state must still serve everyone: no 500, the
ledger writes a normal request's usage row, `/health` and `/metrics` answer 200, and no
request is left in flight or stream on the link.

One broker, connector and stub LLM serve every example (the `rig` is made outside the
`@given` functions, on a loop of its own that each example runs), so the property stays
within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.relay.link import ConnectorLink
from broker.server import BrokerServer
from connector_app.core.backoff import Backoff
from connector_app.core.connector import Connector
from connector_app.core.status import LinkState
from shared.text import is_clean
from tests.conftest import USER_KEY, broker_settings, connector_settings, wait_models
from tests.raw_connector import http_exchange
from tests.stub_llm import StubLLM

T = TypeVar("T")

PROPERTY = settings(
    max_examples=40,
    deadline=None,
    database=None,  # nothing written to the checkout
    suppress_health_check=[HealthCheck.too_slow],
)

# Any code point, surrogates and control characters included, with the troublemakers often.
ODD_CHAR = st.one_of(
    st.characters(exclude_categories=()),
    st.sampled_from("\udcff\ud800\udc80\x00\x07\x1b\n\r\t\x7f\u2028\u200b\ufeffé☕"),
)
ODD_TEXT = st.text(ODD_CHAR, max_size=20)
LONG_TEXT = st.text(ODD_CHAR, min_size=250, max_size=270)  # about the longest name allowed
JSON_LEAF = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ODD_TEXT
JSON_VALUE = st.recursive(
    JSON_LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ODD_TEXT, inner, max_size=3),
    max_leaves=6,
)
MODEL = st.just("stub-model") | ODD_TEXT | LONG_TEXT | JSON_VALUE
OTHER_FIELDS = st.dictionaries(
    ODD_TEXT.filter(lambda key: key not in ("model", "x_stub")), JSON_VALUE, max_size=3
)
ODD_HEADER_NAMES = ("X-Odd", "Authorization", "Content-Type", "X-Request-ID", "User-Agent")


@dataclass(repr=False)  # hypothesis shows the arguments of a failing example
class Rig:
    """A stub LLM, a broker and a connector, on a loop that each example runs."""

    loop: asyncio.AbstractEventLoop
    stub: StubLLM = field(default_factory=StubLLM)
    broker: BrokerServer | None = None
    connector: Connector | None = None
    task: asyncio.Task[None] | None = None
    ids: Iterator[int] = field(default_factory=itertools.count)

    def __repr__(self) -> str:
        return "Rig()"

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        self.stub.seen.clear()
        return self.loop.run_until_complete(asyncio.wait_for(work, 60))

    async def start(self) -> None:
        await self.stub.start()
        # No wait for a model nobody serves: most generated models are unknown.
        self.broker = BrokerServer(broker_settings(connector_wait=0.01, queue_timeout=0.01))
        await self.broker.start()
        settings = connector_settings(self.broker.port, self.stub.url)
        self.connector = Connector(settings, backoff=Backoff(base=0.05, cap=0.2))
        self.task = asyncio.create_task(self.connector.run())
        await wait_models(self.broker, {"stub-model"})

    async def stop(self) -> None:
        if self.connector is not None and self.task is not None:
            await self.connector.stop(1.0)
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.broker is not None:
            await self.broker.stop()
        await self.stub.stop()

    @property
    def server(self) -> BrokerServer:
        assert self.broker is not None
        return self.broker

    async def post(self, body: bytes, *extra: bytes, chunked: bool = False) -> int:
        """POST raw bytes to the chat endpoint; the status (the connection closes after)."""
        lines = [
            b"POST /v1/chat/completions HTTP/1.1",
            b"Host: broker",
            f"Authorization: Bearer {USER_KEY}".encode(),
            b"Connection: close",
            *extra,
        ]
        if chunked:  # a head the express lane leaves to aiohttp
            lines.append(b"Transfer-Encoding: chunked")
            body = b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
        else:
            lines.append(b"Content-Length: %d" % len(body))
        status, _, _ = await http_exchange(
            self.server.port, b"\r\n".join(lines) + b"\r\n\r\n" + body
        )
        return status

    async def still_serves_everyone(self) -> None:
        """The invariants: usage is written, the status pages answer, nothing is left over."""
        request_id = f"normal-{next(self.ids)}"
        normal = json.dumps({"model": "stub-model", "messages": []}).encode()
        assert await self.post(normal, f"X-Request-ID: {request_id}".encode()) == 200
        services = self.server.services
        await services.ledger.flush()
        rows = await services.store.usage.rows()
        assert request_id in {row.request_id for row in rows}
        async with aiohttp.ClientSession() as session:
            for path in ("/health", "/metrics"):
                async with session.get(f"{self.server.base_url}{path}") as resp:
                    assert resp.status == 200, path
                    if path == "/health":
                        assert (await resp.json())["in_flight"] == 0
        links = [link for link in self.server.hub.links if isinstance(link, ConnectorLink)]
        assert [link.open_streams for link in links] == [0]


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    loop = asyncio.new_event_loop()
    made = Rig(loop)
    try:
        loop.run_until_complete(made.start())
        yield made
    finally:
        loop.run_until_complete(made.stop())
        loop.close()


@PROPERTY
@given(
    body=st.one_of(
        st.builds(lambda model, other: {**other, "model": model}, MODEL, OTHER_FIELDS),
        JSON_VALUE,
        st.binary(max_size=200),
    ),
    chunked=st.booleans(),
)
def test_any_body_is_answered_without_a_500_and_leaves_the_broker_serving(
    rig: Rig, body: Any, chunked: bool
) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()  # \udcXX escapes

    async def example() -> None:
        status = await rig.post(data, chunked=chunked)
        assert status != 500
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(body, bytes) and not (isinstance(model, str) and is_clean(model)):
            assert status == 400  # refused before routing: no clean model to route by
        else:
            assert status in (200, 400, 404)  # served, or a model nobody serves
        await rig.still_serves_everyone()

    rig.run(example())


@PROPERTY
@given(
    name=st.sampled_from(ODD_HEADER_NAMES),
    value=st.binary(max_size=60) | st.sampled_from([b"caf\xe9", b"\xff" * 40, b"a\x00b", b"\t"]),
    chunked=st.booleans(),
)
def test_any_header_value_is_answered_without_a_500_and_leaves_the_broker_serving(
    rig: Rig, name: str, value: bytes, chunked: bool
) -> None:
    body = json.dumps({"model": "stub-model", "messages": []}).encode()

    async def example() -> None:
        status = await rig.post(body, name.encode() + b": " + value, chunked=chunked)
        assert status != 500
        await rig.still_serves_everyone()

    rig.run(example())


@PROPERTY
@given(names=st.lists(ODD_TEXT | LONG_TEXT, max_size=5))
def test_any_model_name_a_local_server_lists_leaves_the_rest_served(
    rig: Rig, names: list[str]
) -> None:
    async def example() -> None:
        connector = rig.connector
        assert connector is not None
        rig.stub.models = ["stub-model", *names]
        await connector.refresh_models()
        expected = {"stub-model"} | {name for name in names if is_clean(name)}
        await wait_models(rig.server, expected)
        assert connector.status.state is LinkState.CONNECTED
        await rig.still_serves_everyone()

    rig.run(example())
