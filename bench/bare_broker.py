"""The bare relay's broker: client HTTP in, relay protocol out, nothing else (see bench.bare).

    python -m bench.bare_broker [--duties]

Listens on two loopback ports, one for clients and one for the bare connector's WebSocket,
and prints them as one JSON line. With `--duties` it also keeps the product broker's
per-request books (`Duties`). Stops cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import structlog

from bench.procs import LISTEN_BACKLOG, USER_KEY
from broker.accounts.keyformat import fingerprint
from broker.accounts.ledger import UsageLedger
from broker.accounts.records import UsageRow
from broker.accounts.store import Store
from broker.api.admission import model_of
from broker.metrics import Metrics
from broker.stream.headers import request_headers, response_headers
from broker.stream.tally import TokenTally
from shared import protocol as p
from shared import upgrade
from shared import websocket as ws
from shared.eventloop import run
from shared.logging import configure_logging
from shared.signals import shutdown_signals

MAX_HEAD = 64 * 1024
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 503: "Service Unavailable"}


class _Broker:
    def __init__(self, duties: _Duties | None = None) -> None:
        self.keys = {fingerprint(USER_KEY)}
        self.link: _Link | None = None
        self.duties = duties


class _Duties:
    """The broker's per-request bookkeeping, with the product's own pieces.

    Prometheus counters and histograms (`broker.metrics`), the token tally of the answer
    (`broker.stream.tally`), a usage row queued on the ledger and written in rounds to SQLite
    (`broker.accounts.ledger`, `broker.accounts.store`), and the JSON `request finished` log line
    (structlog, configured as the broker configures it).
    """

    def __init__(self, ledger: UsageLedger) -> None:
        self.metrics = Metrics()
        self.ledger = ledger
        self.log = structlog.get_logger("remotellm.broker.api")

    def start(self, client: _ClientConnection) -> None:
        self.metrics.in_flight.inc()
        client.started = time.perf_counter()

    def head(self, client: _ClientConnection, status: int, content_type: str) -> None:
        client.status = status
        client.tally = TokenTally(content_type)
        client.ttfb = time.perf_counter() - client.started
        self.metrics.first_byte(client.model, client.ttfb)

    def finish(self, client: _ClientConnection, outcome: str) -> None:
        elapsed = time.perf_counter() - client.started
        self.metrics.in_flight.dec()
        self.metrics.finished(client.model, client.status, elapsed)
        prompt = completion = None
        if client.tally is not None:
            prompt, completion = client.tally.result()
        self.log.info(
            "request finished",
            method="POST",
            path=client.path,
            model=client.model,
            status=client.status,
            outcome=outcome,
            connector="bare",
            user="bench",
            duration_ms=round(elapsed * 1000, 1),
        )
        self.ledger.record(
            UsageRow(
                time=time.time(),
                request_id=client.request_id,
                endpoint=client.path[:64],
                status=client.status,
                duration_ms=round(elapsed * 1000, 3),
                model=client.model,
                connector="bare",
                prompt_tokens=prompt,
                completion_tokens=completion,
                ttfb_ms=round(client.ttfb * 1000, 3),
                cancelled=outcome == "cancelled",
            )
        )


class _ClientConnection(asyncio.Protocol):
    """One client's keep-alive connection; one request at a time."""

    def __init__(self, broker: _Broker) -> None:
        self.broker = broker
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.request_id = ""
        self.stream: tuple[_Link, int] | None = None
        self.chunked = self.bodiless = False
        self.out: list[bytes] = []
        # What the duties keep per request.
        self.path = self.model = ""
        self.status = 0
        self.started = self.ttfb = 0.0
        self.tally: TokenTally | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stream is not None:  # gone mid-answer: the connector stops the LLM's work
            link, sid = self.stream
            link.cancel(sid)
            self.stream = None
            if self.broker.duties is not None:
                self.broker.duties.finish(self, "cancelled")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        split = upgrade.split_head(self.buffer, MAX_HEAD)
        if split is None:
            return
        raw, size = split
        head = upgrade.parse_request_head(raw)
        length = int(head.headers.get("content-length", "0"))
        if len(self.buffer) < size + length:
            return
        body, self.buffer = self.buffer[size : size + length], self.buffer[size + length :]
        self._request(head, body)

    def _request(self, head: upgrade.RequestHead, body: bytes) -> None:
        self.request_id = ""
        auth = head.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or fingerprint(auth[7:]) not in self.broker.keys:
            return self._refuse(401)
        model = model_of(body)
        if model is None:
            return self._refuse(400)
        link = self.broker.link
        if link is None:
            return self._refuse(503)
        self.request_id = "req_" + os.urandom(12).hex()
        self.path, self.model = head.path, model
        if self.broker.duties is not None:
            self.broker.duties.start(self)
        self.stream = (link, link.send(self, head, body))

    def _refuse(self, status: int) -> None:
        self.start(status, [("Content-Type", "application/json")])
        self.body(b'{"error":{}}')
        self.end()
        self.flush()

    # The answer, written once per read of the relay socket that carried a part of it.

    def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.bodiless = status in (204, 304)  # the bench only POSTs, so HEAD never comes
        self.chunked = not self.bodiless and not any(
            k.lower() == "content-length" for k, _ in headers
        )
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
        lines.extend(f"{k}: {v}" for k, v in headers)
        if self.request_id:
            lines.append(f"X-Request-ID: {self.request_id}")
        if self.chunked:
            lines.append("Transfer-Encoding: chunked")
        self.out.append(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if self.stream is not None and self.broker.duties is not None:
            content_type = next((v for k, v in headers if k.lower() == "content-type"), "")
            self.broker.duties.head(self, status, content_type)

    def body(self, data: bytes) -> None:
        if self.tally is not None:
            self.tally.feed(data)
        if self.bodiless:
            return
        if self.chunked:
            self.out += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            self.out.append(data)

    def end(self) -> None:
        if self.chunked:
            self.out.append(b"0\r\n\r\n")
        if self.stream is not None and self.broker.duties is not None:
            self.broker.duties.finish(self, "ok")
        self.stream = None
        self.tally = None

    def flush(self) -> None:
        assert self.transport is not None
        self.transport.write(b"".join(self.out))
        self.out.clear()


class _Link(asyncio.Protocol):
    """The broker's end of the connector's WebSocket."""

    def __init__(self, broker: _Broker) -> None:
        self.broker = broker
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.reader: ws.FrameReader | None = None
        self.streams: dict[int, _ClientConnection] = {}
        self.next_id = 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.broker.link is self:
            self.broker.link = None
        for client in self.streams.values():  # nothing more will come for them
            if client.transport is not None:
                client.transport.close()
        self.streams.clear()

    def data_received(self, data: bytes) -> None:
        if self.reader is None:  # the upgrade
            self.buffer += data
            split = upgrade.split_head(self.buffer, MAX_HEAD)
            if split is None:
                return
            raw, size = split
            key = upgrade.upgrade_key(upgrade.parse_request_head(raw))
            assert self.transport is not None
            self.transport.write(upgrade.server_accept(key))
            self.reader = ws.FrameReader(masked=True, max_message=16 * 1024 * 1024)
            data, self.buffer = self.buffer[size:], b""
        touched: dict[int, _ClientConnection] = {}
        for event in self.reader.feed(data):
            if isinstance(event, ws.Message):
                for frame in p.iter_frames(event.data):
                    client = self._frame(frame)
                    if client is not None:
                        touched[id(client)] = client
        for client in touched.values():
            client.flush()

    def _frame(self, frame: p.Frame) -> _ClientConnection | None:
        match frame:
            case p.Hello():
                self._write(p.encode(p.Welcome(p.PROTOCOL_VERSION, p.DEFAULT_WINDOW)))
                self.broker.link = self
            case p.ResponseHead(stream_id, status, headers):
                if (client := self.streams.get(stream_id)) is not None:
                    client.start(status, response_headers(headers))
                return client
            case p.ResponseBody(stream_id, data):
                if (client := self.streams.get(stream_id)) is not None:
                    client.body(data)
                return client
            case p.End(stream_id):
                if (client := self.streams.pop(stream_id, None)) is not None:
                    client.end()
                return client
        return None

    def send(self, client: _ClientConnection, head: upgrade.RequestHead, body: bytes) -> int:
        sid = self.next_id
        self.next_id += 1
        self.streams[sid] = client
        headers = request_headers(head.headers, client.request_id)
        frames: list[p.Frame] = [p.RequestHead(sid, head.method, head.target, headers, "")]
        frames += p.split_body(sid, body, response=False)
        frames.append(p.End(sid))
        self._write(p.encode_many(frames))
        return sid

    def cancel(self, stream_id: int) -> None:
        if self.streams.pop(stream_id, None) is not None:
            self._write(p.encode(p.Cancel(stream_id)))

    def _write(self, message: bytes) -> None:
        assert self.transport is not None
        self.transport.write(ws.encode_frame(ws.OP_BINARY, message, mask=False))


async def serve(with_duties: bool) -> None:
    loop = asyncio.get_running_loop()
    duties = None
    if with_duties:
        configure_logging("info", "json")
        store = await Store.open("sqlite+aiosqlite:///:memory:")
        ledger = UsageLedger(store)
        ledger.start()
        duties = _Duties(ledger)
    broker = _Broker(duties)
    with shutdown_signals() as stop:
        api = await loop.create_server(
            lambda: _ClientConnection(broker), "127.0.0.1", 0, backlog=LISTEN_BACKLOG
        )
        relay = await loop.create_server(lambda: _Link(broker), "127.0.0.1", 0)
        ports = {
            "api": api.sockets[0].getsockname()[1],
            "relay": relay.sockets[0].getsockname()[1],
        }
        print(json.dumps(ports), flush=True)
        await stop.wait()
    if duties is not None:
        await duties.ledger.close()
        await duties.ledger.store.close()  # a scratch store: closing it deletes its folder


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_broker", description=__doc__)
    parser.add_argument("--duties", action="store_true", help="keep the broker's books too")
    run(serve(parser.parse_args().duties))
    return 0


if __name__ == "__main__":
    sys.exit(main())
