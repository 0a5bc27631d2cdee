"""The bare relay: RemoteLLM's wire protocol with nothing else, to find the floor of its design.

    uv run python -m bench.bare [REQUESTS]
    uv run python -m bench --bare --duties     # the same paths in every workload

Two processes on bare `asyncio.Protocol`s (uvloop where installed), no task, future or
coroutine per request, and none of the product around the protocol: no logging,
metrics, usage rows, limits, queueing, flow control, timeouts, retries or error answers
beyond a bare refusal. What each side does per request is the work a relay of this
design cannot skip, done with the project's own code for it:

- bare broker: split and parse the client's HTTP/1.1 request head
  (`shared.websocket.parse_request_head`), check the bearer key's fingerprint against a
  set, read the model from the JSON body, rewrite the headers (`broker.headers`), encode
  head, body and end frames (`shared.protocol`) into one WebSocket message, write it; on
  the way back, read the connector's WebSocket messages (`shared.websocket.FrameReader`),
  decode their frames and write the HTTP response (chunked when it has no length, one
  write per read of the relay socket) with `X-Request-ID`. A client that hangs up sends a cancel.
- bare connector: the mirror image, with the connector's own HTTP/1.1 client pieces
  (`connector_app.core.http1.request_bytes` and `ResponseParser`) on keep-alive
  connections to the stub, what arrives sent on at once, and masked frames as RFC 6455
  requires of a client.

With `--duties` (the "duties" path) the bare broker also keeps the product broker's books
for each request, with the product's own pieces: Prometheus metrics, the token tally,
a usage row on the ledger (SQLite, written in rounds) and the JSON `request finished`
log line. The connector stays bare.

Run alone, the client sends W1's 1 KB request one at a time, alternating blocks of 50
between the direct path, the floor (two byte-for-byte forwarders, `bench.floor`), the
bare relay and the bare relay with duties, and prints each path's added p50/p99 and its
processes' CPU per request. What the bare relay adds over the floor is the protocol's
unavoidable work in Python; what RemoteLLM adds over it is the product around it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import cast

import structlog

from bench.client import Target, timed_fetch
from bench.floor import start_floor
from bench.procs import USER_KEY, Child, Children, start_stub
from bench.stats import summary_ms
from broker.api import model_of
from broker.headers import request_headers, response_headers
from broker.keyformat import fingerprint
from broker.ledger import UsageLedger
from broker.metrics import Metrics
from broker.store import Store, UsageRow
from broker.tally import TokenTally
from connector_app.core.http1 import ResponseParser, request_bytes
from shared import protocol as p
from shared import websocket as ws
from shared.eventloop import run
from shared.logging import configure_logging

BLOCK = 50
MAX_HEAD = 64 * 1024
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 503: "Service Unavailable"}


async def _until_stopped() -> None:
    """Return on SIGTERM or SIGINT, so the process ends cleanly (and a profiler writes out)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


# ---------------------------------------------------------------------------
# The bare broker


class _Broker:
    def __init__(self, duties: _Duties | None = None) -> None:
        self.keys = {fingerprint(USER_KEY)}
        self.link: _Link | None = None
        self.duties = duties


