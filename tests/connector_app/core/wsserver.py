"""Hand-written loopback servers for the relay link's tests: a WebSocket server and a CONNECT proxy.

The WebSocket server reads what the client sends with the server's `FrameReader`, which
refuses unmasked frames, so every test through it also checks that the client masks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from shared import upgrade
from shared import websocket as ws

MAX_MESSAGE = 16 * 1024 * 1024


class _Handlers:
    """Starts a loopback server and, on stop, ends every connection handler it ran."""

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        self.context = context
        self.port = 0
        self.stopped = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._run, "127.0.0.1", 0, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
                await self.handle(reader, writer)
        finally:
            writer.close()
            self._tasks.discard(task)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        assert self._server is not None
        self.stopped.set()
        self._server.close()
        for writer in self._writers:
            writer.close()
        # Closed sockets end the handlers; cancelling them would make asyncio log an error.
        async with asyncio.timeout(10):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


class WsServer(_Handlers):
    """A WebSocket server that records what it receives and sends what a test tells it to."""

    def __init__(
        self,
        *,
        status: int = 101,
        answer: bool = True,
        wrong_accept: bool = False,
        context: ssl.SSLContext | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(context)
        self.status = status
        self.body = body
        self.answer = answer
        self.wrong_accept = wrong_accept
        self.heads: list[upgrade.RequestHead] = []
        self.received: asyncio.Queue[ws.Event] = asyncio.Queue()
        self.received_bytes = 0
        self.errors: list[ws.WebSocketError] = []
        self.reading = asyncio.Event()
        self.reading.set()
        self.connected = asyncio.Event()
        self.writer: asyncio.StreamWriter | None = None

    @property
    def url(self) -> str:
        scheme = "wss" if self.context is not None else "ws"
        return f"{scheme}://127.0.0.1:{self.port}/relay"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raw = await reader.readuntil(b"\r\n\r\n")
        head = upgrade.parse_request_head(raw[:-4])
        self.heads.append(head)
        if not self.answer:
            await self.stopped.wait()
            return
        if self.status != 101:
            refusal = f"HTTP/1.1 {self.status} No\r\nContent-Length: {len(self.body)}\r\n\r\n"
            writer.write(refusal.encode() + self.body)
            await writer.drain()
            return
        key = upgrade.new_key() if self.wrong_accept else upgrade.upgrade_key(head)
        writer.write(upgrade.server_accept(key))
        self.writer = writer
        self.connected.set()
        frames = ws.FrameReader(masked=True, max_message=MAX_MESSAGE)
        while True:
            await self.reading.wait()
            data = await reader.read(1 << 20)
            if not data:
                return
            try:
                events = frames.feed(data)
            except ws.WebSocketError as exc:
                self.errors.append(exc)
                return
            for event in events:
                if isinstance(event, ws.Message):
                    self.received_bytes += len(event.data)
                self.received.put_nowait(event)

    async def stop(self) -> None:
        self.reading.set()
        await super().stop()

    def send(self, opcode: int, payload: bytes = b"") -> None:
        assert self.writer is not None
        self.writer.write(ws.encode_frame(opcode, payload, mask=False))

    def send_close(self, code: int, reason: str) -> None:
        assert self.writer is not None
        self.writer.write(ws.encode_close(code, reason, mask=False))

    async def next_event(self, kind: type[ws.Event] | None = None) -> ws.Event:
        """The next event received (skipping pings and pongs unless they are asked for)."""
        async with asyncio.timeout(10):
            while True:
                event = await self.received.get()
                if kind is not None and isinstance(event, kind):
                    return event
                if kind is None and not isinstance(event, ws.Ping | ws.Pong):
                    return event


class ConnectProxy(_Handlers):
    """An HTTP proxy that only tunnels (CONNECT), and records the requests it got."""

    def __init__(self, status: int = 200) -> None:
        super().__init__()
        self.status = status
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        self.requests.append(head)
        method, authority, _ = head.split("\r\n", 1)[0].split(" ")
        if method != "CONNECT" or self.status != 200:
            writer.write(f"HTTP/1.1 {self.status} No\r\nContent-Length: 0\r\n\r\n".encode())
            await writer.drain()
            return
        host, port = authority.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            up_writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    writer.close()
