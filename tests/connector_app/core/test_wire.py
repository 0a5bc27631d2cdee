"""The connector's WebSocket client on real sockets: handshake, control frames, flow, TLS, proxy."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import WSMsgType, web

from connector_app.core.failures import describe_failure, is_fatal
from connector_app.core.proxy import ProxyError
from connector_app.core.wire import LinkClosed, Wire, open_wire
from shared import protocol as p
from shared import upgrade
from shared import websocket as ws
from shared.handshake import MAX_MESSAGE
from shared.outbox import Outbox
from tests.connector_app.core.wsserver import ConnectProxy, WsServer

TOKEN = "wire-test-token"


@contextlib.asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[WsServer]:
    server = WsServer(**options)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def linked(url: str, **options: Any) -> AsyncIterator[Wire]:
    wire = await open_wire(url, token=TOKEN, **options)
    try:
        yield wire
    finally:
        wire.abort()
        with contextlib.suppress(Exception):
            await wire.wait_closed()


async def test_handshake_carries_the_token_and_messages_flow_masked_both_ways() -> None:
    async with serving() as server, linked(server.url) as wire:
        (head,) = server.heads
        assert head.target == "/relay"
        assert head.headers["authorization"] == f"Bearer {TOKEN}"
        assert head.headers["user-agent"] == "remotellm-connector"
        assert head.headers["host"] == f"127.0.0.1:{server.port}"
        wire.send(b"hello")
        # The server's reader refuses unmasked frames: a message it read was masked.
        assert await server.next_event() == ws.Message(b"hello")
        server.send(ws.OP_BINARY, b"welcome")
        assert await wire.recv() == b"welcome"
        assert server.errors == []


async def test_messages_go_to_the_callback_in_order_once_one_is_named() -> None:
    async with serving() as server, linked(server.url) as wire:
        server.send(ws.OP_BINARY, b"first")
        server.send(ws.OP_BINARY, b"second")
        assert await wire.recv() == b"first"
        got: list[bytes] = []
        wire.deliver(got.append)  # "second" may already be waiting: it is delivered first
        server.send(ws.OP_BINARY, b"third")
        async with asyncio.timeout(10):
            while len(got) < 2:
                await asyncio.sleep(0.01)
        assert got == [b"second", b"third"]


async def test_a_refused_token_is_a_fatal_failure_that_says_so() -> None:
    async with serving(status=401) as server:
        with pytest.raises(upgrade.HandshakeError) as caught:
            await open_wire(server.url, token="wrong")
    assert caught.value.status == 401
    assert is_fatal(caught.value)
    message = describe_failure(caught.value)
    assert "rejected the connector token" in message
    assert "wrong" not in message


async def test_a_refusal_shows_the_brokers_own_words() -> None:
    body = b'{"error": {"message": "The broker cannot check\\n tokens right now.", "code": "x"}}'
    async with serving(status=503, body=body) as server:
        with pytest.raises(upgrade.HandshakeError) as caught:
            await open_wire(server.url, token=TOKEN)
    assert caught.value.status == 503 and not is_fatal(caught.value)
    assert describe_failure(caught.value) == (
        "the broker refused the connection with HTTP 503:"
        " The broker cannot check  tokens right now."
    )


async def test_a_refusal_without_a_json_body_shows_the_status() -> None:
    async with serving(status=502, body=b"<html>Bad gateway</html>") as server:
        with pytest.raises(upgrade.HandshakeError) as caught:
            await open_wire(server.url, token=TOKEN)
    assert describe_failure(caught.value) == "the broker refused the connection with HTTP 502"


async def test_a_wrong_accept_value_is_refused() -> None:
    async with serving(wrong_accept=True) as server:
        with pytest.raises(upgrade.HandshakeError) as caught:
            await open_wire(server.url, token=TOKEN)
    assert "Sec-WebSocket-Accept" in caught.value.reason
    assert not is_fatal(caught.value)
    assert "not a WebSocket upgrade" in describe_failure(caught.value)


async def test_a_server_that_never_answers_the_upgrade_times_out() -> None:
    async with serving(answer=False) as server:
        with pytest.raises(TimeoutError) as caught:
            await open_wire(server.url, token=TOKEN, timeout=0.3)
        assert len(server.heads) == 1
    assert describe_failure(caught.value) == "timed out talking to the broker"


async def test_nothing_listening_is_an_os_error() -> None:
    server = WsServer()
    await server.start()
    url = server.url
    await server.stop()
    with pytest.raises(OSError) as caught:
        await open_wire(url, token=TOKEN)
    assert describe_failure(caught.value).startswith("cannot reach the broker")


async def test_pings_are_answered_with_pongs() -> None:
    async with serving() as server, linked(server.url):
        server.send(ws.OP_PING, b"are you there")
        assert await server.next_event(ws.Pong) == ws.Pong(b"are you there")


async def test_a_link_that_goes_silent_is_dropped_by_the_heartbeat() -> None:
    # The server reads our pings but never answers: a half-open link, as far as we can tell.
    async with serving() as server, linked(server.url, heartbeat=0.1) as wire:
        with pytest.raises(LinkClosed) as caught:
            async with asyncio.timeout(10):
                await wire.wait_closed()
        assert isinstance(await server.next_event(ws.Ping), ws.Ping)
    assert caught.value.code is None
    assert not is_fatal(caught.value)
    assert describe_failure(caught.value).startswith("the connection to the broker was lost")


async def test_a_link_that_answers_pings_stays_up() -> None:
    async with serving() as server, linked(server.url, heartbeat=0.05) as wire:

        async def pong() -> None:
            while True:
                await server.next_event(ws.Ping)
                server.send(ws.OP_PONG)

        answering = asyncio.create_task(pong())
        await asyncio.sleep(1)  # twenty heartbeats
        answering.cancel()
        wire.send(b"still here")
        assert await server.next_event() == ws.Message(b"still here")


async def test_the_broker_closing_with_a_code_and_reason_is_surfaced() -> None:
    async with serving() as server, linked(server.url) as wire:
        server.send_close(4000, "maintenance")
        with pytest.raises(LinkClosed) as caught:
            await wire.wait_closed()
        # The close was answered with the broker's code.
        assert await server.next_event() == ws.Close(4000, "")
    assert (caught.value.code, caught.value.reason) == (4000, "maintenance")
    assert describe_failure(caught.value) == "the broker closed the connection (4000 maintenance)"
    assert not is_fatal(caught.value)


async def test_an_unsupported_version_close_is_fatal_with_the_brokers_reason() -> None:
    async with serving() as server, linked(server.url) as wire:
        server.send_close(p.CLOSE_UNSUPPORTED_VERSION, "this broker speaks version 3")
        with pytest.raises(LinkClosed) as caught:
            await wire.recv()
    assert is_fatal(caught.value)
    message = describe_failure(caught.value)
    assert message == "the broker refused this connector: this broker speaks version 3"


async def test_our_close_sends_what_is_queued_then_the_code_and_reason() -> None:
    outbox = Outbox()
    async with serving() as server, linked(server.url, outbox=outbox) as wire:
        outbox.put(p.GoAway("bye", 0.0))
        wire.flush_soon()
        closing = asyncio.create_task(wire.close(1001, "connector shutting down"))
        message = await server.next_event()
        assert isinstance(message, ws.Message)
        assert p.decode(message.data) == [p.GoAway("bye", 0.0)]
        assert await server.next_event() == ws.Close(1001, "connector shutting down")
        server.send_close(1001, "")
        async with asyncio.timeout(10):
            await closing
        await wire.wait_closed()  # we closed it: nothing to raise


async def test_our_close_gives_up_on_a_broker_that_never_answers_it() -> None:
    async with serving() as server, linked(server.url) as wire:
        async with asyncio.timeout(10):  # the wire waits 2 s for the answer, then drops
            await wire.close(1000, "done")
        assert await server.next_event() == ws.Close(1000, "done")
        await wire.wait_closed()


async def test_a_close_from_a_broker_that_stopped_reading_still_ends_the_link() -> None:
    async with serving() as server, linked(server.url) as wire:
        server.reading.clear()  # the broker reads nothing more
        for _ in range(64):  # 64 MiB: far more than the socket buffers on the way hold
            wire.send(bytes(1 << 20))
        await asyncio.sleep(0.1)
        server.send_close(1001, "going away")
        with pytest.raises(LinkClosed) as caught:
            async with asyncio.timeout(10):  # the answer cannot drain: dropped after 2 s
                await wire.wait_closed()
        assert caught.value.code == 1001


async def test_a_message_over_the_limit_closes_with_1009() -> None:
    async with serving() as server, linked(server.url) as wire:
        server.send(ws.OP_BINARY, bytes(MAX_MESSAGE + 1))
        with pytest.raises(ws.WebSocketError) as caught:
            await wire.recv()
        closing = await server.next_event()
    assert isinstance(closing, ws.Close)
    assert closing.code == caught.value.code == ws.CLOSE_TOO_BIG


async def test_a_framing_error_from_the_broker_closes_with_a_protocol_error() -> None:
    async with serving() as server, linked(server.url) as wire:
        assert server.writer is not None
        server.writer.write(ws.encode_frame(ws.OP_BINARY, b"masked", mask=True))
        with pytest.raises(ws.WebSocketError) as caught:
            await wire.recv()
        assert await server.next_event() == ws.Close(ws.CLOSE_PROTOCOL_ERROR, caught.value.reason)
    assert describe_failure(caught.value).startswith("protocol error")


async def test_a_message_sent_just_before_a_framing_error_still_arrives() -> None:
    async with serving() as server, linked(server.url) as wire:
        assert server.writer is not None
        server.writer.write(  # one write: both arrive in one read
            ws.encode_frame(ws.OP_BINARY, b"last words", mask=False)
            + ws.encode_frame(ws.OP_BINARY, b"masked", mask=True)
        )
        assert await wire.recv() == b"last words"
        with pytest.raises(ws.WebSocketError) as caught:
            await wire.recv()
        assert await server.next_event() == ws.Close(ws.CLOSE_PROTOCOL_ERROR, caught.value.reason)


async def test_messages_of_several_mebibytes_both_ways() -> None:
    size = 3 * 1024 * 1024 + 7
    up, down = os.urandom(size), os.urandom(size)
    async with serving() as server, linked(server.url) as wire:
        wire.send(up)
        server.send(ws.OP_BINARY, down)
        assert await wire.recv() == down
        assert await server.next_event() == ws.Message(up)


async def test_an_aiohttp_server_echoes_what_we_send() -> None:
    """Interoperability with another implementation, with a message of several MiB."""

    async def echo(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(max_msg_size=8 * 1024 * 1024)
        await socket.prepare(request)
        async for message in socket:
            if message.type is WSMsgType.BINARY:
                await socket.send_bytes(message.data)
        return socket

    app = web.Application()
    app.router.add_get("/relay", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        url = f"ws://127.0.0.1:{runner.addresses[0][1]}/relay"
        async with linked(url) as wire:
            big = os.urandom(3 * 1024 * 1024)
            wire.send(big)
            wire.send(b"small")
            assert await wire.recv() == big
            assert await wire.recv() == b"small"
            await wire.close()
    finally:
        await runner.cleanup()


async def test_a_server_that_stops_reading_pauses_the_flush_and_the_outbox_keeps_the_rest() -> None:
    outbox = Outbox()
    chunk = os.urandom(60_000)
    frames = 500  # 30 MB: more than the kernel's socket buffers hold on loopback
    async with serving() as server, linked(server.url, outbox=outbox) as wire:
        server.reading.clear()
        for _ in range(frames):
            outbox.put(p.ResponseBody(1, chunk))
        total = len(outbox)
        wire.flush_soon()
        async with asyncio.timeout(10):
            while not wire.writing_paused:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # the flush stays stopped while the server does not read
        assert wire.writing_paused
        assert 0 < len(outbox) < total
        server.reading.set()
        async with asyncio.timeout(20):
            while outbox or server.received_bytes < total:
                await asyncio.sleep(0.01)
        assert server.received_bytes == total
        assert not wire.writing_paused


@pytest.fixture
def private_ca(tmp_path: Path) -> tuple[trustme.CA, ssl.SSLContext]:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
    return ca, server_context


async def test_tls_with_a_private_ca(private_ca: tuple[trustme.CA, ssl.SSLContext]) -> None:
    ca, server_context = private_ca
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    async with serving(context=server_context) as server:
        async with linked(server.url, ssl_context=trust) as wire:
            wire.send(b"over tls")
            assert await server.next_event() == ws.Message(b"over tls")
        # The host name is checked too: "localhost" is on the certificate.
        async with linked(f"wss://localhost:{server.port}/relay", ssl_context=trust) as wire:
            wire.send(b"by name")
            assert await server.next_event() == ws.Message(b"by name")
        # Without the CA (system trust only), the certificate is refused, for good.
        with pytest.raises(ssl.SSLError) as caught:
            await open_wire(server.url, token=TOKEN)
    assert is_fatal(caught.value)
    assert describe_failure(caught.value).startswith("TLS handshake with the broker failed")


@pytest.fixture
async def proxy() -> AsyncIterator[ConnectProxy]:
    server = ConnectProxy()
    await server.start()
    yield server
    await server.stop()


async def test_ws_through_an_http_proxy_from_the_environment(
    proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", proxy.url)
    async with serving() as server, linked(server.url) as wire:
        wire.send(b"via the proxy")
        assert await server.next_event() == ws.Message(b"via the proxy")
    (request,) = proxy.requests
    assert request.startswith(f"CONNECT 127.0.0.1:{server.port} HTTP/1.1\r\n")
    assert TOKEN not in request  # the broker's token is for the broker, inside the tunnel


async def test_wss_through_an_http_proxy_with_credentials(
    proxy: ConnectProxy,
    private_ca: tuple[trustme.CA, ssl.SSLContext],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ca, server_context = private_ca
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    monkeypatch.setenv("https_proxy", proxy.url.replace("http://", "http://user:secret@"))
    async with (
        serving(context=server_context) as server,
        linked(server.url, ssl_context=trust) as wire,
    ):
        wire.send(b"tls inside the tunnel")
        assert await server.next_event() == ws.Message(b"tls inside the tunnel")
    (request,) = proxy.requests
    assert "Proxy-Authorization: Basic dXNlcjpzZWNyZXQ=\r\n" in request


async def test_no_proxy_goes_direct(proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", proxy.url)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    async with serving() as server, linked(server.url) as wire:
        wire.send(b"direct")
        assert await server.next_event() == ws.Message(b"direct")
    assert proxy.requests == []


async def test_a_proxy_that_refuses_the_tunnel_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    refusing = ConnectProxy(status=407)
    await refusing.start()
    try:
        monkeypatch.setenv("http_proxy", refusing.url)
        with pytest.raises(ProxyError) as caught:
            await open_wire("ws://127.0.0.1:9/relay", token=TOKEN)
    finally:
        await refusing.stop()
    assert is_fatal(caught.value)
    assert "requires authentication (HTTP 407)" in describe_failure(caught.value)


async def test_a_socks_proxy_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("https_proxy", "socks5h://127.0.0.1:1080")
    with pytest.raises(ProxyError) as caught:
        await open_wire("wss://127.0.0.1:9/relay", token=TOKEN)
    assert is_fatal(caught.value)
    assert "NO_PROXY" in describe_failure(caught.value)
