"""The relay client: one outbound WebSocket to the broker, kept up with backoff.

It pumps frames between the socket and the streams it serves: each request the
broker sends becomes a task that calls the local LLM and streams the answer
back within the stream's flow-control window.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field

import structlog

from connector_app.core.activity import (
    RequestEvents,
    RequestFinished,
    RequestStarted,
    UsageProbe,
    model_of,
)
from connector_app.core.backoff import Backoff
from connector_app.core.failures import describe_failure, is_fatal
from connector_app.core.http1 import HTTPError
from connector_app.core.llm import LocalLLM
from connector_app.core.status import LinkState, StatusBoard
from connector_app.core.wire import LinkClosed, Wire, open_wire
from shared import protocol as p
from shared.endpoints import is_relayable
from shared.flow import SendCredit
from shared.handshake import HANDSHAKE_TIMEOUT, Refused, accept_welcome, check_sender
from shared.outbox import Outbox

log = structlog.get_logger("remotellm.connector")

STABLE_AFTER = 10.0
"""A connection that lived this long resets the backoff."""

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}
)


@dataclass(eq=False)
class _Stream:
    head: p.RequestHead
    window: int
    body: bytearray = field(default_factory=bytearray)
    task: asyncio.Task[None] | None = None
    status: int | None = None
    slow: bool = False
    """The task is sending a chunk that had to wait for credit: later bytes queue behind it."""
    credit: SendCredit = field(init=False)
    credited: asyncio.Event = field(default_factory=asyncio.Event)
    usage: UsageProbe | None = None

    def __post_init__(self) -> None:
        self.credit = SendCredit(self.window)


class RelayClient:
    """Keeps one connection to the broker and serves the requests that arrive on it."""

    def __init__(
        self,
        *,
        url: str,
        token: str,
        name: str,
        max_concurrency: int,
        llm: LocalLLM,
        board: StatusBoard,
        backoff: Backoff | None = None,
        heartbeat: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        events: RequestEvents | None = None,
    ) -> None:
        self._url = url
        self._token = token
        self._name = name
        self._max_concurrency = max_concurrency
        self._llm = llm
        self._board = board
        self._backoff = backoff or Backoff()
        self._heartbeat = heartbeat
        self._ssl = ssl_context
        self._events = events or RequestEvents()
        self._stopping = asyncio.Event()
        self._draining = False
        self._wire: Wire | None = None
        self._outbox = Outbox()
        self._streams: dict[int, _Stream] = {}
        self._running = 0
        """Streams in `_streams` with a task: counted, not summed, at a thousand streams."""
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._window = p.DEFAULT_WINDOW
        self._goaway_after: float | None = None

    # -- public ---------------------------------------------------------------

    @property
    def models(self) -> tuple[str, ...]:
        return self._board.status.models

    def set_models(self, models: tuple[str, ...]) -> None:
        """Change the served models; a connected broker is told at once."""
        if models == self.models:
            return
        log.info("models changed", models=list(models))
        self._board.update(models=models)
        if self._wire is not None:
            self._send(p.ModelsUpdate(models))

    async def run(self) -> None:
        """Connect, serve, reconnect with backoff; returns after `stop()`."""
        loop = asyncio.get_running_loop()
        first = True
        while not self._stopping.is_set():
            self._board.update(
                state=LinkState.CONNECTING if first else LinkState.RECONNECTING, retry_in=None
            )
            first = False
            started = loop.time()
            error: str | None = None
            fatal = False
            try:
                await self._connection()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = describe_failure(exc)
                fatal = is_fatal(exc)
            finally:
                await self._abort_streams()
            if self._stopping.is_set():
                break
            if loop.time() - started >= STABLE_AFTER:
                self._backoff.reset()
            if self._goaway_after is not None:
                delay = self._goaway_after + self._backoff.next() / 4
                self._goaway_after = None
                error = error or "the broker asked us to reconnect"
            else:
                delay = self._backoff.next()
                error = error or "the broker closed the connection"
            self._board.update(
                state=LinkState.RECONNECTING,
                last_error=error,
                fatal=fatal,
                retry_in=round(delay, 2),
            )
            log.warning("relay link down", error=error, retry_in_s=round(delay, 2))
            try:
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            except TimeoutError:
                pass
        self._board.update(state=LinkState.DISCONNECTED, retry_in=None)

    async def stop(self, grace: float) -> None:
        """Take no new requests, let in-flight ones finish (bounded), then disconnect."""
        self._draining = True
        if self._wire is not None and self._streams:
            self._send(p.GoAway("connector shutting down", 0.0))
            log.info("draining", in_flight=len(self._streams), grace_s=grace)
            try:
                async with asyncio.timeout(grace):
                    await self._idle.wait()
            except TimeoutError:
                log.warning("grace period over; abandoning requests", in_flight=len(self._streams))
        self._stopping.set()
        wire = self._wire
        if wire is not None:
            await wire.close(p.CLOSE_GOING_AWAY, "connector shutting down")

    # -- one connection --------------------------------------------------------

    async def _connection(self) -> None:
        outbox = Outbox()
        wire = await open_wire(
            self._url,
            token=self._token,
            ssl_context=self._ssl,
            heartbeat=self._heartbeat,
            outbox=outbox,
        )
        try:
            hello = p.Hello(p.PROTOCOL_VERSION, self._name, self.models, self._max_concurrency)
            wire.send(p.encode(hello))
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                reply = await wire.recv()
            try:
                self._window = accept_welcome(reply).window
            except Refused as refusal:
                await wire.close(refusal.code, refusal.reason)
                raise
            self._outbox = outbox
            self._wire = wire
            self._board.update(
                state=LinkState.CONNECTED, last_error=None, fatal=False, retry_in=None
            )
            if self.models != hello.models:
                # The models changed while the handshake was in flight.
                self._send(p.ModelsUpdate(self.models))
            log.info("connected to broker", url=self._url, models=list(self.models))
            if self._stopping.is_set() or self._draining:
                await wire.close()
                return
            wire.deliver(self._on_message)
            try:
                await wire.wait_closed()
            except LinkClosed as closed:
                if not closed.clean:
                    raise
        finally:
            self._wire = None
            wire.abort()

    def _on_message(self, message: bytes) -> None:
        """Handle one message from the broker, in the socket's callback."""
        try:
            for frame in p.decode(message):
                self._on_frame(frame)
        except p.ProtocolError as exc:
            wire = self._wire
            if wire is not None:
                wire.fail(exc, p.CLOSE_PROTOCOL_ERROR, p.close_reason(str(exc)))

    def _send(self, frame: p.Frame) -> None:
        self._outbox.put(frame)
        wire = self._wire
        if wire is not None:
            wire.flush_soon()

    async def _abort_streams(self) -> None:
        """The link is gone: stop every request it carried and wait until they have stopped."""
        for stream in list(self._streams.values()):
            if stream.task is not None:
                stream.task.cancel()
            self._forget(stream)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _forget(self, stream: _Stream) -> None:
        """Drop a stream from the table and publish the new in-flight count."""
        if self._streams.get(stream.head.stream_id) is stream:
            del self._streams[stream.head.stream_id]
            if stream.task is not None:
                self._running -= 1
        self._board.update(in_flight=self._running)
        if not self._streams:
            self._idle.set()

    # -- frames from the broker ------------------------------------------------

    def _on_frame(self, frame: p.Frame) -> None:
        check_sender(frame, "broker")
        match frame:
            case p.RequestHead(stream_id):
                if stream_id in self._streams:
                    raise p.ProtocolError(f"stream {stream_id} is already open")
                self._streams[stream_id] = _Stream(frame, self._window)
                self._idle.clear()
            case p.RequestBody(stream_id, data):
                stream = self._streams.get(stream_id)
                if stream is None or stream.task is not None:
                    raise p.ProtocolError(f"request body on stream {stream_id} that is not open")
                if len(stream.body) + len(data) > p.MAX_REQUEST_BODY:
                    raise p.ProtocolError(f"request body on stream {stream_id} is too large")
                stream.body += data
            case p.End(stream_id):
                stream = self._streams.get(stream_id)
                if stream is None or stream.task is not None:
                    raise p.ProtocolError(f"end of stream {stream_id} that is not open")
                self._start(stream)
            case p.Cancel(stream_id):
                cancelled = self._streams.get(stream_id)
                self._outbox.discard(stream_id)
                if cancelled is not None:
                    if cancelled.task is not None:
                        cancelled.task.cancel()
                    self._forget(cancelled)
            case p.WindowUpdate(stream_id, increment):
                credited = self._streams.get(stream_id)
                if credited is not None:
                    credited.credit.add(increment)
                    credited.credited.set()
            case p.GoAway(reason, reconnect_after):
                log.info("broker going away", reason=reason, reconnect_after_s=reconnect_after)
                self._goaway_after = reconnect_after

    def _start(self, stream: _Stream) -> None:
        sid = stream.head.stream_id
        busy = self._running
        if self._draining or busy >= self._max_concurrency:
            self._forget(stream)
            reason = "shutting down" if self._draining else "at its concurrency limit"
            self._send(p.Error(sid, "over_capacity", f"The connector is {reason}."))
            return
        stream.task = asyncio.create_task(self._serve(stream))
        self._running += 1
        self._tasks.add(stream.task)
        stream.task.add_done_callback(self._tasks.discard)
        self._board.update(in_flight=busy + 1)

    # -- serving one request ---------------------------------------------------

    async def _serve(self, stream: _Stream) -> None:
        """Serve one stream; whatever happens, the broker hears how it ended."""
        head = stream.head
        sid = head.stream_id
        started = time.perf_counter()
        outcome = "ok"
        events = self._events if self._events.active else None
        model = ""
        if events is not None:
            model = model_of(stream.body)
            events.publish(RequestStarted(head.request_id, model, head.path, time.time()))
            stream.usage = UsageProbe()
        with structlog.contextvars.bound_contextvars(request_id=head.request_id):
            try:
                if not is_relayable(head.method, head.path):
                    outcome = "refused"
                    log.warning("refused a request outside the model endpoints", path=head.path)
                    self._send(
                        p.Error(sid, "forbidden", "The connector serves model endpoints only.")
                    )
                    return
                await self._relay(stream)
                self._send(p.End(sid))
            except asyncio.CancelledError:
                outcome = "cancelled"
                raise
            except (HTTPError, OSError, TimeoutError) as exc:
                outcome = "failed"
                # Details (the local URL, the socket error) stay in this machine's log.
                log.warning("local LLM request failed", error=str(exc) or type(exc).__name__)
                if stream.status is None:
                    self._send(
                        p.Error(sid, "llm_unreachable", "The local LLM server is unreachable.")
                    )
                else:
                    message = "The local LLM server failed mid-response."
                    self._send(p.Error(sid, "llm_stream_failed", message))
            except Exception as exc:
                # A bug here must not leave the broker's client waiting for the timeout.
                outcome = "failed"
                log.exception("request handling failed")
                message = f"The connector failed: {type(exc).__name__}"
                self._send(p.Error(sid, "connector_error", message))
            finally:
                self._forget(stream)
                duration = time.perf_counter() - started
                log.info(
                    "request served",
                    method=head.method,
                    path=head.path,
                    status=stream.status,
                    outcome=outcome,
                    duration_ms=round(duration * 1000, 1),
                )
                if events is not None and stream.usage is not None:
                    prompt, completion = stream.usage.tokens()
                    finished = RequestFinished(
                        head.request_id,
                        model,
                        head.path,
                        stream.status,
                        outcome,
                        duration,
                        prompt,
                        completion,
                        time.time(),
                    )
                    events.publish(finished)

    async def _relay(self, stream: _Stream) -> None:
        """Call the local LLM and stream its response back, within the stream's credit."""
        head = stream.head
        async with self._llm.request(
            head.method, head.path, head.headers, bytes(stream.body)
        ) as response:
            stream.status = response.status
            headers = tuple((k, v) for k, v in response.headers if k.lower() not in _HOP_BY_HOP)
            self._send(p.ResponseHead(head.stream_id, response.status, headers))
            # Events that fit the credit leave from the socket's callback, without waking
            # this task for each one; the loop handles what had to wait, and the end.
            response.on_data(lambda data: self._offer(stream, data))
            usage = stream.usage
            while chunk := await response.read():
                if usage is not None:
                    usage.feed(chunk)
                stream.slow = True
                try:
                    await self._send_body(stream, chunk)
                finally:
                    stream.slow = False

    def _offer(self, stream: _Stream, data: bytes) -> bool:
        """Send `data` now if the stream has the credit for all of it; else leave it."""
        if stream.slow or stream.credit.available < len(data):
            return False
        if self._streams.get(stream.head.stream_id) is not stream:
            return True  # cancelled: its task is being stopped, the bytes have nowhere to go
        if stream.usage is not None:
            stream.usage.feed(data)
        self._send_chunks(stream, data)
        return True

    async def _send_body(self, stream: _Stream, data: bytes) -> None:
        while data:
            if stream.credit.available == 0:
                stream.credited.clear()
                await stream.credited.wait()
                continue
            data = self._send_chunks(stream, data)

    def _send_chunks(self, stream: _Stream, data: bytes) -> bytes:
        """Send as much of `data` as the credit allows, in body frames; return the rest."""
        sid = stream.head.stream_id
        offset, total = 0, len(data)
        while offset < total and (n := stream.credit.take(total - offset)):
            # The common case (a chunk that fits) is sent as it is, without a copy.
            chunk = data if n == total else data[offset : offset + n]
            self._send(p.ResponseBody(sid, chunk))
            offset += n
        return data[offset:] if offset else data
