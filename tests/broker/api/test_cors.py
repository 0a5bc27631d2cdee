"""Browsers (CORS): preflights and the headers on answers, on both of the broker's lanes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Browser

from broker.cli import main
from broker.server import BrokerServer
from broker.settings import normalise_origin
from broker.stream.headers import response_headers
from tests.broker.edge.test_express import Client, post_bytes
from tests.conftest import USER_KEY, MakeBroker, MakeConnector, wait_models
from tests.e2e.test_portal_browser import chromium
from tests.e2e.test_relay import AUTH, CHAT
from tests.stub_llm import StubLLM

APP = "https://app.example.com"
OTHER = "https://evil.example.net"

__all__ = ["chromium"]  # a fixture, used by name


@pytest.fixture
async def served(
    stub: StubLLM, make_broker: MakeBroker, make_connector: MakeConnector
) -> AsyncIterator[Any]:
    async def serve(*origins: str) -> BrokerServer:
        broker = await make_broker(cors_origin=list(origins))
        await make_connector(broker, stub.url)
        await wait_models(broker, {"stub-model"})
        return broker

    yield serve


async def request(
    broker: BrokerServer, method: str, path: str, headers: dict[str, str], body: Any = None
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{broker.base_url}{path}", json=body, headers=headers) as resp,
    ):
        await resp.read()
        return resp.status, resp.headers


def preflight(origin: str, headers: str = "authorization, content-type") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": headers,
    }


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/api/chat", "/v1/models", "/v1/models/org/m:7b"]
)
async def test_a_preflight_from_an_allowed_origin_is_answered(served: Any, path: str) -> None:
    broker = await served(APP)
    asked = "authorization, content-type, x-stainless-os"
    status, headers = await request(broker, "OPTIONS", path, preflight(APP, asked))
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == APP
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert "GET" in headers["Access-Control-Allow-Methods"]
    allowed = {h.strip() for h in headers["Access-Control-Allow-Headers"].split(",")}
    expected = {"authorization", "content-type", "x-api-key", "anthropic-version", "x-stainless-os"}
    assert expected | {"x-request-id", "traceparent", "tracestate"} <= allowed
    assert int(headers["Access-Control-Max-Age"]) > 0
    assert "Origin" in headers.getall("Vary")
    assert "Access-Control-Allow-Credentials" not in headers


async def test_a_disallowed_origin_gets_no_cors_headers(served: Any, stub: StubLLM) -> None:
    broker = await served(APP)
    status, headers = await request(broker, "OPTIONS", "/v1/chat/completions", preflight(OTHER))
    assert status == 403
    assert not [name for name in headers if name.lower().startswith("access-control-")]
    status, headers = await request(
        broker, "POST", "/v1/chat/completions", {**AUTH, "Origin": OTHER}, CHAT
    )
    assert status == 200  # answered (a non-browser client may send any Origin), but not for pages
    assert not [name for name in headers if name.lower().startswith("access-control-")]


async def test_answers_and_errors_carry_the_origin_on_an_aiohttp_connection(
    served: Any,
) -> None:
    broker = await served(APP)
    for headers, body, want in [
        ({**AUTH, "Origin": APP}, CHAT, 200),
        ({"Origin": APP}, CHAT, 401),
        ({**AUTH, "Origin": APP}, {"model": "stub-model", "stream": True, **_events(3)}, 200),
    ]:
        status, answer = await request(broker, "POST", "/v1/chat/completions", headers, body)
        assert status == want
        assert answer["Access-Control-Allow-Origin"] == APP
        exposed = answer["Access-Control-Expose-Headers"].lower()
        assert "x-request-id" in exposed and "retry-after" in exposed
        assert "Origin" in answer.getall("Vary")
    status, answer = await request(broker, "GET", "/v1/models", {**AUTH, "Origin": APP})
    assert status == 200 and answer["Access-Control-Allow-Origin"] == APP
    status, answer = await request(broker, "GET", "/health", {"Origin": APP})
    assert status == 200 and "Access-Control-Allow-Origin" not in answer  # not an API path


async def test_a_cacheable_answer_says_it_varies_by_origin_whoever_asks(served: Any) -> None:
    """With a list of origins, a GET's answer differs by Origin (CORS headers or none): a cache
    between the broker and browsers must key on it, even when this request had no Origin."""
    broker = await served(APP)
    for headers in ({}, {"Origin": OTHER}, {"Origin": APP}):
        status, answer = await request(broker, "GET", "/api/version", headers)
        assert status == 200 and "Origin" in answer.getall("Vary", [])
    anyone = await served("*")
    status, answer = await request(anyone, "GET", "/api/version", {"Origin": OTHER})
    assert answer["Access-Control-Allow-Origin"] == "*" and "Vary" not in answer


def _events(n: int) -> dict[str, Any]:
    return {"messages": [], "x_stub": {"mode": "events", "events": n}}


async def test_a_browser_request_on_the_express_lane_goes_to_aiohttp_and_gets_cors(
    served: Any,
) -> None:
    broker = await served(APP)
    assert broker.express is not None
    client = Client(*await asyncio.open_connection("127.0.0.1", broker.port))
    try:
        status, headers, _ = await client.ask(post_bytes())  # no Origin: the express lane's
        assert status == 200 and broker.express.served == 1
        assert "access-control-allow-origin" not in headers
        status, headers, _ = await client.ask(
            post_bytes(CHAT, "/v1/chat/completions", USER_KEY, f"Origin: {APP}")
        )
        assert status == 200 and headers["access-control-allow-origin"] == APP
        assert broker.express.served == 1  # aiohttp answered it
        status, headers, _ = await client.ask(
            post_bytes(CHAT, "/v1/chat/completions", "sk-wrong", f"Origin: {APP}")
        )
        assert status == 401 and headers["access-control-allow-origin"] == APP
    finally:
        client.writer.close()
    fresh = Client(*await asyncio.open_connection("127.0.0.1", broker.port))
    try:  # a connection whose first request is a browser's
        raw = post_bytes(
            {"model": "stub-model", "stream": True, **_events(2)},
            "/v1/chat/completions",
            USER_KEY,
            f"Origin: {APP}",
        )
        status, headers, body = await fresh.ask(raw)
        assert status == 200 and headers["access-control-allow-origin"] == APP
        assert body.endswith(b"data: [DONE]\n\n")
        assert broker.express.served == 1
    finally:
        fresh.writer.close()


async def test_any_origin_gets_a_star_and_never_credentials(served: Any) -> None:
    broker = await served("*")
    status, headers = await request(broker, "OPTIONS", "/v1/messages", preflight(OTHER))
    assert status == 204 and headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in headers
    status, headers = await request(
        broker, "POST", "/v1/chat/completions", {**AUTH, "Origin": OTHER}, CHAT
    )
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in headers


async def test_without_an_allow_list_browsers_get_nothing(served: Any) -> None:
    broker = await served()
    status, headers = await request(broker, "OPTIONS", "/v1/chat/completions", preflight(APP))
    assert status == 405
    assert "Access-Control-Allow-Origin" not in headers
    status, headers = await request(
        broker, "POST", "/v1/chat/completions", {**AUTH, "Origin": APP}, CHAT
    )
    assert status == 200 and "Access-Control-Allow-Origin" not in headers


def test_the_local_servers_cors_headers_never_pass_the_relay() -> None:
    upstream = (
        ("Content-Type", "application/json"),
        ("Access-Control-Allow-Origin", "*"),
        ("access-control-allow-credentials", "true"),
        ("Access-Control-Allow-Headers", "*"),
    )
    assert response_headers(upstream) == [("Content-Type", "application/json")]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://App.Example.com/", "https://app.example.com"),
        ("http://localhost:3000", "http://localhost:3000"),
        ("chrome-extension://abcdef", "chrome-extension://abcdef"),
        ("*", "*"),
    ],
)
def test_origins_are_kept_as_browsers_send_them(given: str, expected: str) -> None:
    assert normalise_origin(given) == expected


@pytest.mark.parametrize(
    "given",
    ["https://app.example.com/path", "app.example.com", "null", "https://u@h", "", "https://a b"],
)
def test_what_is_not_an_origin_is_refused_at_start(
    given: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(["serve", "--cors-origin", given])
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2 and "cors_origin" in err
    assert err.strip().splitlines()[-1].startswith("remotellm-broker: error:")


async def test_a_page_in_a_real_browser_streams_a_chat_only_from_an_allowed_origin(
    served: Any, chromium: Browser
) -> None:
    async def index(_request: web.Request) -> web.Response:
        return web.Response(text="<html><body>an app</body></html>", content_type="text/html")

    page_app = web.Application()
    page_app.router.add_get("/", index)
    runner = web.AppRunner(page_app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        await _a_page_calls_the_broker(
            served, chromium, f"http://127.0.0.1:{runner.addresses[0][1]}"
        )
    finally:
        await runner.cleanup()


async def _a_page_calls_the_broker(served: Any, chromium: Browser, origin: str) -> None:
    """From a page at `origin`, a streamed chat from a broker that allows it, none from another."""
    broker = await served(origin)
    other = await served("https://elsewhere.example")
    script = """async ([url, key]) => {
        try {
            const response = await fetch(url, {
                method: "POST",
                headers: {"Authorization": "Bearer " + key, "Content-Type": "application/json",
                          "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
                body: JSON.stringify({model: "stub-model", stream: true, messages: [],
                                      x_stub: {mode: "events", events: 3}}),
            });
            const text = await response.text();
            return {status: response.status, id: response.headers.get("x-request-id"), text};
        } catch (error) {
            return {error: String(error)};
        }
    }"""
    context = await chromium.new_context()
    try:
        page = await context.new_page()
        await page.goto(origin)
        url = f"{broker.base_url}/v1/chat/completions"
        answer = await page.evaluate(script, [url, USER_KEY])
        assert answer["status"] == 200 and answer["id"]
        assert answer["text"].endswith("data: [DONE]\n\n") and "tok2" in answer["text"]
        refused = await page.evaluate(script, [f"{other.base_url}/v1/chat/completions", USER_KEY])
        assert "error" in refused  # the browser keeps the answer from the page
    finally:
        await context.close()
