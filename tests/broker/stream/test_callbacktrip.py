"""The express lane's plain request, served from callbacks (broker.stream.callbacktrip), end to end.

Each test drives a connector by hand (`FakeConnector`) and checks that the requests were
served from callbacks (`served`), and what the client and the connector saw.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from broker.server import BrokerServer
from shared import protocol as p
from tests.broker.accounts.test_accounts import store_key
from tests.broker.edge.test_express import post_bytes, read_response
from tests.broker.relay.test_misbehaving_connectors import FakeConnector, fakes
from tests.conftest import USER_KEY, MakeBroker
from tests.e2e.test_relay import CHAT
from tests.stub_llm import CHAT_BODY

__all__ = ["fakes"]  # a fixture, used by name

SSE = (("Content-Type", "text/event-stream"),)


def served(broker: BrokerServer) -> tuple[int, int]:
    """Requests the express lane took, and how many of them were served from callbacks."""
    assert broker.express is not None
    return broker.express.served, broker.express.from_callbacks


async def attach(broker: BrokerServer, fakes: list[FakeConnector]) -> FakeConnector:
    fake = await FakeConnector.attach(broker, ("stub-model",))
    fakes.append(fake)
    return fake


async def frames_until(fake: FakeConnector, kind: type[Any]) -> list[p.Frame]:
    """Frames from the broker up to the first of `kind`."""
    seen: list[p.Frame] = []
    while not any(isinstance(frame, kind) for frame in seen):
        seen.extend(p.decode(await asyncio.wait_for(fake.ws.recv(), 5)))  # type: ignore[arg-type]
    return seen


async def cancels(fake: FakeConnector) -> list[p.Frame]:
    """The Cancel frames the broker sent, up to the first one."""
    return [f for f in await frames_until(fake, p.Cancel) if isinstance(f, p.Cancel)]


async def send(fake: FakeConnector, *frames: p.Frame) -> None:
    await fake.ws.send(p.encode_many(frames))


def started(stream_id: int) -> tuple[p.Frame, ...]:
    """The head of an event stream and its first event, `data: {}`."""
    return p.ResponseHead(stream_id, 200, SSE), p.ResponseBody(stream_id, b"data: {}\n\n")


async def answer(fake: FakeConnector, body: bytes = CHAT_BODY) -> p.RequestHead:
    """Answer the next request `fake` is sent with `body`, whole."""
    head = await fake.next_request()
    sid = head.stream_id
    length = (("Content-Length", str(len(body))), ("Content-Type", "application/json"))
    await send(fake, p.ResponseHead(sid, 200, length), p.ResponseBody(sid, body), p.End(sid))
    return head


async def open_client(broker: BrokerServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", broker.port)


async def one_fake(
    make_broker: MakeBroker, fakes: list[FakeConnector], **settings: Any
) -> tuple[BrokerServer, FakeConnector, asyncio.StreamReader, asyncio.StreamWriter]:
    """A broker with one hand-driven connector, and a client connection to it."""
    broker = await make_broker(**settings)
    fake = await attach(broker, fakes)
    return broker, fake, *await open_client(broker)


async def test_a_plain_request_is_answered_unchanged_and_the_connection_kept(
    make_broker: MakeBroker, fakes: list[FakeConnector]
) -> None:
    broker, fake, reader, writer = await one_fake(make_broker, fakes)
    try:
        for n in range(2):
            writer.write(_post(f"req-cb-{n}"))
            head = await fake.next_request()
            assert head.request_id == f"req-cb-{n}"
            length = (("Content-Length", str(len(CHAT_BODY))), ("Content-Type", "application/json"))
            with capture_logs() as logs:
                await send(
                    fake,
                    p.ResponseHead(head.stream_id, 200, length),
                    p.ResponseBody(head.stream_id, CHAT_BODY),
                    p.End(head.stream_id),
                )
                status, headers, body = await read_response(reader)
            assert (status, body) == (200, CHAT_BODY)
            assert headers["x-request-id"] == f"req-cb-{n}"
            finished = [e for e in logs if e["event"] == "request finished"]
            assert finished[0]["outcome"] == "ok" and finished[0]["request_id"] == f"req-cb-{n}"
    finally:
        writer.close()
    assert served(broker) == (2, 2)
    assert broker.services.lifecycle.active == 0  # each was counted in flight, then out


def _post(request_id: str) -> bytes:
    return post_bytes(CHAT, "/v1/chat/completions", USER_KEY, f"X-Request-ID: {request_id}")


async def test_each_event_reaches_the_client_before_the_next_is_sent(
    make_broker: MakeBroker, fakes: list[FakeConnector]
) -> None:
    broker, fake, reader, writer = await one_fake(make_broker, fakes)
    try:
        writer.write(_post("req-stream"))
        head = await fake.next_request()
        await send(fake, p.ResponseHead(head.stream_id, 200, SSE))
        response_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"200 OK" in response_head and b"chunked" in response_head.lower()
        for n in range(3):
            event = b'data: {"n": %d}\n\n' % n
            await send(fake, p.ResponseBody(head.stream_id, event))
            chunk = await asyncio.wait_for(reader.readuntil(b"\n\n\r\n"), 5)
            assert chunk.endswith(event + b"\r\n")  # arrived before the next was sent
        await send(fake, p.End(head.stream_id))
        assert await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5) == b"0\r\n\r\n"
    finally:
        writer.close()
    assert served(broker) == (1, 1)


async def test_a_refusal_before_the_head_goes_to_another_connector(
    make_broker: MakeBroker, fakes: list[FakeConnector]
) -> None:
    broker = await make_broker()
    refuser = await attach(broker, fakes)
    answerer = await attach(broker, fakes)
    reader, writer = await open_client(broker)
    refused = 0
    try:
        for n in range(4):  # the connectors take turns, so the refuser is chosen in time
            writer.write(_post(f"req-{n}"))
            fake, head = await asyncio.wait_for(_first_head(refuser, answerer), 5)
            if fake is refuser:
                refused += 1
                await send(fake, p.Error(head.stream_id, "over_capacity", "busy"))
                head = await answerer.next_request()
                assert head.request_id == f"req-{n}"
            await send(
                answerer,
                p.ResponseHead(head.stream_id, 200, (("Content-Length", "2"),)),
                p.ResponseBody(head.stream_id, b"ok"),
                p.End(head.stream_id),
            )
            assert (await read_response(reader))[0::2] == (200, b"ok")
    finally:
        writer.close()
    assert refused, "the refusing connector was never chosen, so nothing was tested"
    assert served(broker) == (4, 4)


async def _first_head(*candidates: FakeConnector) -> tuple[FakeConnector, p.RequestHead]:
    waits = {asyncio.ensure_future(fake.next_request()): fake for fake in candidates}
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    task = done.pop()
    return waits[task], task.result()


async def test_a_connector_lost_before_the_head_is_retried_on_another(
    make_broker: MakeBroker, fakes: list[FakeConnector]
) -> None:
    broker = await make_broker()
    leaver = await attach(broker, fakes)
    answerer = await attach(broker, fakes)
    reader, writer = await open_client(broker)
    try:
        for n in range(4):
            writer.write(_post(f"req-{n}"))
            fake, head = await asyncio.wait_for(_first_head(leaver, answerer), 5)
            if fake is leaver:
                await leaver.ws.close()
                head = await answerer.next_request()
            await send(
                answerer,
                p.ResponseHead(head.stream_id, 200, (("Content-Length", "2"),)),
                p.ResponseBody(head.stream_id, b"ok"),
                p.End(head.stream_id),
            )
            assert (await read_response(reader))[0::2] == (200, b"ok")
            if fake is leaver:
                break
        else:
            pytest.fail("the leaving connector was never chosen, so nothing was tested")
    finally:
        writer.close()
    lane, callbacks = served(broker)
    assert lane == callbacks > 0


async def test_the_request_timeout_answers_504_before_the_head(
    make_broker: MakeBroker, fakes: list[FakeConnector]
) -> None:
    broker, fake, reader, writer = await one_fake(make_broker, fakes, request_timeout=0.3)
    try:
        writer.write(_post("req-slow"))
        head = await fake.next_request()
        status, _, body = await read_response(reader)
        assert status == 504
        assert json.loads(body)["error"]["code"] == "timeout"
        assert await cancels(fake) == [p.Cancel(head.stream_id)]
        writer.write(_post("req-next"))  # the connection goes on
        assert (await fake.next_request()).request_id == "req-next"
    finally:
        writer.close()
    assert served(broker) == (2, 2)


async def test_the_request_timeout_ends_a_started_stream_with_an_error_event(
    make_broker: MakeBroker, fakes: list[FakeConnector]
) -> None:
    broker, fake, reader, writer = await one_fake(make_broker, fakes, request_timeout=0.5)
    try:
        writer.write(_post("req-stalls"))
        head = await fake.next_request()
        await send(fake, *started(head.stream_id))
        status, _, body = await read_response(reader)  # whole, once the error event ends it
        assert status == 200
        assert body.startswith(b"data: {}\n\n")
        assert b'"timeout"' in body
        assert await cancels(fake) == [p.Cancel(head.stream_id)]
    finally:
        writer.close()
    assert served(broker) == (1, 1)


async def test_a_client_that_hangs_up_cancels_the_stream_and_is_counted(
    make_broker: MakeBroker, fakes: list[FakeConnector]
) -> None:
    broker, fake, reader, writer = await one_fake(make_broker, fakes)
    writer.write(_post("req-leaves"))
    head = await fake.next_request()
    await send(fake, *started(head.stream_id))
    await asyncio.wait_for(reader.readuntil(b"data: {}\n\n"), 5)
    with capture_logs() as logs:
        writer.close()
        cancelled = await cancels(fake)
    assert cancelled == [p.Cancel(head.stream_id)]
    finished = [e for e in logs if e["event"] == "request finished"]
    assert [(e["status"], e["outcome"]) for e in finished] == [(499, "cancelled")]
    assert served(broker) == (1, 1)


async def test_a_client_gone_as_the_connector_refuses_is_still_counted_once(
    make_broker: MakeBroker, fakes: list[FakeConnector]
) -> None:
    broker, fake, _, writer = await one_fake(make_broker, fakes)
    writer.write(_post("req-both"))
    head = await fake.next_request()
    (link,) = broker.services.relay.links
    connection = next(iter(broker.express.connections)) if broker.express else None
    assert connection is not None and connection.transport is not None
    with capture_logs() as logs:
        # In one turn of the loop: the client hangs up, and the connector refuses, so the retry's
        # task is cancelled before its first step.
        connection.transport.abort()
        link.receive([p.Error(head.stream_id, "over_capacity", "busy")])
        await asyncio.sleep(0.2)
    finished = [e for e in logs if e["event"] == "request finished"]
    assert [(e["status"], e["outcome"]) for e in finished] == [(499, "cancelled")]
    assert broker.services.lifecycle.active == 0  # a drain would not wait for it
    writer.close()


async def test_a_head_the_broker_cannot_write_stops_the_stream(
    make_broker: MakeBroker, fakes: list[FakeConnector]
) -> None:
    broker, fake, reader, writer = await one_fake(make_broker, fakes)
    writer.write(_post("req-bad-head"))
    head = await fake.next_request()
    # A header value with a lone surrogate: valid JSON, but no bytes can carry it (aiohttp
    # would leave it out), so both lanes answer 502 rather than write the head.
    payload = b'{"status": 200, "headers": [["X-Odd", "\\ud800"], ["Content-Length", "2"]]}'
    await fake.ws.send(
        p.HEADER.pack(p.FrameType.RESPONSE_HEAD, head.stream_id, len(payload)) + payload
    )
    assert await cancels(fake) == [p.Cancel(head.stream_id)]
    status, headers, body = await read_response(reader)
    writer.close()
    assert status == 502 and "x-odd" not in headers
    assert json.loads(body)["error"]["code"] == "connector_protocol_error"
    assert served(broker) == (1, 1)


async def test_a_failure_that_cuts_the_answer_keeps_what_was_already_written(
    make_broker: MakeBroker, fakes: list[FakeConnector]
) -> None:
    broker, fake, reader, writer = await one_fake(make_broker, fakes)
    writer.write(_post("req-cut"))
    head = await fake.next_request()
    length = (("Content-Length", "10"), ("Content-Type", "application/json"))
    await send(  # a body with a length has no error event: the connection is cut
        fake,
        p.ResponseHead(head.stream_id, 200, length),
        p.ResponseBody(head.stream_id, b"12345"),
        p.Error(head.stream_id, "upstream_failed", "boom"),
    )
    got = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"\r\n\r\n12345")
    assert served(broker) == (1, 1)


async def test_pipelined_requests_are_answered_in_order_each_from_callbacks(
    make_broker: MakeBroker, fakes: list[FakeConnector]
) -> None:
    broker, fake, reader, writer = await one_fake(make_broker, fakes)
    try:
        writer.write(_post("req-first") + _post("req-second"))  # in one write
        for name in ("first", "second"):
            body = name.encode()
            assert (await answer(fake, body)).request_id == f"req-{name}"
            status, headers, got = await read_response(reader)
            assert (status, got, headers["x-request-id"]) == (200, body, f"req-{name}")
    finally:
        writer.close()
    assert served(broker) == (2, 2)


async def test_a_bodiless_status_keeps_the_connection_for_the_next_request(
    make_broker: MakeBroker, fakes: list[FakeConnector]
) -> None:
    broker, fake, reader, writer = await one_fake(make_broker, fakes)
    try:
        for status in (204, 304):
            writer.write(_post(f"req-{status}"))
            sid = (await fake.next_request()).stream_id
            await send(
                fake, p.ResponseHead(sid, status, ()), p.ResponseBody(sid, b"junk"), p.End(sid)
            )
            got, headers, body = await read_response(reader)
            assert (got, body) == (status, b"")
            assert "content-length" not in headers and "transfer-encoding" not in headers
        writer.write(_post("req-after"))  # nothing of the junk is left in the connection
        await answer(fake, b"ok")
        assert (await read_response(reader))[0::2] == (200, b"ok")
    finally:
        writer.close()
    assert served(broker) == (3, 3)


@pytest.mark.parametrize(
    ("after", "code"),
    [
        (lambda sid: (p.ResponseHead(sid, 200, SSE),), "connector_protocol_error"),
        (lambda sid: (p.Error(sid, "upstream_failed", "crashed"),), "upstream_failed"),
        (lambda sid: (p.Error(sid, "over_capacity", "busy"),), "over_capacity"),  # too late
        (lambda sid: (), "connector_disconnected"),  # the connector goes away
    ],
    ids=["second-head", "error", "refusal-after-head", "link-lost"],
)
async def test_a_failure_after_the_head_ends_the_stream_with_an_error_event(
    make_broker: MakeBroker,
    fakes: list[FakeConnector],
    after: Callable[[int], tuple[p.Frame, ...]],
    code: str,
) -> None:
    broker, fake, reader, writer = await one_fake(make_broker, fakes)
    try:
        writer.write(_post("req-fails"))
        sid = (await fake.next_request()).stream_id
        with capture_logs() as logs:
            await send(fake, *started(sid), *after(sid))
            if not after(sid):
                await fake.ws.close()
            status, _, body = await read_response(reader)
        assert status == 200  # the head was out: the error comes as the stream's last event
        event = body.removeprefix(b"data: {}\n\n")
        assert event.startswith(b"data: ") and event.endswith(b"\n\n")
        assert json.loads(event[6:])["error"]["code"] == code
        finished = [e for e in logs if e["event"] == "request finished"]
        assert [e["outcome"] for e in finished] == ["error"]
        assert broker.services.lifecycle.active == 0
        writer.write(_post("req-next"))  # the stream ended cleanly: the connection goes on
        linked = bool(after(sid))
        if linked:
            await answer(fake)
        assert (await read_response(reader))[0] == (200 if linked else 503)
    finally:
        writer.close()
    assert served(broker) == (2, 2 if linked else 1)  # with no connector left, the usual way


async def test_a_body_before_the_head_answers_502(
    make_broker: MakeBroker, fakes: list[FakeConnector]
) -> None:
    broker, fake, reader, writer = await one_fake(make_broker, fakes)
    try:
        writer.write(_post("req-no-head"))
        sid = (await fake.next_request()).stream_id
        await send(fake, p.ResponseBody(sid, b"data: {}\n\n"))
        status, _, body = await read_response(reader)
        assert status == 502
        assert json.loads(body)["error"]["code"] == "connector_protocol_error"
        assert await cancels(fake) == [p.Cancel(sid)]
    finally:
        writer.close()
    assert served(broker) == (1, 1)


@pytest.mark.parametrize(
    ("limit", "code", "from_callbacks"),
    [
        ({"key_rpm": 2}, "rate_limit_exceeded", 2),
        # Each answer used 7 tokens. The first request loads the day's count from the store,
        # the usual way; the second, from callbacks, adds its 7 to the count.
        ({"key_daily_tokens": 10}, "daily_token_limit_exceeded", 1),
    ],
    ids=["rpm", "daily-tokens"],
)
async def test_a_request_served_from_callbacks_counts_against_the_limits(
    make_broker: MakeBroker,
    fakes: list[FakeConnector],
    limit: dict[str, int],
    code: str,
    from_callbacks: int,
) -> None:
    broker, fake, reader, writer = await one_fake(make_broker, fakes, **limit)
    try:
        for n in range(2):
            writer.write(_post(f"req-allowed-{n}"))
            await answer(fake)
            assert (await read_response(reader))[0] == 200
        writer.write(_post("req-over"))
        status, headers, body = await read_response(reader)
    finally:
        writer.close()
    assert status == 429 and int(headers["retry-after"]) >= 1
    assert json.loads(body)["error"]["code"] == code
    assert served(broker) == (3, from_callbacks)  # the refusal went the usual way


async def test_the_concurrency_limit_holds_while_a_stream_runs_from_callbacks(
    make_broker: MakeBroker, fakes: list[FakeConnector]
) -> None:
    broker, fake, reader, writer = await one_fake(make_broker, fakes, key_concurrency=1)
    other_reader, other_writer = await open_client(broker)
    try:
        writer.write(_post("req-held"))
        held = await fake.next_request()
        await send(fake, *started(held.stream_id))
        await asyncio.wait_for(reader.readuntil(b"data: {}\n\n"), 5)
        other_writer.write(_post("req-refused"))
        status, _, body = await read_response(other_reader)
        assert status == 429
        assert json.loads(body)["error"]["code"] == "concurrency_limit_exceeded"
        await send(fake, p.End(held.stream_id))
        await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
        other_writer.write(_post("req-after"))  # the lease was given back
        assert (await answer(fake)).request_id == "req-after"
        assert (await read_response(other_reader))[0] == 200
    finally:
        writer.close()
        other_writer.close()
    assert served(broker) == (3, 2)


async def test_a_store_key_is_served_from_callbacks_once_known_and_until_it_expires(
    make_broker: MakeBroker, fakes: list[FakeConnector]
) -> None:
    broker, fake, reader, writer = await one_fake(make_broker, fakes)
    key = await store_key(broker)
    request = post_bytes(CHAT, "/v1/chat/completions", key)
    try:
        for expected in ((1, 0), (2, 1), (3, 2)):  # looked up in the store, then known
            writer.write(request)
            await answer(fake)
            assert (await read_response(reader))[0] == 200
            assert served(broker) == expected
        user = await broker.services.store.find_user("kim")
        await broker.services.store.set_status(user.id, "blocked")
        async with asyncio.timeout(10):  # once the cached answer expires, the store says no
            while True:
                writer.write(request)
                answered = asyncio.ensure_future(read_response(reader))
                head = asyncio.ensure_future(fake.next_request())
                await asyncio.wait((answered, head), return_when=asyncio.FIRST_COMPLETED)
                if head.done():  # still cached: answer it
                    sid = head.result().stream_id
                    await send(fake, p.ResponseHead(sid, 204, ()), p.End(sid))
                else:
                    head.cancel()
                status, _, body = await answered
                if status == 403:
                    break
                await asyncio.sleep(0.1)
    finally:
        writer.close()
    assert json.loads(body)["error"]["code"] == "account_blocked"
    await broker.services.ledger.flush()
    rows = await broker.services.store.usage.rows()
    assert rows[0].user_id == rows[1].user_id == user.id  # each kept its user's books
    assert (rows[1].prompt_tokens, rows[1].completion_tokens) == (3, 4)


async def test_a_stop_lets_a_stream_from_callbacks_finish_then_closes_its_connection(
    make_broker: MakeBroker, fakes: list[FakeConnector]
) -> None:
    broker, fake, reader, writer = await one_fake(make_broker, fakes)
    try:
        writer.write(_post("req-drained"))
        head = await fake.next_request()
        await send(fake, *started(head.stream_id))
        await asyncio.wait_for(reader.readuntil(b"data: {}\n\n"), 5)
        stopping = asyncio.create_task(broker.stop())
        await asyncio.sleep(0.2)
        assert not stopping.done()  # the drain waits for the stream
        await send(fake, p.ResponseBody(head.stream_id, b"data: [DONE]\n\n"), p.End(head.stream_id))
        rest = await asyncio.wait_for(reader.read(), 5)  # to the end: the connection closes
        assert rest.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
        await asyncio.wait_for(stopping, 10)
    finally:
        writer.close()
    assert served(broker) == (1, 1)


@pytest.mark.parametrize("chunked", [False, True], ids=["from-callbacks", "in-a-task"])
async def test_a_stop_past_its_grace_ends_a_stream_and_tells_the_client_why(
    make_broker: MakeBroker, fakes: list[FakeConnector], chunked: bool
) -> None:
    broker, fake, reader, writer = await one_fake(make_broker, fakes, shutdown_grace=0.2)
    try:
        # A chunked upload is aiohttp's, in a task: both ways end the stream alike.
        writer.write(post_bytes(CHAT, "/v1/chat/completions", USER_KEY, chunked=chunked))
        head = await fake.next_request()
        await send(fake, *started(head.stream_id))
        await asyncio.wait_for(reader.readuntil(b"data: {}\n\n"), 5)
        with capture_logs() as logs:
            await asyncio.wait_for(broker.stop(), 10)
        rest = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    # The connector was sent away with the stream still open: the client is told why its
    # answer stops short.
    error = json.loads(rest.split(b"data: ", 1)[1].split(b"\n\n")[0])["error"]
    assert error["code"] == "connector_disconnected"
    assert "broker shutting down" in error["message"]
    finished = [e for e in logs if e["event"] == "request finished"]
    assert [e["outcome"] for e in finished] == ["error"]
    assert broker.services.lifecycle.active == 0
    assert served(broker) == ((0, 0) if chunked else (1, 1))
