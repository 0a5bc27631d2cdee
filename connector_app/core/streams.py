"""The streams one relay connection carries: requests from the broker, served to the LLM.

`Streams` keeps the table of open streams and drives each one's `StreamMachine`
(`connector_app.core.streammachine`, where the rules are): it feeds the machine the
broker's frames and the local LLM's answer, and sends the frames the machine returns
through the `send` it is given (the connection is `RelayClient`'s). Two drivers feed the
same machine. When a kept-alive connection to the LLM is free, the request goes out from
the End frame's callback and the answer is relayed from the connection's callbacks, with
no task (`_fast`, `_FastCall`); otherwise, for the one retry a kept-alive connection may
need, and for the rest of an answer that ran out of credit, a task serves it (`_serve`).
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
from connector_app.core.streammachine import (
    RETRYING,
    already_open,
    is_llm_failure,
    on_closed_stream,
)
from shared import protocol as p
from shared.protocol import Headers

log = structlog.get_logger("remotellm.connector")


class Streams:
    """The table of open streams, and the drivers serving them."""

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
        """Streams in `_table` admitted to be served: counted, not summed, at a thousand."""
        self._tasks: set[asyncio.Task[None]] = set()
        self.idle = asyncio.Event()
        """Set while no stream is open."""
        self.idle.set()
        self.window = p.DEFAULT_WINDOW
        """The window each new stream starts with (the broker's welcome says)."""
        self.draining = False
        """Set when the connector stops: new requests are refused as over capacity."""
        self.paused = False
        """Set while the owner paused sharing: new requests are refused as over capacity
        (the broker takes them elsewhere); running ones finish."""
        self.blocked: frozenset[str] = frozenset()
        """User ids the owner refuses (`blocked_users`): their requests get `user_blocked`."""

    def __len__(self) -> int:
        return len(self._table)

    async def abort(self) -> None:
        """The link is gone: stop every request it carried and wait until they have stopped."""
        for stream in list(self._table.values()):
            self._stop(stream)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def forget(self, stream: Stream) -> None:
        """Drop a stream from the table and publish the new in-flight count."""
        sid = stream.rules.stream_id
        if self._table.get(sid) is stream:
            del self._table[sid]
            if stream.rules.admitted:
                self._running -= 1
        self._board.update(in_flight=self._running)
        if not self._table:
            self.idle.set()

    def on_frame(self, frame: p.Frame) -> None:
        """Apply one stream frame from the broker (a GoAway is the client's)."""
        match frame:
            case p.RequestHead(stream_id):
                if stream_id in self._table:
                    raise already_open(stream_id)
                self._table[stream_id] = Stream(frame, self.window)
                self.idle.clear()
            case p.RequestBody(stream_id, data):
                stream = self._table.get(stream_id)
                if stream is None:
                    on_closed_stream(frame)
                else:
                    stream.rules.request_body(data)
            case p.End(stream_id):
                stream = self._table.get(stream_id)
                if stream is None:
                    on_closed_stream(frame)
                else:
                    self._start(stream)
            case p.Cancel(stream_id):
                cancelled = self._table.get(stream_id)
                self._discard(stream_id)
                if cancelled is not None:
                    self._stop(cancelled)
            case p.WindowUpdate(stream_id, increment):
                credited = self._table.get(stream_id)
                if credited is not None:
                    self._credit(credited, increment)

    def _start(self, stream: Stream) -> None:
        """The request is whole: refuse it, or serve it (from callbacks when it can)."""
        rules = stream.rules
        refusal = rules.request_end(
            self._running, self._max_concurrency, self.draining, self.blocked, self.paused
        )
        if rules.admitted:
            self._running += 1
            self._board.update(in_flight=self._running)
            stream.announce(self._events)
        if refusal is None:
            if not self._fast(stream):
                self._spawn(stream, self._serve(stream))
            return
        self._send(refusal)
        if not rules.admitted:
            if refusal.code == "user_blocked":
                log.info("refused a blocked user", user_id=rules.head.user_id)
            self.forget(stream)  # over capacity or blocked: neither served nor reported
            return
        log.warning("refused a request", reason=refusal.message, path=rules.head.path)
        self._end(stream)

    def _credit(self, stream: Stream, increment: int) -> None:
        """A window update: send the held bytes it covers; a task waiting for it goes on."""
        rules = stream.rules
        for frame in rules.window_update(increment):
            self._send(frame)
        credited = stream.credited
        if credited is not None and not rules.held:
            credited.set()

    def _spawn(self, stream: Stream, work: Coroutine[Any, Any, None]) -> None:
        stream.task = task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _task: self._task_done(stream))

    def _task_done(self, stream: Stream) -> None:
        """A task cancelled before its first step never ran its `finally`: end the stream here."""
        if not stream.ended:
            self._release(stream, hang_up=True)
            stream.rules.cancel()
            self._end(stream)

    def _end(self, stream: Stream) -> None:
        """The stream is over: out of the table, and its end logged (once)."""
        self.forget(stream)
        stream.finished()

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
        stream.rules.cancel()
        if stream.task is not None:
            stream.task.cancel()  # the task, or `_task_done`, logs how it ended
        elif connection is not None:
            self._end(stream)

    def _report(
        self, stream: Stream, exc: BaseException, *, kept_alive: bool = False, received: bool = True
    ) -> None:
        """Serving failed: send the error the machine makes of it, if any, and log why."""
        error = stream.rules.failed(exc, kept_alive=kept_alive, received=received)
        if not is_llm_failure(exc):
            log.exception("request handling failed", exc_info=exc, **stream.ids)
        elif error is not None:  # else over already, or the request goes out again
            # Details (the local URL, the socket error) stay in this machine's log.
            reason = str(exc) or type(exc).__name__
            log.warning("local LLM request failed", error=reason, **stream.ids)
        if error is not None:
            self._send(error)

    # -- what both drivers relay -------------------------------------------------

    def _head(self, stream: Stream, status: int, headers: Headers) -> None:
        head = stream.rules.response_head(status, headers)
        if head is not None:
            self._send(head)

    def _relay_body(self, stream: Stream, data: bytes) -> None:
        """Send the body frames the stream's credit covers; the machine holds the rest."""
        usage = stream.usage
        if usage is not None:
            usage.feed(data)
        for frame in stream.rules.response_body(data):
            self._send(frame)

    def _offer(self, stream: Stream, data: bytes) -> bool:
        """A task's sink: body bytes from the socket's callback, refused while some wait for
        credit (the connection keeps them, in order, and stops reading past its limit)."""
        if stream.rules.held:
            return False
        self._relay_body(stream, data)
        return True

    def _complete(self, stream: Stream) -> None:
        end = stream.rules.complete()
        if end is not None:
            self._send(end)

    # -- the callback driver: one request from the LLM socket's callbacks ---------

    def _fast(self, stream: Stream) -> bool:
        """Serve the request without a task, when a kept-alive connection is free for it.

        The head, the body and the end are relayed from the connection's callbacks
        (`_FastCall`); bytes beyond the credit hand the rest to a task (`_out_of_credit`),
        and so does a retry the machine allows.
        """
        rules = stream.rules
        head = rules.head
        call = _FastCall(self, stream)
        try:
            connection = self._llm.start_nowait(
                head.method, head.path, head.headers, bytes(rules.body), call
            )
        except Exception as exc:  # the request was not written: nothing came back
            self._report(stream, exc, kept_alive=True, received=False)
            self._retry_or_end(stream)
            return True
        if connection is None:
            return False
        stream.connection = connection
        return True

    def _fast_body(self, stream: Stream, data: bytes) -> bool:
        self._relay_body(stream, data)
        return not stream.rules.held or self._out_of_credit(stream)

    def _out_of_credit(self, stream: Stream) -> bool:
        """Body bytes wait for credit: a task takes the rest of the response, in order."""
        connection = stream.connection
        if connection is not None:
            connection.listener = None
            connection.sink = lambda data: self._offer(stream, data)
            self._spawn(stream, self._serve(stream, connection))
        return True  # the machine holds the bytes

    def _fast_end(self, stream: Stream) -> None:
        self._release(stream)
        self._complete(stream)
        self._end(stream)

    def _fast_failed(self, stream: Stream, exc: BaseException) -> None:
        connection = self._release(stream)
        if connection is None:
            return  # stopped already
        self._report(stream, exc, kept_alive=True, received=connection.received)
        self._retry_or_end(stream)

    def _retry_or_end(self, stream: Stream) -> None:
        """After a failure: send the request again from a task if the machine allows it."""
        if stream.rules.phase == RETRYING:
            self._spawn(stream, self._serve(stream))
        else:
            self._end(stream)

    def _fast_bug(self, stream: Stream, exc: BaseException) -> None:
        """A callback failed: end the stream as the task driver would, and hang up."""
        self._release(stream, hang_up=True)
        if stream.task is not None:
            stream.task.cancel()
        self._report(stream, exc)
        self._end(stream)

    # -- the task driver ---------------------------------------------------------

    async def _serve(self, stream: Stream, connection: Connection | None = None) -> None:
        """Serve a stream from a task: the whole request, or (given the connection the
        callbacks started on) the rest of its answer. The broker hears how it ended."""
        rules = stream.rules
        with structlog.contextvars.bound_contextvars(**stream.ids):
            try:
                if connection is None:
                    await self._relay(stream)
                else:
                    await self._pump(stream, connection.read)
                    self._release(stream)
                self._complete(stream)
            except asyncio.CancelledError:
                rules.cancel()
                raise
            except Exception as exc:
                self._report(stream, exc)
            finally:
                self._release(stream)  # a connection `_stop` has not handed back already
                self._end(stream)

    async def _relay(self, stream: Stream) -> None:
        """Call the local LLM and stream its response back, within the stream's credit."""
        head = stream.rules.head
        async with self._llm.request(
            head.method, head.path, head.headers, bytes(stream.rules.body)
        ) as response:
            self._head(stream, response.status, response.headers)
            # Events that fit the credit leave from the socket's callback, without waking
            # this task for each one; the loop handles what had to wait, and the end.
            response.on_data(lambda data: self._offer(stream, data))
            await self._pump(stream, response.read)

    async def _pump(self, stream: Stream, read: Callable[[], Awaitable[bytes]]) -> None:
        """Relay what `read` returns (the bytes the callbacks could not) until it ends."""
        rules = stream.rules
        while True:
            if rules.held:
                await self._credited(stream)
            chunk = await read()
            if not chunk:
                break
            self._relay_body(stream, chunk)
        if rules.held:  # the sink took bytes the credit did not cover
            await self._credited(stream)

    async def _credited(self, stream: Stream) -> None:
        """Wait until the window updates have covered the held bytes (`_credit` sends them)."""
        credited = stream.credited
        if credited is None:
            credited = stream.credited = asyncio.Event()
        while stream.rules.held:
            credited.clear()
            await credited.wait()


