"""The connector's stream table: how requests are served, and how failures are reported."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest

from connector_app.core.activity import RequestEvents
from connector_app.core.llm import LocalLLM
from connector_app.core.status import StatusBoard
from connector_app.core.streams import Streams
from shared import protocol as p
from shared.http1 import HTTPError


class FailingLLM:
    """A local LLM whose every request raises `error` before answering."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.calls = 0

    def start_nowait(self, *_args: Any) -> None:
        return None  # no kept-alive connection: every request takes the task path

    @asynccontextmanager
    async def request(self, *_args: Any) -> AsyncIterator[Any]:
        self.calls += 1
        raise self.error
        yield  # pragma: no cover - makes this an async generator


def table(llm: FailingLLM, sent: list[p.Frame]) -> Streams:
    return Streams(
        llm=cast(LocalLLM, llm),
        board=StatusBoard(),
        events=RequestEvents(),
        max_concurrency=4,
        send=sent.append,
        discard=lambda _stream_id: None,
    )


async def serve_one(streams: Streams, path: str = "/v1/chat/completions") -> None:
    streams.on_frame(p.RequestHead(1, "POST", path, (("content-type", "application/json"),), "r1"))
    streams.on_frame(p.RequestBody(1, b'{"model": "m"}'))
    streams.on_frame(p.End(1))
    assert len(streams) == 1
    await asyncio.wait_for(streams.idle.wait(), 5)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConnectionRefusedError("refused"), "llm_unreachable"),
        (HTTPError("bad status line"), "llm_unreachable"),
        (TimeoutError(), "llm_unreachable"),
        (RuntimeError("a bug in the connector"), "connector_error"),
    ],
)
async def test_a_request_that_fails_before_an_answer_ends_in_one_error_frame(
    error: BaseException, code: str
) -> None:
    sent: list[p.Frame] = []
    llm = FailingLLM(error)
    streams = table(llm, sent)
    await serve_one(streams)
    assert llm.calls == 1
    assert [type(frame) for frame in sent] == [p.Error]
    failure = cast(p.Error, sent[0])
    assert (failure.stream_id, failure.code) == (1, code)
    # What went wrong stays in this machine's log; the broker hears only the kind.
    assert str(error) not in failure.message or not str(error)
    assert len(streams) == 0


async def test_a_bug_is_logged_with_its_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    sent: list[p.Frame] = []
    streams = table(FailingLLM(RuntimeError("a bug in the connector")), sent)
    await serve_one(streams)
    logged = capsys.readouterr()
    output = logged.out + logged.err
    assert "request handling failed" in output
    assert "RuntimeError: a bug in the connector" in output
    assert "request served" in output


async def test_a_path_outside_the_model_endpoints_is_refused_without_calling_the_llm() -> None:
    sent: list[p.Frame] = []
    llm = FailingLLM(RuntimeError("must not be called"))
    streams = table(llm, sent)
    streams.on_frame(p.RequestHead(1, "POST", "/admin/users", (), "r1"))
    streams.on_frame(p.RequestBody(1, b'{"model": "m"}'))
    streams.on_frame(p.End(1))  # refused from the End frame's callback, with no task
    assert len(streams) == 0 and streams.idle.is_set()
    assert llm.calls == 0
    assert [(type(f), getattr(f, "code", None)) for f in sent] == [(p.Error, "forbidden")]


async def test_a_draining_table_refuses_new_requests_as_over_capacity() -> None:
    sent: list[p.Frame] = []
    llm = FailingLLM(RuntimeError("must not be called"))
    streams = table(llm, sent)
    streams.draining = True
    streams.on_frame(p.RequestHead(1, "POST", "/v1/chat/completions", (), "r1"))
    streams.on_frame(p.End(1))
    assert llm.calls == 0
    assert [(type(f), getattr(f, "code", None)) for f in sent] == [(p.Error, "over_capacity")]
    assert len(streams) == 0 and streams.idle.is_set()


async def test_a_blocked_user_is_refused_at_once_and_a_paused_table_refuses_everyone() -> None:
    sent: list[p.Frame] = []
    llm = FailingLLM(RuntimeError("must not be called"))
    streams = table(llm, sent)
    streams.blocked = frozenset({"42"})
    streams.on_frame(p.RequestHead(1, "POST", "/v1/chat/completions", (), "r1", "42", "Ada"))
    streams.on_frame(p.End(1))
    streams.paused = True
    streams.on_frame(p.RequestHead(2, "POST", "/v1/chat/completions", (), "r2", "43", "Bob"))
    streams.on_frame(p.End(2))
    assert llm.calls == 0
    codes = [(type(f), f.stream_id, getattr(f, "code", None)) for f in sent]
    assert codes == [(p.Error, 1, "user_blocked"), (p.Error, 2, "over_capacity")]
    assert len(streams) == 0 and streams.idle.is_set()


