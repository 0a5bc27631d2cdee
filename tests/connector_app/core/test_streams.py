"""The connector's stream table: how a request that fails here is reported to the broker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest

from connector_app.core.activity import RequestEvents
from connector_app.core.http1 import HTTPError
from connector_app.core.llm import LocalLLM
from connector_app.core.status import StatusBoard
from connector_app.core.streams import Streams
from shared import protocol as p


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
    await serve_one(streams, path="/admin/users")
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
