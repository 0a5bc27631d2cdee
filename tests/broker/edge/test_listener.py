"""One port for everything: the front gives `GET /relay` to the lean link, the rest to aiohttp."""

from __future__ import annotations

import asyncio
import re
import select
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from broker.server import BrokerServer
from shared import protocol as p
from shared import upgrade
from shared import websocket as ws
from tests.conftest import MakeBroker, broker_settings
from tests.raw_connector import (
    RawConnector,
    http_exchange,
    json_body,
    parse_response,
    upgrade_request,
)
from tests.tlsca import write_private_ca

HINT = "This endpoint takes a WebSocket upgrade from a RemoteLLM connector"


async def test_health_and_a_portal_page_share_the_port_with_the_relay(
    make_broker: MakeBroker,
) -> None:
    broker = await make_broker()
    raw = await RawConnector.attach(broker.port)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{broker.base_url}/health") as resp:
                assert resp.status == 200
                assert (await resp.json())["connectors"] == 1
            async with session.get(f"{broker.base_url}/") as resp:
                assert resp.status == 200
                assert resp.content_type == "text/html"
    finally:
        raw.close()


async def test_keep_alive_requests_on_one_connection_all_get_answers(
    make_broker: MakeBroker,
) -> None:
    broker = await make_broker()
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    try:
        statuses = []
        # The last one: a browser's GET /relay on a connection aiohttp already serves.
        for path in ("/health", "/metrics", "/health", "/relay"):
            writer.write(f"GET {path} HTTP/1.1\r\nHost: b\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            status, headers, _ = parse_response(head)
            body = await reader.readexactly(int(headers["content-length"]))
            statuses.append(status)
        assert statuses == [200, 200, 200, 426]
        assert json_body(headers, body)["error"]["code"] == "upgrade_required"
    finally:
        writer.close()


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_an_upgrade_on_a_connection_already_used_becomes_a_relay_link(
    tmp_path: Path, make_broker: MakeBroker, tls: bool
) -> None:
    """A proxy may send the upgrade over a pooled connection it used for other requests."""
    context = None
    if tls:
        ca_file, chain = write_private_ca(tmp_path)
        broker = await make_broker(tls_cert=chain, tls_key=chain)
        context = ssl.create_default_context(cafile=str(ca_file))
    else:
        broker = await make_broker()
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port, ssl=context)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: b\r\n\r\n")
        status, headers, _ = parse_response(await reader.readuntil(b"\r\n\r\n"))
        await reader.readexactly(int(headers["content-length"]))
        assert status == 200
        request, key = upgrade_request(broker.port)
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        upgrade.check_response(head[:-4], key)
        raw = RawConnector(reader, writer)
        raw.send(p.encode(p.Hello(p.PROTOCOL_VERSION, "pooled", ("raw-model",), 4)))
        welcome = await raw.next_event()
        assert isinstance(welcome, ws.Message)
        assert isinstance(p.decode(welcome.data)[0], p.Welcome)
        assert [link.name for link in broker.hub.links] == ["pooled"]
        # The link works like any other: a ping is answered.
        raw.send(b"are you there", ws.OP_PING)
        assert await raw.next_event() == ws.Pong(b"are you there")
        raw.send((1000).to_bytes(2, "big") + b"done", ws.OP_CLOSE)
        await raw.next_close()
        assert await raw.at_eof()
    finally:
        writer.close()
    server = broker._runner.server
    assert server is not None
    async with asyncio.timeout(10):
        while broker.hub.links or server.connections:
            await asyncio.sleep(0.01)  # aiohttp forgot the connection it no longer owns


async def test_a_request_line_arriving_byte_by_byte_is_served(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    try:
        for byte in b"GET /health HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n":
            writer.write(bytes((byte,)))
            await writer.drain()
        status, _, _ = parse_response(await asyncio.wait_for(reader.read(), 10))
        assert status == 200
    finally:
        writer.close()


async def test_pipelined_requests_are_answered_in_order(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    requests = (
        b"GET /health HTTP/1.1\r\nHost: b\r\n\r\n"
        b"GET /nothing-here HTTP/1.1\r\nHost: b\r\n\r\n"
        b"GET /health HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    try:
        writer.write(requests)
        everything = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", everything) == [b"200", b"404", b"200"]


async def test_a_plain_get_of_relay_gets_426_in_json(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    async with aiohttp.ClientSession() as session, session.get(f"{broker.base_url}/relay") as r:
        assert r.status == 426
        body = await r.json()
    assert body["error"]["code"] == "upgrade_required"
    assert body["error"]["message"].startswith(HINT)


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"Connection": "keep-alive"}, 400, "invalid_upgrade"),
        ({"Sec-WebSocket-Version": "8"}, 426, "upgrade_required"),
        ({"Sec-WebSocket-Key": "too-short"}, 400, "invalid_upgrade"),
        ({"Upgrade": "h2c"}, 426, "upgrade_required"),
    ],
    ids=["no-connection-upgrade", "old-version", "bad-key", "not-websocket"],
)
async def test_a_bad_upgrade_gets_a_clear_status_and_json(
    make_broker: MakeBroker, change: dict[str, str], status: int, code: str
) -> None:
    broker = await make_broker()
    request, _ = upgrade_request(broker.port)
    head = upgrade.parse_request_head(request[:-4])
    headers = {**head.headers, **{k.lower(): v for k, v in change.items()}}
    lines = ["GET /relay HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    got, response_headers, rest = await http_exchange(
        broker.port, ("\r\n".join(lines) + "\r\n\r\n").encode()
    )
    assert got == status
    error = json_body(response_headers, rest)["error"]
    assert error["code"] == code
    assert error["message"].startswith(HINT)
    assert broker.hub.links == []