# -- requests served from the LLM socket's callbacks (a kept-alive connection is free) ------

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]
"""Writes one response; True keeps the connection for the next request."""


class Upstream:
    """A local LLM stand-in on loopback that answers each request as the test says."""

    def __init__(self) -> None:
        self.answers: asyncio.Queue[Answer] = asyncio.Queue()
        self.connections = 0
        self.hung_up = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> Upstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
                answer = await self.answers.get()
                if not await answer(reader, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            self.hung_up.set()
        finally:
            writer.close()


def reply(body: bytes) -> Answer:
    async def answer(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
        writer.write(head.encode() + b"\r\n\r\n" + body)
        await writer.drain()
        return True

    return answer


async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """A streamed answer that sends one event, then waits for the connector to hang up."""
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    await writer.drain()
    await reader.read()
    raise ConnectionResetError


class Served:
    """A table of streams in front of a real LocalLLM, and the frames it sent."""

    def __init__(self, url: str) -> None:
        self.sent: list[p.Frame] = []
        self.llm = LocalLLM(url)
        self.streams = Streams(
            llm=self.llm,
            board=StatusBoard(),
            events=RequestEvents(),
            max_concurrency=8,
            send=self.sent.append,
            discard=lambda _stream_id: None,
        )

    async def warm(self, upstream: Upstream, *then: Answer) -> None:
        """Serve a first request, which leaves a kept-alive connection; queue `then` after it."""
        for answer in (reply(b"first"), *then):
            upstream.answers.put_nowait(answer)
        self.request(1)
        await self.ended(1)

    def request(self, sid: int) -> None:
        body = b'{"model": "m", "messages": []}'
        headers = (("content-type", "application/json"),)
        self.streams.on_frame(
            p.RequestHead(sid, "POST", "/v1/chat/completions", headers, f"r{sid}")
        )
        self.streams.on_frame(p.RequestBody(sid, body))
        self.streams.on_frame(p.End(sid))

    def of(self, sid: int) -> list[p.Frame]:
        return [f for f in self.sent if getattr(f, "stream_id", None) == sid]

    async def ended(self, sid: int) -> list[p.Frame]:
        """The stream's frames once it ended (End or Error)."""
        async with asyncio.timeout(10):
            while not any(isinstance(f, p.End | p.Error) for f in self.of(sid)):
                await asyncio.sleep(0.01)
        return self.of(sid)

    def body(self, sid: int) -> bytes:
        return b"".join(f.data for f in self.of(sid) if isinstance(f, p.ResponseBody))


async def test_a_request_on_a_free_kept_alive_connection_is_served_without_a_task() -> None:
    async with Upstream() as upstream:
        served = Served(upstream.url)
        for answer in (b'{"n": 1}', b'{"n": 2}'):
            upstream.answers.put_nowait(reply(answer))
        served.request(1)  # the first one connects, from a task
        await served.ended(1)
        served.request(2)
        assert not served.streams._tasks  # the second went out from the End frame's callback
        frames = await served.ended(2)
        assert [type(f) for f in frames] == [p.ResponseHead, p.ResponseBody, p.End]
        assert served.body(1) == b'{"n": 1}' and served.body(2) == b'{"n": 2}'
        assert upstream.connections == 1
        assert len(served.streams) == 0
        await served.llm.close()


async def test_a_kept_alive_connection_the_server_dropped_sends_the_request_again() -> None:
    async def drop(_reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> bool:
        return False  # read the request, then close without a byte of answer

    async with Upstream() as upstream:
        served = Served(upstream.url)
        await served.warm(upstream, drop, reply(b"second"))
        served.request(2)
        frames = await served.ended(2)
        assert [type(f) for f in frames] == [p.ResponseHead, p.ResponseBody, p.End]
        assert served.body(2) == b"second"
        assert upstream.connections == 2
        await served.llm.close()


async def test_a_cancel_hangs_up_on_the_llm_server_at_once() -> None:
    async with Upstream() as upstream:
        served = Served(upstream.url)
        await served.warm(upstream, endless)
        served.request(2)
        async with asyncio.timeout(10):
            while served.body(2) != b"hello":
                await asyncio.sleep(0.01)
        served.streams.on_frame(p.Cancel(2))
        await asyncio.wait_for(upstream.hung_up.wait(), 10)
        assert len(served.streams) == 0
        assert not any(isinstance(f, p.End | p.Error) for f in served.of(2))
        await served.llm.close()


async def test_a_body_larger_than_the_credit_waits_for_window_updates_in_order() -> None:
    big = bytes(range(256)) * 40  # 10,240 bytes
    async with Upstream() as upstream:
        served = Served(upstream.url)
        await served.warm(upstream, reply(big))
        served.streams.window = 1024
        served.request(2)
        async with asyncio.timeout(10):
            while not any(isinstance(f, p.End) for f in served.of(2)):
                if len(served.body(2)) % 1024 == 0 and served.body(2):
                    served.streams.on_frame(p.WindowUpdate(2, 1024))
                await asyncio.sleep(0.01)
        assert served.body(2) == big
        assert max(len(f.data) for f in served.of(2) if isinstance(f, p.ResponseBody)) <= 1024
        await served.llm.close()


async def test_a_response_cut_short_ends_in_an_error_after_what_arrived() -> None:
    async def cut(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        return False

    async with Upstream() as upstream:
        served = Served(upstream.url)
        await served.warm(upstream, cut)
        served.request(2)
        frames = await served.ended(2)
        assert [type(f) for f in frames] == [p.ResponseHead, p.ResponseBody, p.Error]
        assert served.body(2) == b"partial"
        assert cast(p.Error, frames[-1]).code == "llm_stream_failed"
        await served.llm.close()


async def test_a_bug_in_the_callbacks_ends_the_stream_with_an_error_and_hangs_up() -> None:
    async with Upstream() as upstream:
        served = Served(upstream.url)
        await served.warm(upstream, endless)
        relay = served.sent.append

        def broken(frame: p.Frame) -> None:
            if isinstance(frame, p.ResponseHead) and frame.stream_id == 2:
                raise RuntimeError("a bug while relaying the head")
            relay(frame)

        served.streams._send = broken
        served.request(2)
        frames = await served.ended(2)
        assert [(type(f), getattr(f, "code", None)) for f in frames] == [
            (p.Error, "connector_error")
        ]
        await asyncio.wait_for(upstream.hung_up.wait(), 10)
        assert len(served.streams) == 0
        await served.llm.close()


def free_slots(served: Served) -> int:
    return served.llm._pool._slots.free


async def test_a_cancel_in_the_same_pass_as_running_out_of_credit_frees_everything() -> None:
    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8192\r\n\r\n" + b"x" * 8192)
        await writer.drain()
        await reader.read()
        raise ConnectionResetError

    async with Upstream() as upstream:
        served = Served(upstream.url)
        await served.warm(upstream, big)
        slots = free_slots(served)
        streams = served.streams
        out_of_credit = streams._out_of_credit

        def then_cancel(stream: Any) -> bool:
            refused = out_of_credit(stream)  # spawns the task that would take the rest...
            streams.on_frame(p.Cancel(2))  # ...which is cancelled before its first step
            return refused

        streams._out_of_credit = then_cancel  # type: ignore[method-assign]
        streams.window = 1024
        served.request(2)
        await asyncio.wait_for(upstream.hung_up.wait(), 10)
        await asyncio.wait_for(streams.idle.wait(), 10)
        await asyncio.sleep(0)
        assert free_slots(served) == slots
        assert len(streams) == 0 and not streams._tasks
        await served.llm.close()


async def test_a_request_cancelled_with_its_end_still_tells_the_app_it_finished() -> None:
    async with Upstream() as upstream:
        served = Served(upstream.url)
        seen: list[Any] = []
        served.streams._events.subscribe(seen.append)
        headers = (("content-type", "application/json"),)
        streams = served.streams
        streams.on_frame(p.RequestHead(1, "POST", "/v1/chat/completions", headers, "r1"))
        streams.on_frame(p.RequestBody(1, b'{"model": "m"}'))
        streams.on_frame(p.End(1))  # no kept-alive connection yet: a task will serve it...
        streams.on_frame(p.Cancel(1))  # ...but the same message cancels it first
        await asyncio.wait_for(streams.idle.wait(), 10)
        await asyncio.sleep(0)
        assert [type(e).__name__ for e in seen] == ["RequestStarted", "RequestFinished"]
        assert seen[-1].outcome == "cancelled"
        assert free_slots(served) == 100
        await served.llm.close()


async def test_a_header_the_llm_request_cannot_carry_is_an_error_not_a_leak() -> None:
    async with Upstream() as upstream:
        served = Served(upstream.url)
        await served.warm(upstream)
        streams = served.streams
        headers = (("x-odd", "\udc41"),)  # the wire allows it; HTTP/1.1 bytes cannot hold it
        streams.on_frame(p.RequestHead(2, "POST", "/v1/chat/completions", headers, "r2"))
        streams.on_frame(p.End(2))
        frames = await served.ended(2)
        assert [(type(f), getattr(f, "code", None)) for f in frames] == [
            (p.Error, "connector_error")
        ]
        assert free_slots(served) == 100
        await served.llm.close()


async def test_a_head_and_a_broken_body_in_one_packet_relay_the_head_first() -> None:
    async def broken(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        await writer.drain()
        return False

    async with Upstream() as upstream:
        served = Served(upstream.url)
        await served.warm(upstream, broken)
        served.request(2)
        frames = await served.ended(2)
        assert [type(f) for f in frames] == [p.ResponseHead, p.Error]
        assert cast(p.Error, frames[-1]).code == "llm_stream_failed"
        await served.llm.close()
