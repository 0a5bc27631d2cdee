"""The express lane: the common API request, served on a bare protocol instead of aiohttp's.

Most of what the broker serves is one kind of request: a `POST` of a small JSON body
to a model endpoint, on a kept-alive HTTP/1.1 connection. aiohttp's request,
middleware and response objects cost more CPU per request than the rest of the
broker's work together, so the front (`broker.edge.listener`) gives a connection whose first
request line starts with `POST /` to this lane. Each request head is parsed by
`broker.edge.requesthead`; a head it accepts is served here through the same
`broker.api.endpoints.serve` and `broker.stream.trip.Trip` as aiohttp's requests, with a
`broker.edge.expresscall.ExpressCall` as the client's side. The first head it does not
accept (any other method or path, chunked uploads, `Expect`, oversized bodies,
HTTP/1.0, anything odd) hands the connection to aiohttp for good, at that request
boundary, with every byte read so far: every unusual case keeps aiohttp's tested
behaviour.

Answers are written as aiohttp writes them (its Date, Server and reason phrases, by
`broker.edge.handover`; chunked when the length is unknown, nothing on 204 and 304, closed
after an answer shorter than its Content-Length). One request at a time per connection;
pipelined ones wait in the buffer (reading pauses past `PIPELINE_LIMIT`, and while the client
reads none of its answers). A request refused before its body arrived has the rest of its
body read and dropped for up to `LINGER_TIMEOUT`, as aiohttp lingers; a body is read at most
`BODY_AHEAD` ahead of the request path, as aiohttp's flow control allows. A client that goes
away cancels its request, as aiohttp's `handler_cancellation` does; every request is counted
once, however it ends.

Every wait on the client is bounded: the connection's timers are
`broker.edge.timers.ConnectionTimers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Final

import structlog

from broker.api.admission import count_rejected, serve
from broker.api.errors import error_parts
from broker.edge import handover, requesthead, timers
from broker.edge.expresscall import ExpressCall
from broker.edge.timers import BODY, HEAD, IDLE, LINGER, LINGER_TIMEOUT, ConnectionTimers
from broker.stream import callbacktrip

if TYPE_CHECKING:
    from broker.services import Services

log = structlog.get_logger("remotellm.broker.api")

PIPELINE_LIMIT: Final = 64 * 1024
"""Bytes of later requests kept while one is answered; past this, reading pauses."""

_BUG: Final = "The broker failed to handle this request; its operator can find why in its log."


class Express:
    """The express lane of one broker: its connections and the requests in flight on them."""

    def __init__(self, services: Services, http: Callable[[], asyncio.Protocol]) -> None:
        self.services = services
        self.http = http
        settings = services.settings
        self.max_body = settings.max_body_size
        self.head_timeout = settings.head_timeout
        self.body_timeout = settings.body_timeout
        self.idle_timeout = settings.idle_timeout
        self.stall_timeout = settings.stall_timeout
        self.heads = handover.ResponseHead()
        self.connections: set[_Connection] = set()
        self.served = 0
        """Requests this lane has taken (the rest went to aiohttp): for tests and the curious."""
        self.from_callbacks = 0
        """Of those, the requests served from callbacks (`broker.stream.callbacktrip`)."""
        self.closing = False
        """The broker is stopping: no further request starts on these connections."""

    def connection(self, transport: asyncio.Transport, received: bytes) -> None:
        """Serve a connection whose bytes so far (`received`) start a `POST`."""
        connection = _Connection(self, transport)
        self.connections.add(connection)
        transport.set_protocol(connection)
        connection.data_received(received)

    async def shutdown(self) -> None:
        """Close idle connections; cancel requests still running (the drain gave them grace)."""
        self.closing = True
        tasks = []
        for connection in list(self.connections):
            task = connection.task
            if task is None:
                connection.stop_trip()
                connection.close()
            else:
                task.cancel()
                tasks.append(task)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for connection in list(self.connections):
            connection.close()


class _Connection(asyncio.Protocol):
    """One client connection on the express lane, one request at a time."""

    __slots__ = (
        "_buffer",
        "_call",
        "_lane",
        "_paused_reading",
        "_paused_writing",
        "_resume_next",
        "_timers",
        "_trip",
        "_waiters",
        "heads",
        "task",
        "transport",
    )

    def __init__(self, lane: Express, transport: asyncio.Transport) -> None:
        self._lane = lane
        self.heads = lane.heads
        self.transport: asyncio.Transport | None = transport
        self._buffer = bytearray()
        self._call: ExpressCall | None = None
        self.task: asyncio.Task[None] | None = None
        self._trip: callbacktrip.CallbackTrip | None = None
        """The request being served from callbacks (`broker.stream.callbacktrip`), when it is."""
        self._timers = ConnectionTimers(self.close, self._stalled)
        """Its closing timer, and the stall timer that runs while writing is paused."""
        self._paused_reading = False
        self._paused_writing = False
        self._resume_next = False
        """The next request waits for the client to read the last answer."""
        self._waiters: list[asyncio.Future[None]] = []

    # -- asyncio.Protocol --------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        call = self._call
        if call is None:
            if not self._resume_next:
                self._next()
        elif not call.complete:
            call.take(self._buffer)
            if call.complete and self.task is None:
                self._timers.stop()  # the lingering body of a request already answered is in
                self._after(call)
            else:
                self._watch_body()
        elif len(self._buffer) > PIPELINE_LIMIT:
            self.pause_reading()

    def eof_received(self) -> bool:
        return False  # the client is done: close, and cancel what it asked

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._lane.connections.discard(self)
        self._timers.stop_all()
        self._wake(ConnectionResetError("the client closed the connection"))
        self.stop_trip()
        task = self.task
        if task is not None and not task.done():
            task.cancel()

    def pause_writing(self) -> None:
        self._paused_writing = True
        self._timers.start_stall(self._lane.stall_timeout)

    def resume_writing(self) -> None:
        self._paused_writing = False
        self._timers.stop_stall()
        self._wake(None)
        if self._trip is not None:
            self._trip.resumed()
        if self._resume_next and self.transport is not None:
            self._resume_next = False
            self._timers.stop()
            self.resume_reading()
            self._next()

    # -- requests ----------------------------------------------------------------

    def _next(self) -> None:
        """Start the next request in the buffer, wait for more of it, or leave it to aiohttp."""
        if self._lane.closing:
            self.close()  # the broker is stopping: no further request starts
            return
        buffer = self._buffer
        if not buffer:
            self._timers.arm(IDLE, self._lane.idle_timeout)
            return
        end = buffer.find(b"\r\n\r\n", 0, requesthead.MAX_HEAD + 4)
        if end < 0:
            if len(buffer) > requesthead.MAX_HEAD or requesthead.stray_line_end(buffer):
                self._to_aiohttp()
            else:
                self._timers.arm(HEAD, self._lane.head_timeout)  # from the first byte
            return
        head = requesthead.parse(bytes(buffer[:end]), self._lane.max_body)
        if head is None:
            self._to_aiohttp()
            return
        del buffer[: end + 4]
        self._timers.stop()
        call = ExpressCall(self, head)
        call.take(buffer)
        self._call = call
        lane = self._lane
        lane.served += 1
        services = lane.services
        try:
            self._trip = callbacktrip.start(services, call, self)
        except Exception as exc:  # a bug: answered and counted as one in a request's task is
            count_rejected(services, call, 500, time.perf_counter())
            self._bug(call, exc)
            return
        if self._trip is None:
            self._spawn(call, _serve(services, call))
            self._watch_body()
        else:
            lane.from_callbacks += 1

    def _spawn(self, call: ExpressCall, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Serve the request in a task."""
        # The request's log lines carry its id, as the aiohttp middleware binds it.
        context = contextvars.copy_context()
        context.run(structlog.contextvars.bind_contextvars, **call.ids)
        task = asyncio.get_running_loop().create_task(work, context=context)
        self.task = task
        task.add_done_callback(self._done, context=context)
        return task

    # -- for broker.stream.callbacktrip ------------------------------------------------------

    @property
    def writing_paused(self) -> bool:
        return self._paused_writing

    def trip_done(self, call: ExpressCall) -> None:
        self._trip = None
        if self.transport is None:
            return
        if not call.finished or self._lane.closing:
            self.close()
        else:
            self._after(call)

    def go_async(self, call: ExpressCall, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        self._trip = None
        call.began = True
        return self._spawn(call, work)

    def stop_trip(self) -> None:
        """Stop the request served from callbacks, if one is (the client or the broker left)."""
        if self._trip is not None:
            self._trip.client_gone()

    def _done(self, task: asyncio.Task[None]) -> None:
        call = self._call
        self.task = None
        if call is None:
            return
        if task.cancelled():
            if not call.began:
                # Cancelled before its first step (the client left at once): still counted.
                count_rejected(self._lane.services, call, 499, time.perf_counter(), cancelled=True)
        elif task.exception() is not None:
            self._bug(call, task.exception())
            return
        if self.transport is None:
            return
        if not call.finished or self._lane.closing:
            self.close()
        elif not call.complete:
            # Answered (refused) before its body came: read the rest past, for a while, so the
            # client sees the answer rather than a reset, and the next request starts in step.
            call.discard()
            self.resume_reading()
            self._timers.arm(LINGER, LINGER_TIMEOUT)
        else:
            self._after(call)

    def _after(self, call: ExpressCall) -> None:
        """The answer is out and the body read: on to the next request on the connection."""
        self._call = None
        if call.close:
            self.close()
        elif self._paused_writing:
            # The client is not reading its answers: read no more requests until it does
            # (or until the stall timeout, which runs while writing is paused).
            self._resume_next = True
            self.pause_reading()
        else:
            self.resume_reading()
            self._next()

    def _bug(self, call: ExpressCall, exc: BaseException | None) -> None:
        """A bug: say so to the client if nothing was sent yet, as aiohttp's 500 would."""
        log.error("request failed with an internal error", error=repr(exc), **call.ids)
        if not call.answered:
            call.close = True
            with contextlib.suppress(ConnectionError):
                call.send_reply(500, *error_parts(call.path, 500, "internal_error", _BUG))
        self.close()

    def _to_aiohttp(self) -> None:
        """Hand the connection to aiohttp for good, with the bytes of its next request."""
        transport = self.transport
        assert transport is not None and self._call is None
        self._timers.stop_all()  # aiohttp bounds its own waits from here on
        self._lane.connections.discard(self)
        self.resume_reading()
        self.transport = None
        handover.to_aiohttp(transport, self._lane.http, bytes(self._buffer))
        self._buffer.clear()

    def pause_reading(self) -> None:
        if not self._paused_reading and self.transport is not None:
            self._paused_reading = True
            self.transport.pause_reading()
            self._watch_body()

    def resume_reading(self) -> None:
        if self._paused_reading and self.transport is not None:
            self._paused_reading = False
            self.transport.resume_reading()
            self._watch_body()

    def _watch_body(self) -> None:
        """Give the rest of the request's body `body_timeout` from now, while the lane reads
        it; no timer while reading is paused (the request path has not asked for it yet)."""
        call = self._call
        if call is None or call.complete or self.task is None or self._paused_reading:
            if self._timers.kind == BODY:
                self._timers.stop()
            return
        self._timers.stop()
        self._timers.arm(BODY, self._lane.body_timeout)

    def _stalled(self) -> None:
        """The client took none of what was written to it for the stall timeout: cut it off,
        which ends its request as a client that left does (the connector stops, the slot and
        the key's concurrency are given back)."""
        call = self._call
        ids: Mapping[str, str | None] = call.ids if call is not None else {"request_id": None}
        log.warning(
            "client took none of its answer; connection cut",
            stall_timeout_s=self._lane.stall_timeout,
            **ids,
        )
        if self.transport is not None:
            self.transport.abort()

    # -- for ExpressCall -------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        transport.write(data)

    async def drained(self) -> None:
        """Return once the socket takes more (at once, unless the client reads slowly)."""
        if not self._paused_writing:
            return
        if self.transport is None:
            raise ConnectionResetError("the client closed the connection")
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    def _wake(self, exc: Exception | None) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                if exc is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(exc)

    def close(self) -> None:
        """Close once what is written has left; drop it if the client takes none of it for long."""
        transport = self.transport
        if transport is not None:
            transport.close()
            if transport.get_write_buffer_size():
                loop = asyncio.get_running_loop()
                loop.call_later(LINGER_TIMEOUT, timers.abort_if_unread, transport)


async def _serve(services: Services, call: ExpressCall) -> None:
    call.began = True
    await serve(services, call)
