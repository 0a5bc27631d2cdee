"""The streams one relay connection carries: requests from the broker, served to the LLM.

`Streams` takes the broker's stream frames (a request's head, body and end; cancels;
window updates), sends each complete request to the local LLM, and streams the
answer back within the stream's flow-control window. When a kept-alive connection
to the LLM is free, the request goes out from the End frame's callback and the
answer is relayed from the connection's callbacks, with no task (`_fast`); otherwise,
and for the rest of an answer that runs out of credit, a task serves it (`_serve`).
What it sends goes through the `send` it is given; the connection is `RelayClient`'s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog

from connector_app.core.activity import RequestEvents
from connector_app.core.llm import LocalLLM
from connector_app.core.pool import Connection
from connector_app.core.status import StatusBoard
from connector_app.core.stream import Stream
from shared import protocol as p
from shared.endpoints import is_relayable
from shared.protocol import Headers

log = structlog.get_logger("remotellm.connector")

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}
)


class Streams:
    """The table of open streams, and the tasks serving them."""

    def __init__(
        self,
        *,
        llm: LocalLLM,
        board: StatusBoard,
        events: RequestEvents,
        max_concurrency: int,
        send: Callable[[p.Frame], None],
        discard: Callable[[int], None],
    ) -> None:
        self._llm = llm
        self._board = board
        self._events = events
        self._max_concurrency = max_concurrency
        self._send = send
        self._discard = discard
        """Drops what the outbox still holds of a stream (it was cancelled)."""
        self._table: dict[int, Stream] = {}
        self._running = 0
        """Streams in `_table` being served: counted, not summed, at a thousand streams."""
        self._tasks: set[asyncio.Task[None]] = set()
        self.idle = asyncio.Event()
        """Set while no stream is open."""
        self.idle.set()
        self.window = p.DEFAULT_WINDOW
        """The window each new stream starts with (the broker's welcome says)."""
        self.draining = False
        """Set when the connector stops: new requests are refused as over capacity."""

    def __len__(self) -> int:
        return len(self._table)

    async def abort(self) -> None:
        """The link is gone: stop every request it carried and wait until they have stopped."""
        for stream in list(self._table.values()):
            self._stop(stream)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def forget(self, stream: Stream) -> None:
        """Drop a stream from the table and publish the new in-flight count."""
        if self._table.get(stream.head.stream_id) is stream:
            del self._table[stream.head.stream_id]
            if stream.running:
                self._running -= 1
        self._board.update(in_flight=self._running)
        if not self._table:
            self.idle.set()

    def on_frame(self, frame: p.Frame) -> None:
        """Apply one stream frame from the broker (a GoAway is the client's)."""
        match frame:
            case p.RequestHead(stream_id):
                if stream_id in self._table:
                    raise p.ProtocolError(f"stream {stream_id} is already open")
                self._table[stream_id] = Stream(frame, self.window)
                self.idle.clear()
            case p.RequestBody(stream_id, data):
                stream = self._table.get(stream_id)
                if stream is None or stream.running:
                    raise p.ProtocolError(f"request body on stream {stream_id} that is not open")
                if len(stream.body) + len(data) > p.MAX_REQUEST_BODY:
                    raise p.ProtocolError(f"request body on stream {stream_id} is too large")
                stream.body += data
            case p.End(stream_id):
                stream = self._table.get(stream_id)
                if stream is None or stream.running:
                    raise p.ProtocolError(f"end of stream {stream_id} that is not open")
                self._start(stream)
            case p.Cancel(stream_id):
                cancelled = self._table.get(stream_id)
                self._discard(stream_id)
                if cancelled is not None:
                    self._stop(cancelled)
            case p.WindowUpdate(stream_id, increment):
                credited = self._table.get(stream_id)
                if credited is not None:
                    credited.credit.add(increment)
                    credited.credited.set()

    def _start(self, stream: Stream) -> None:
        sid = stream.head.stream_id
        busy = self._running
        if self.draining or busy >= self._max_concurrency:
            self.forget(stream)
            reason = "shutting down" if self.draining else "at its concurrency limit"
            self._send(p.Error(sid, "over_capacity", f"The connector is {reason}."))
            return
        stream.running = True
        self._running += 1
        self._board.update(in_flight=busy + 1)
        stream.announce(self._events)
        if not self._fast(stream):
            self._spawn(stream, self._serve(stream))

    def _spawn(self, stream: Stream, work: Coroutine[Any, Any, None]) -> None:
        stream.task = task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _task: self._task_done(stream))

    def _task_done(self, stream: Stream) -> None:
        """A task cancelled before its first step never ran its `finally`: end the stream here."""
        if not stream.ended:
            self._release(stream, hang_up=True)
            self._end(stream, "cancelled")

    def _end(self, stream: Stream, outcome: str) -> None:
        """The stream is over: out of the table, and its end logged (once)."""
        self.forget(stream)
        stream.finished(outcome)

    def _release(self, stream: Stream, *, hang_up: bool = False) -> Connection | None:
        """Hand the stream's LLM connection back to the pool; with `hang_up`, closed first.

        Hang up whenever the stream ends early: the response may have arrived whole in
        the very callback that ended it, and a connection the pool thinks reusable would
        then be kept with bytes nobody read.
        """
        connection, stream.connection = stream.connection, None
        if connection is not None:
            if hang_up:
                connection.close()
            self._llm.finish(connection)
        return connection

    def _stop(self, stream: Stream) -> None:
        """Stop serving a stream the broker cancelled or lost; the LLM sees the hang-up."""
        self.forget(stream)
        connection = self._release(stream, hang_up=True)
        if stream.task is not None:
            stream.task.cancel()  # the task, or `_task_done`, logs how it ended
        elif connection is not None:
            self._end(stream, "cancelled")

    # -- serving one request from the LLM socket's callbacks -------------------

    def _fast(self, stream: Stream) -> bool:
        """Serve the request without a task, when a kept-alive connection is free for it.

        The head, the body and the end are relayed from the connection's callbacks. The
        first body bytes that do not fit the stream's credit hand the rest of the
        response to a task (`_finish_slowly`); a connection that turns out to have been
        closed by the server before it saw the request sends it again through the task
        path, on a fresh connection.
        """
        head = stream.head
        if not is_relayable(head.method, head.path):
            return False  # the task path refuses it, with its log line
        try:
            connection = self._llm.start_nowait(
                head.method, head.path, head.headers, bytes(stream.body), _FastCall(self, stream)
            )
        except Exception:
            return False  # the task path meets the same error and reports it
        if connection is None:
            return False
        stream.connection = connection
        return True

    def _send_head(self, stream: Stream, status: int, headers: Headers) -> Connection | None:
        """Relay the LLM's response head, without its hop-by-hop headers."""
        stream.status = status
        relayed = tuple((k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP)
        self._send(p.ResponseHead(stream.head.stream_id, status, relayed))
        return stream.connection

    def _out_of_credit(self, stream: Stream) -> bool:
        """Body bytes did not fit the credit: a task takes the rest of the response, in order."""
        connection = stream.connection
        if connection is not None:
            connection.listener = None
            connection.sink = lambda data: self._offer(stream, data)
            self._spawn(stream, self._finish_slowly(stream, connection))
        return False

    def _fast_end(self, stream: Stream) -> None:
        self._release(stream)
        self._send(p.End(stream.head.stream_id))
        self._end(stream, "ok")

    def _fast_failed(self, stream: Stream, exc: BaseException) -> None:
        connection = self._release(stream)
        if connection is None:
            return
        if not connection.received:
            # The server had closed this kept-alive connection: the request never reached it.
            self._spawn(stream, self._serve(stream))
            return
        self._send(stream.failure(exc))
        self._end(stream, "failed")

    def _fast_bug(self, stream: Stream) -> None:
        """A callback failed (called while handling it): end the stream as `_serve` would."""
        log.exception("request handling failed", **stream.ids)
        self._release(stream, hang_up=True)
        if self._table.get(stream.head.stream_id) is stream:
            message = "The connector failed while relaying the response."
            self._send(p.Error(stream.head.stream_id, "connector_error", message))
            self._end(stream, "failed")

    async def _finish_slowly(self, stream: Stream, connection: Connection) -> None:
        """The rest of a response that ran out of credit, from a task (as `_relay` does)."""
        outcome = "ok"
        with structlog.contextvars.bound_contextvars(**stream.ids):
            try:
                await self._pump(stream, connection.read)
                self._send(p.End(stream.head.stream_id))
            except asyncio.CancelledError:
                outcome = "cancelled"
                raise
            except Exception as exc:
                outcome = "failed"
                self._send(stream.failure(exc))
            finally:
                if stream.connection is connection:  # else `_stop` has handed it back already
                    self._release(stream)
                self._end(stream, outcome)

    # -- serving one request ---------------------------------------------------

    async def _serve(self, stream: Stream) -> None:
        """Serve one stream from a task; whatever happens, the broker hears how it ended."""
        outcome = "ok"
        with structlog.contextvars.bound_contextvars(**stream.ids):
            try:
                outcome = await self._answer(stream)
            except asyncio.CancelledError:
                outcome = "cancelled"
                raise
            except Exception as exc:
                outcome = "failed"
                self._send(stream.failure(exc))
            finally:
                self._end(stream, outcome)

    async def _answer(self, stream: Stream) -> str:
        """Relay the request to the local LLM and its answer back; the outcome to log."""
        head = stream.head
        if not is_relayable(head.method, head.path):
            log.warning("refused a request outside the model endpoints", path=head.path)
            message = "The connector serves model endpoints only."
            self._send(p.Error(head.stream_id, "forbidden", message))
            return "refused"
        await self._relay(stream)
        self._send(p.End(head.stream_id))
        return "ok"

    async def _relay(self, stream: Stream) -> None:
        """Call the local LLM and stream its response back, within the stream's credit."""
        head = stream.head
        async with self._llm.request(
            head.method, head.path, head.headers, bytes(stream.body)
        ) as response:
            self._send_head(stream, response.status, response.headers)
            # Events that fit the credit leave from the socket's callback, without waking
            # this task for each one; the loop handles what had to wait, and the end.
            response.on_data(lambda data: self._offer(stream, data))
            await self._pump(stream, response.read)

    async def _pump(self, stream: Stream, read: Callable[[], Awaitable[bytes]]) -> None:
        """Send what `read` returns (the bytes the callbacks could not) until it ends."""
        usage = stream.usage
        while chunk := await read():
            if usage is not None:
                usage.feed(chunk)
            stream.slow = True
            try:
                await self._send_body(stream, chunk)
            finally:
                stream.slow = False

    def _offer(self, stream: Stream, data: bytes) -> bool:
        """Send `data` now if the stream has the credit for all of it; else leave it."""
        if stream.slow or stream.credit.available < len(data):
            return False
        if self._table.get(stream.head.stream_id) is not stream:
            return True  # cancelled: its task is being stopped, the bytes have nowhere to go
        if stream.usage is not None:
            stream.usage.feed(data)
        self._send_chunks(stream, data)
        return True

    async def _send_body(self, stream: Stream, data: bytes) -> None:
        while data:
            if stream.credit.available == 0:
                stream.credited.clear()
                await stream.credited.wait()
                continue
            data = self._send_chunks(stream, data)

    def _send_chunks(self, stream: Stream, data: bytes) -> bytes:
        """Send as much of `data` as the credit allows, in body frames; return the rest."""
        sid = stream.head.stream_id
        offset, total = 0, len(data)
        while offset < total and (n := stream.credit.take(total - offset)):
            # The common case (a chunk that fits) is sent as it is, without a copy.
            chunk = data if n == total else data[offset : offset + n]
            self._send(p.ResponseBody(sid, chunk))
            offset += n
        return data[offset:] if offset else data


class _FastCall:
    """Hears one stream's LLM exchange from the connection's callbacks (`pool.Listener`)."""

    __slots__ = ("_stream", "_streams")

    def __init__(self, streams: Streams, stream: Stream) -> None:
        self._streams = streams
        self._stream = stream

    # A bug in these must not leave the broker's client waiting for its timeout (as in `_serve`).

    def on_head(self, status: int, headers: Headers) -> None:
        try:
            connection = self._streams._send_head(self._stream, status, headers)
            if connection is not None:
                connection.sink = self.on_data
        except Exception:
            self._streams._fast_bug(self._stream)

    def on_data(self, data: bytes) -> bool:
        """Body bytes from the socket: sent at once when the stream's credit allows."""
        streams = self._streams
        try:
            return streams._offer(self._stream, data) or streams._out_of_credit(self._stream)
        except Exception:
            streams._fast_bug(self._stream)
            return True  # the connection is closed; the bytes have nowhere to go

    def on_complete(self) -> None:
        try:
            self._streams._fast_end(self._stream)
        except Exception:
            self._streams._fast_bug(self._stream)

    def on_failure(self, exc: BaseException) -> None:
        try:
            self._streams._fast_failed(self._stream, exc)
        except Exception:
            self._streams._fast_bug(self._stream)