class _FastCall:
    """Hears one stream's LLM exchange from the connection's callbacks (`pool.Listener`)."""

    __slots__ = ("_stream", "_streams")

    def __init__(self, streams: Streams, stream: Stream) -> None:
        self._streams = streams
        self._stream = stream

    # A bug in these must not leave the broker's client waiting for its timeout.

    def on_head(self, status: int, headers: Headers) -> None:
        stream = self._stream
        try:
            self._streams._head(stream, status, headers)
            connection = stream.connection
            if connection is not None:
                connection.sink = self.on_data
        except Exception as exc:
            self._streams._fast_bug(stream, exc)

    def on_data(self, data: bytes) -> bool:
        """Body bytes from the socket: sent at once within the stream's credit."""
        try:
            return self._streams._fast_body(self._stream, data)
        except Exception as exc:
            self._streams._fast_bug(self._stream, exc)
            return True  # the connection is closed; the bytes have nowhere to go

    def on_complete(self) -> None:
        try:
            self._streams._fast_end(self._stream)
        except Exception as exc:
            self._streams._fast_bug(self._stream, exc)

    def on_failure(self, exc: BaseException) -> None:
        try:
            self._streams._fast_failed(self._stream, exc)
        except Exception as bug:
            self._streams._fast_bug(self._stream, bug)
