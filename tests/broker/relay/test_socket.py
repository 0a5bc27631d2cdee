"""The relay link's server side, frame by frame: pings, heartbeat, closing, backpressure."""

from __future__ import annotations

import asyncio
import re
import struct

import aiohttp
import pytest

from broker.relay.link import ConnectorLink
from broker.server import BrokerServer
from shared import protocol as p
from shared import upgrade
from shared import websocket as ws
from tests.conftest import USER_KEY, MakeBroker
from tests.raw_connector import RawConnector, upgrade_request


async def wait_no_links(broker: BrokerServer) -> None:
    async with asyncio.timeout(10):
        while broker.hub.links:
            await asyncio.sleep(0.01)


async def test_a_ping_is_answered_with_a_pong(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    raw = await RawConnector.attach(broker.port)
    try:
        raw.send(b"ping-1", ws.OP_PING)
        raw.send(b"", ws.OP_PING)
        assert await raw.next_event() == ws.Pong(b"ping-1")
        assert await raw.next_event() == ws.Pong(b"")
    finally:
        raw.close()


async def test_the_broker_pings_and_keeps_a_connector_that_answers(
    make_broker: MakeBroker,
) -> None:
    broker = await make_broker(heartbeat=0.3)
    raw = await RawConnector.attach(broker.port)
    try:
        for _ in range(4):  # several heartbeat periods, each ping answered
            ping = await raw.next_event()
            assert isinstance(ping, ws.Ping)
            raw.send(ping.data, ws.OP_PONG)
        assert len(broker.hub.links) == 1
    finally:
        raw.close()


async def test_a_frozen_connector_is_dropped_by_the_heartbeat(make_broker: MakeBroker) -> None:
    broker = await make_broker(heartbeat=0.2)
    raw = await RawConnector.attach(broker.port)
    try:
        assert len(broker.hub.links) == 1
        # From here on the connector neither reads nor writes: a half-open link.
        await wait_no_links(broker)
        assert await raw.at_eof()
    finally:
        raw.close()


async def test_a_close_from_the_connector_is_answered_and_ends_the_link(
    make_broker: MakeBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = await make_broker()
    raw = await RawConnector.attach(broker.port, name="closer")
    try:
        raw.send_raw(ws.encode_close(1001, "connector shutting down", mask=True))
        assert await raw.next_close() == ws.Close(1001, "")
        assert await raw.at_eof()
    finally:
        raw.close()
    await wait_no_links(broker)
    out = capsys.readouterr().out
    assert "connector connected" in out
    assert "connector disconnected" in out and "reason=closed" in out


async def test_going_away_sends_goaway_then_a_1001_close(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    raw = await RawConnector.attach(broker.port)
    try:
        (link,) = broker.hub.links
        assert isinstance(link, ConnectorLink)
        going = asyncio.create_task(link.go_away("maintenance", 5.0))
        message = await raw.next_event()
        assert isinstance(message, ws.Message)
        assert p.decode(message.data) == [p.GoAway("maintenance", 5.0)]
        assert await raw.next_close() == ws.Close(p.CLOSE_GOING_AWAY, "maintenance")
        assert not going.done()  # the broker waits for our half of the handshake
        raw.send_raw(ws.encode_close(p.CLOSE_GOING_AWAY, mask=True))
        await asyncio.wait_for(going, 10)
        assert await raw.at_eof()
    finally:
        raw.close()
    assert broker.hub.links == []


async def test_stopping_drops_a_connector_that_never_answers_the_close(
    make_broker: MakeBroker,
) -> None:
    broker = await make_broker()
    raw = await RawConnector.attach(broker.port)
    try:
        await asyncio.wait_for(broker.stop(), 10)  # bounded by GOAWAY_TIMEOUT, not by us
        assert await raw.at_eof()
    finally:
        raw.close()


async def test_a_connector_that_stops_reading_gets_backpressure(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    raw = await RawConnector.attach(broker.port, rcvbuf=16 * 1024)
    try:
        (link,) = broker.hub.links
        assert isinstance(link, ConnectorLink)
        chunk = b"x" * 65536
        total = 512  # 32 MiB: far more than the kernel buffers on the way can hold
        for i in range(total):
            link.send(p.RequestBody(1, chunk))
            if i % 16 == 0:
                await asyncio.sleep(0)
        socket = link._socket
        async with asyncio.timeout(10):
            while not socket._paused:
                await asyncio.sleep(0.01)
        transport = socket._transport
        await asyncio.sleep(0.2)
        # The outbox stops being drained: the broker holds the rest as frames, not as
        # an ever-growing write buffer.
        queued = len(link._outbox)
        assert queued > 8 * 1024 * 1024
        assert transport.get_write_buffer_size() < 1024 * 1024
        await asyncio.sleep(0.2)
        assert len(link._outbox) == queued
        # Once the connector reads again, every frame arrives.
        received = 0
        async with asyncio.timeout(30):
            while received < total:
                event = await raw.next_event()
                if isinstance(event, ws.Message):
                    received += len(p.decode(event.data))
        assert received == total and not link._outbox and not socket._paused
    finally:
        raw.close()


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (ws.encode_frame(ws.OP_BINARY, b"unmasked", mask=False), ws.CLOSE_PROTOCOL_ERROR),
        (bytes((0x82, 0xFF)) + struct.pack("!Q", 64 * 1024 * 1024), ws.CLOSE_TOO_BIG),
        (bytes((0xC2, 0x80)) + b"\0\0\0\0", ws.CLOSE_PROTOCOL_ERROR),  # RSV1: no extension
    ],
    ids=["unmasked", "too-big", "reserved-bit"],
)
async def test_a_framing_error_closes_the_link_with_its_code(
    make_broker: MakeBroker, wire: bytes, code: int
) -> None:
    broker = await make_broker()
    raw = await RawConnector.attach(broker.port)
    try:
        raw.send_raw(wire)
        assert (await raw.next_close()).code == code
        assert await raw.at_eof()
    finally:
        raw.close()
    await wait_no_links(broker)


async def test_a_fragmented_hello_with_a_ping_between_is_understood(
    make_broker: MakeBroker,
) -> None:
    broker = await make_broker()
    raw = await RawConnector.upgrade(broker.port)
    try:
        hello = p.encode(p.Hello(p.PROTOCOL_VERSION, "split", ("m",), 1))
        key = b"\x01\x02\x03\x04"
        first = bytes((ws.OP_BINARY, 0x80 | 3)) + key + ws.apply_mask(hello[:3], key)
        rest = hello[3:]
        last = bytes((0x80 | ws.OP_CONTINUATION, 0x80 | len(rest))) + key
        raw.send_raw(first)
        raw.send(b"mid", ws.OP_PING)
        raw.send_raw(last + ws.apply_mask(rest, key))
        assert await raw.next_event() == ws.Pong(b"mid")
        welcome = await raw.next_event()
        assert isinstance(welcome, ws.Message)
        assert isinstance(p.decode(welcome.data)[0], p.Welcome)
        assert [link.name for link in broker.hub.links] == ["split"]
    finally:
        raw.close()


async def test_no_hello_in_time_closes_with_4002(
    make_broker: MakeBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("broker.relay.admission.HANDSHAKE_TIMEOUT", 0.2)
    broker = await make_broker()
    raw = await RawConnector.upgrade(broker.port)
    try:
        close = await raw.next_close()
        assert close == ws.Close(p.CLOSE_HANDSHAKE_TIMEOUT, "no hello within 10 s")
        raw.send_raw(ws.encode_close(close.code, mask=True))
        assert await raw.at_eof()
    finally:
        raw.close()
    assert broker.hub.links == []


async def test_pings_from_a_connector_that_does_not_read_do_not_grow_the_buffer(
    make_broker: MakeBroker,
) -> None:
    broker = await make_broker()
    raw = await RawConnector.attach(broker.port, rcvbuf=4 * 1024)
    try:
        (link,) = broker.hub.links
        assert isinstance(link, ConnectorLink)
        socket = link._socket
        for _ in range(64):  # fill the way back first, so the broker's transport pauses
            link.send(p.RequestBody(1, b"x" * 65536))
        async with asyncio.timeout(10):
            while not socket._paused:
                await asyncio.sleep(0.01)
        before = socket._transport.get_write_buffer_size()
        for i in range(20_000):  # 2.5 MB of pings, never reading the pongs
            raw.send(i.to_bytes(4, "big") + b"p" * 121, ws.OP_PING)
            if i % 500 == 0:
                await raw.writer.drain()
        await raw.writer.drain()
        async with asyncio.timeout(10):
            while socket._pending_pong is None or socket._pending_pong[:4] != (19_999).to_bytes(
                4, "big"
            ):
                await asyncio.sleep(0.01)
        # Only the latest ping waits for an answer; the write buffer did not take the rest.
        assert socket._transport.get_write_buffer_size() <= before + 1024
    finally:
        raw.close()


async def test_a_hello_sent_behind_an_upgrade_on_a_used_connection_counts(
    make_broker: MakeBroker,
) -> None:
    broker = await make_broker()
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: b\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
        await reader.readexactly(length)
        request, key = upgrade_request(broker.port)
        hello = p.encode(p.Hello(p.PROTOCOL_VERSION, "eager", ("raw-model",), 1))
        writer.write(request + ws.encode_frame(ws.OP_BINARY, hello, mask=True))
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        upgrade.check_response(answer[:-4], key)
        raw = RawConnector(reader, writer)
        welcome = await raw.next_event()
        assert isinstance(welcome, ws.Message)
        assert isinstance(p.decode(welcome.data)[0], p.Welcome)
    finally:
        writer.close()


async def test_a_broker_that_is_stopping_admits_no_new_connector(make_broker: MakeBroker) -> None:
    broker = await make_broker()
    relay = broker.services.relay
    relay.close_opening()  # what stop() does first
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    try:
        request, _ = upgrade_request(broker.port)
        writer.write(request)
        assert await asyncio.wait_for(reader.read(), 10) == b""
        assert broker.hub.links == []
    finally:
        writer.close()


async def test_frames_sent_before_a_framing_error_still_count(make_broker: MakeBroker) -> None:
    """A response the connector finished before breaking the rules reaches its client whole."""
    broker = await make_broker()
    raw = await RawConnector.attach(broker.port)
    try:
        url = f"http://127.0.0.1:{broker.port}/v1/chat/completions"
        chat = {"model": "raw-model", "messages": [{"role": "user", "content": "Hi"}]}
        auth = {"Authorization": f"Bearer {USER_KEY}"}
        async with aiohttp.ClientSession() as session:
            posting = asyncio.create_task(session.post(url, json=chat, headers=auth))
            frames: list[p.Frame] = []
            while not any(isinstance(f, p.End) for f in frames):
                event = await raw.next_event()
                if isinstance(event, ws.Message):
                    frames += p.decode(event.data)
            sid = frames[0].stream_id
            answer = [
                p.ResponseHead(sid, 200, (("Content-Type", "application/json"),)),
                p.ResponseBody(sid, b'{"ok":true}'),
                p.End(sid),
            ]
            message = ws.encode_frame(ws.OP_BINARY, p.encode_many(answer), mask=True)
            broken = ws.encode_frame(ws.OP_BINARY, b"unmasked", mask=False)
            raw.send_raw(message + broken)  # one write: both arrive in one read
            async with asyncio.timeout(10):
                resp = await posting
            assert resp.status == 200
            assert await resp.read() == b'{"ok":true}'
            resp.release()
        assert (await raw.next_close()).code == ws.CLOSE_PROTOCOL_ERROR
    finally:
        raw.close()
    await wait_no_links(broker)