class _Duties:
    """The broker's per-request bookkeeping, with the product's own pieces.

    Prometheus counters and histograms (`broker.metrics`), the token tally of the answer
    (`broker.tally`), a usage row queued on the ledger and written in rounds to SQLite
    (`broker.ledger`, `broker.store`), and the JSON `request finished` log line
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
        split = ws.split_head(self.buffer, MAX_HEAD)
        if split is None:
            return
        raw, size = split
        head = ws.parse_request_head(raw)
        length = int(head.headers.get("content-length", "0"))
        if len(self.buffer) < size + length:
            return
        body, self.buffer = self.buffer[size : size + length], self.buffer[size + length :]
        self._request(head, body)

    def _request(self, head: ws.RequestHead, body: bytes) -> None:
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
            split = ws.split_head(self.buffer, MAX_HEAD)
            if split is None:
                return
            raw, size = split
            key = ws.upgrade_key(ws.parse_request_head(raw))
            assert self.transport is not None
            self.transport.write(ws.server_accept(key))
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

    def send(self, client: _ClientConnection, head: ws.RequestHead, body: bytes) -> int:
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


async def _serve_broker(with_duties: bool) -> None:
    loop = asyncio.get_running_loop()
    duties = None
    if with_duties:
        configure_logging("info", "json")
        store = await Store.open("sqlite+aiosqlite:///:memory:")
        ledger = UsageLedger(store)
        ledger.start()
        duties = _Duties(ledger)
    broker = _Broker(duties)
    api = await loop.create_server(lambda: _ClientConnection(broker), "127.0.0.1", 0)
    relay = await loop.create_server(lambda: _Link(broker), "127.0.0.1", 0)
    ports = {"api": api.sockets[0].getsockname()[1], "relay": relay.sockets[0].getsockname()[1]}
    print(json.dumps(ports), flush=True)
    await _until_stopped()
    if duties is not None:
        await duties.ledger.close()
        await duties.ledger.store.close()  # a scratch store: closing it deletes its folder


# ---------------------------------------------------------------------------
# The bare connector


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
        self.key = ws.new_key()
        self.reader: ws.FrameReader | None = None
        self.requests: dict[int, tuple[p.RequestHead, list[bytes]]] = {}
        self.idle: deque[_Upstream] = deque()
        self.active: dict[int, _Upstream] = {}
        self.dialing: set[asyncio.Task[None]] = set()
        self.ready = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(ws.client_request("127.0.0.1", "/relay", self.key, {}))

    def data_received(self, data: bytes) -> None:
        if self.reader is None:  # the upgrade's answer
            self.buffer += data
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            ws.check_response(self.buffer[:end], self.key)
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


async def _serve_connector(relay_port: int, llm_port: int) -> None:
    loop = asyncio.get_running_loop()
    _, connector = await loop.create_connection(
        lambda: _Connector(llm_port), "127.0.0.1", relay_port
    )
    await connector.ready
    print(json.dumps({"ready": True}), flush=True)
    await _until_stopped()


# ---------------------------------------------------------------------------
# The measurement


async def start_bare(
    children: Children, stub_port: int, *, duties: bool = False
) -> tuple[list[Child], Target]:
    """A bare broker and connector in front of the stub, and the bench path through them.

    With `duties`, the broker also keeps the product's per-request books (`_Duties`); the
    path is then called "duties".
    """
    name = "duties" if duties else "bare"
    argv = [sys.executable, "-m", "bench.bare", "--broker"] + (["--duties"] if duties else [])
    broker = children.start(f"{name}-broker", argv)
    ports = await broker.wait_for(lambda obj: obj if "api" in obj else None, timeout=20)
    argv = [sys.executable, "-m", "bench.bare", "--connector", str(ports["relay"]), str(stub_port)]
    connector = children.start(f"{name}-connector", argv)
    await connector.wait_for(lambda obj: obj.get("ready"), timeout=20)
    return [broker, connector], Target(name, f"http://127.0.0.1:{ports['api']}/v1")


async def _measure(requests: int) -> dict[str, object]:
    children = Children(Path(tempfile.mkdtemp(prefix="bench-bare-")))
    try:
        _, stub_port = await start_stub(children)
        forwarders, floor = await start_floor(children, stub_port)
        bare_procs, bare = await start_bare(children, stub_port)
        duties_procs, duties = await start_bare(children, stub_port, duties=True)
        targets = {"direct": Target("direct", f"http://127.0.0.1:{stub_port}/v1")}
        targets |= {"floor": floor, "bare": bare, "duties": duties}
        procs = {"floor": forwarders, "bare": bare_procs, "duties": duties_procs}
        spec = "bench size=1024"
        for target in targets.values():
            for _ in range(BLOCK):
                ok, _ = await timed_fetch(target, spec)
                assert ok, f"{target.name} failed its warm-up request"
        samples: dict[str, list[int]] = {name: [] for name in targets}
        cpu = {name: 0.0 for name in procs}
        for _ in range(max(requests // BLOCK, 1)):
            for name, target in targets.items():
                before = sum(sum(c.cpu()) for c in procs.get(name, []))
                for _ in range(BLOCK):
                    ok, latency = await timed_fetch(target, spec)
                    if ok:
                        samples[name].append(latency)
                if name in procs:
                    cpu[name] += sum(sum(c.cpu()) for c in procs[name]) - before
        for target in targets.values():
            await target.close()
        stats = {name: summary_ms(values) for name, values in samples.items()}
        direct = stats["direct"]
        return {
            "requests": {name: len(values) for name, values in samples.items()},
            "p50_ms": {name: round(s["p50"], 3) for name, s in stats.items()},
            "p99_ms": {name: round(s["p99"], 3) for name, s in stats.items()},
            "added_p50_ms": {n: round(stats[n]["p50"] - direct["p50"], 3) for n in procs},
            "added_p99_ms": {n: round(stats[n]["p99"] - direct["p99"], 3) for n in procs},
            "cpu_us_per_request": {
                name: round(cpu[name] / max(len(samples[name]), 1) * 1e6, 1) for name in procs
            },
        }
    finally:
        children.stop_all()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare", description=__doc__)
    parser.add_argument("requests", type=int, nargs="?", default=2000)
    parser.add_argument("--broker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--duties", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--connector", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.broker:
        run(_serve_broker(args.duties))
    elif args.connector:
        run(_serve_connector(*args.connector))
    else:
        print(json.dumps(run(_measure(args.requests)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
