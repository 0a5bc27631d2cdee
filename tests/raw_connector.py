"""A connector speaking WebSocket by hand (shared.websocket), to probe the broker frame by frame."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from typing import Any

from shared import protocol as p
from shared import upgrade
from shared import websocket as ws
from tests.conftest import CONNECTOR_TOKEN


async def http_exchange(
    port: int, request: bytes, context: ssl.SSLContext | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read until the broker hangs up: first response's status, headers, body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        writer.write(request)
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    return parse_response(raw)


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ")[1]), headers, rest


def json_body(headers: dict[str, str], rest: bytes) -> Any:
    return json.loads(rest[: int(headers["content-length"])])


def upgrade_request(port: int, token: str = CONNECTOR_TOKEN, **extra: str) -> tuple[bytes, str]:
    key = upgrade.new_key()
    headers = {"Authorization": f"Bearer {token}", **extra}
    return upgrade.client_request(f"127.0.0.1:{port}", "/relay", key, headers), key


class RawConnector:
    """One relay connection: the upgrade done by hand, then frames in and out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.frames = ws.FrameReader(masked=False, max_message=64 * 1024 * 1024)
        self._events: list[ws.Event] = []

    @classmethod
    async def upgrade(
        cls, port: int, *, context: ssl.SSLContext | None = None, rcvbuf: int | None = None
    ) -> RawConnector:
        if rcvbuf is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        else:
            # A small receive buffer: the kernel holds little for a connector that stops reading.
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            reader, writer = await asyncio.open_connection(sock=sock, ssl=context)
        request, key = upgrade_request(port)
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        upgrade.check_response(head[:-4], key)
        return cls(reader, writer)

    @classmethod
    async def attach(cls, port: int, name: str = "raw", **kwargs: Any) -> RawConnector:
        """Upgrade, HELLO, WELCOME: a connector the hub knows."""
        raw = await cls.upgrade(port, **kwargs)
        raw.send(p.encode(p.Hello(p.PROTOCOL_VERSION, name, ("raw-model",), 4)))
        welcome = await raw.next_event()
        assert isinstance(welcome, ws.Message)
        assert isinstance(p.decode(welcome.data)[0], p.Welcome)
        return raw

    def send(self, message: bytes, opcode: int = ws.OP_BINARY) -> None:
        self.writer.write(ws.encode_frame(opcode, message, mask=True))

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    async def next_event(self, timeout: float = 10.0) -> ws.Event:
        """The next frame event from the broker; EOFError when it hung up first."""
        async with asyncio.timeout(timeout):
            while not self._events:
                data = await self.reader.read(65536)
                if not data:
                    raise EOFError("the broker closed the connection")
                self._events += self.frames.feed(data)
        return self._events.pop(0)

    async def next_close(self, timeout: float = 10.0) -> ws.Close:
        """Skip messages and pings up to the broker's close frame."""
        while True:
            event = await self.next_event(timeout)
            if isinstance(event, ws.Close):
                return event

    async def at_eof(self, timeout: float = 10.0) -> bool:
        """Read and drop everything until the broker hangs up."""
        async with asyncio.timeout(timeout):
            while await self.reader.read(65536):
                pass
        return True

    def close(self) -> None:
        self.writer.close()
