"""The bare relay's connector: relay protocol in, HTTP to the LLM server out (see bench.bare).

    python -m bench.bare_connector RELAY_PORT LLM_PORT

Dials the bare broker's relay port, says hello, prints `{"ready": true}` once welcomed,
and serves every request on keep-alive connections to the LLM server, sending on what
arrives at once. Stops cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import deque
from typing import cast

from shared import protocol as p
from shared import upgrade
from shared import websocket as ws
from shared.eventloop import run
from shared.http1 import ResponseParser, request_bytes
from shared.signals import shutdown_signals


class _Upstream(asyncio.Protocol):
    """One keep-alive connection to the LLM server; what arrives goes on at once."""

    def __init__(self, connector: _Connector) -> None:
        self.connector = connector
        self.transport: asyncio.Transport | None = None
        self.parser = ResponseParser()
        self.stream_id = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.connector.active.get(self.stream_id) is self:
            del self.connector.active[self.stream_id]
        if self in self.connector.idle:
            self.connector.idle.remove(self)

    def start(self, stream_id: int, payload: bytes) -> None:
        self.stream_id, self.parser = stream_id, ResponseParser()
        self.connector.active[stream_id] = self
        assert self.transport is not None
        self.transport.write(payload)

    def data_received(self, data: bytes) -> None:
        parser, sid = self.parser, self.stream_id
        had_head = parser.head is not None
        body = parser.feed(data)
        out: list[p.Frame] = []
        if not had_head and parser.head is not None:
            out.append(p.ResponseHead(sid, *parser.head))
        if body:
            out += p.split_body(sid, body, response=True)
        if parser.complete:
            out.append(p.End(sid))
            del self.connector.active[sid]
            if parser.keep_alive:
                self.connector.idle.append(self)
            elif self.transport is not None:
                self.transport.close()
        if out:
            self.connector.send(out)


class _Connector(asyncio.Protocol):
    """The connector's end of the WebSocket, and its pool of LLM connections."""

    def __init__(self, llm_port: int) -> None:
        self.llm_port = llm_port
        self.host = f"127.0.0.1:{llm_port}"
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.key = upgrade.new_key()
        self.reader: ws.FrameReader | None = None
        self.requests: dict[int, tuple[p.RequestHead, list[bytes]]] = {}
        self.idle: deque[_Upstream] = deque()
        self.active: dict[int, _Upstream] = {}
        self.dialing: set[asyncio.Task[None]] = set()
        self.ready = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(upgrade.client_request("127.0.0.1", "/relay", self.key, {}))

    def data_received(self, data: bytes) -> None:
        if self.reader is None:  # the upgrade's answer
            self.buffer += data
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            upgrade.check_response(self.buffer[:end], self.key)
            self.reader = ws.FrameReader(masked=False, max_message=16 * 1024 * 1024)
            data, self.buffer = self.buffer[end + 4 :], b""
            self.send([p.Hello(p.PROTOCOL_VERSION, "bare", ("bench-model",), 1000)])
        for event in self.reader.feed(data):
            if isinstance(event, ws.Message):
                for frame in p.iter_frames(event.data):
                    self._frame(frame)

    def _frame(self, frame: p.Frame) -> None:
        match frame:
            case p.Welcome():
                self.ready.set_result(None)
            case p.RequestHead(stream_id):
                self.requests[stream_id] = (frame, [])
            case p.RequestBody(stream_id, data):
                self.requests[stream_id][1].append(data)
            case p.End(stream_id):
                head, body = self.requests.pop(stream_id)
                payload = request_bytes(
                    head.method, head.path, self.host, head.headers, b"".join(body)
                )
                if self.idle:
                    self.idle.popleft().start(stream_id, payload)
                else:
                    dialing = asyncio.get_running_loop().create_task(self._dial(stream_id, payload))
                    self.dialing.add(dialing)
                    dialing.add_done_callback(self.dialing.discard)
            case p.Cancel(stream_id):
                upstream = self.active.pop(stream_id, None)
                if upstream is not None and upstream.transport is not None:
                    upstream.transport.close()

    async def _dial(self, stream_id: int, payload: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(
                lambda: _Upstream(self), "127.0.0.1", self.llm_port
            )
        except OSError:
            self.send([p.ResponseHead(stream_id, 502, ()), p.End(stream_id)])
            return
        upstream.start(stream_id, payload)

    def send(self, frames: list[p.Frame]) -> None:
        assert self.transport is not None
        self.transport.write(ws.encode_frame(ws.OP_BINARY, p.encode_many(frames), mask=True))


async def serve(relay_port: int, llm_port: int) -> None:
    loop = asyncio.get_running_loop()
    with shutdown_signals() as stop:
        _, connector = await loop.create_connection(
            lambda: _Connector(llm_port), "127.0.0.1", relay_port
        )
        await connector.ready
        print(json.dumps({"ready": True}), flush=True)
        await stop.wait()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_connector", description=__doc__)
    parser.add_argument("relay_port", type=int)
    parser.add_argument("llm_port", type=int)
    args = parser.parse_args()
    run(serve(args.relay_port, args.llm_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