async def test_an_upgrade_over_http_1_0_is_refused(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    request, _ = upgrade_request(broker.port)
    status, _, _ = await http_exchange(broker.port, request.replace(b"HTTP/1.1", b"HTTP/1.0", 1))
    assert status == 400


async def test_a_huge_upgrade_head_gets_431(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    request, _ = upgrade_request(broker.port, **{"X-Filler": "x" * 20_000})
    status, headers, rest = await http_exchange(broker.port, request)
    assert status == 431
    assert json_body(headers, rest)["error"]["code"] == "request_head_too_large"


async def test_a_wrong_token_gets_401_with_the_json_error(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    request, _ = upgrade_request(broker.port, token="wrong-token")
    status, headers, rest = await http_exchange(broker.port, request)
    assert status == 401
    assert headers["x-should-retry"] == "false"
    assert json_body(headers, rest) == {
        "error": {
            "message": "The connector token is missing or invalid.",
            "type": "authentication_error",
            "param": None,
            "code": "invalid_connector_token",
        }
    }


@pytest.fixture
async def impatient_broker() -> AsyncIterator[BrokerServer]:
    """A broker whose front waits only briefly for a first request line."""
    server = BrokerServer(broker_settings(head_timeout=0.2))
    await server.start()
    yield server
    await server.stop()


async def test_a_connection_that_never_sends_a_line_is_closed(
    impatient_broker: BrokerServer,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", impatient_broker.port)
    try:
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()


async def test_a_first_line_without_an_end_is_cut_off(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    try:
        writer.write(b"GET /relay?" + b"a" * 10_000)
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()


async def test_stopping_closes_connections_still_opening(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    silent_r, silent_w = await asyncio.open_connection("127.0.0.1", broker.port)
    raw = await RawConnector.upgrade(broker.port)  # upgraded, no hello yet
    plain_r, plain_w = await asyncio.open_connection("127.0.0.1", broker.port)
    plain_w.write(b"GET /health HTTP/1.1\r\nHost: b\r\n\r\n")
    await asyncio.wait_for(plain_r.readuntil(b"\r\n\r\n"), 10)
    try:
        await asyncio.wait_for(broker.stop(), 10)
        assert await asyncio.wait_for(silent_r.read(), 10) == b""
        assert await raw.at_eof()
        await asyncio.wait_for(plain_r.read(), 10)
        assert plain_r.at_eof()
    finally:
        for writer in (silent_w, plain_w):
            writer.close()
        raw.close()


async def test_relay_and_https_share_a_tls_port(tmp_path: Path, make_broker: MakeBroker) -> None:
    ca_file, chain = write_private_ca(tmp_path)
    broker = await make_broker(tls_cert=chain, tls_key=chain)
    trust = ssl.create_default_context(cafile=str(ca_file))
    raw = await RawConnector.attach(broker.port, context=trust)
    try:
        assert [link.name for link in broker.hub.links] == ["raw"]
        raw.send(b"are you there", ws.OP_PING)
        assert await raw.next_event() == ws.Pong(b"are you there")
        status, headers, rest = await http_exchange(
            broker.port, b"GET /health HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n", trust
        )
        assert status == 200 and json_body(headers, rest)["connectors"] == 1
        raw.send_raw(ws.encode_close(1000, "done", mask=True))
        assert await raw.next_close() == ws.Close(1000, "")
        assert await raw.at_eof()
    finally:
        raw.close()
    async with asyncio.timeout(10):
        while broker.hub.links:
            await asyncio.sleep(0.01)


async def test_a_frame_sent_with_the_upgrade_is_not_lost(make_broker: MakeBroker) -> None:
    """A client may pipeline its hello behind the upgrade request; it must still count."""
    broker = await make_broker()
    request, key = upgrade_request(broker.port)
    hello = p.encode(p.Hello(p.PROTOCOL_VERSION, "eager", ("m",), 1))
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    raw = RawConnector(reader, writer)
    try:
        writer.write(request + ws.encode_frame(ws.OP_BINARY, hello, mask=True))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        upgrade.check_response(head[:-4], key)
        welcome = await raw.next_event()
        assert isinstance(welcome, ws.Message)
        assert isinstance(p.decode(welcome.data)[0], p.Welcome)
    finally:
        raw.close()


async def test_a_burst_of_connections_is_queued_by_the_kernel_not_dropped(
    make_broker: MakeBroker,
) -> None:
    broker = await make_broker()
    burst = 300  # more than aiohttp's default backlog of 128
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(burst)]
    try:
        for sock in sockets:
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", broker.port))
        # The event loop runs nothing meanwhile, so the broker accepts none of them: only
        # the kernel's accept queue (the listen backlog) can complete their handshakes.
        deadline = time.monotonic() + 5
        connected: set[socket.socket] = set()
        while len(connected) < burst and time.monotonic() < deadline:
            _, writable, _ = select.select([], [s for s in sockets if s not in connected], [], 0.1)
            connected.update(
                s for s in writable if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
            )
            if not writable:
                break  # the rest wait for a SYN retransmit: dropped
        assert len(connected) == burst
    finally:
        for sock in sockets:
            sock.close()
