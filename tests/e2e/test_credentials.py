"""Credentials stay at the broker: never forwarded, never logged, one way in for connectors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from shared.credentials import CREDENTIAL_HEADERS
from tests.broker.edge.test_express import post_bytes, read_response
from tests.conftest import CONNECTOR_TOKEN, USER_KEY, MakeBroker, Relay
from tests.e2e.test_processes import Proc, event_named
from tests.e2e.test_relay import CHAT, post

KEY = "sk-logs-test-key-0123456789"
SECRET = "secret-value-0123456789"
"""What the other credential headers carry: no more loggable than the key."""

SDK_CREDENTIAL_HEADERS = frozenset(
    {"proxy-authorization", "x-api-key", "api-key", "x-goog-api-key", "cookie"}
)
"""Besides `Authorization`: Anthropic's, Azure OpenAI's and Google's key headers, and others."""


# -- never forwarded -----------------------------------------------------------


@pytest.mark.parametrize("lane", ["express", "aiohttp"])
async def test_no_credential_header_reaches_the_llm(relay: Relay, lane: str) -> None:
    names = sorted(SDK_CREDENTIAL_HEADERS | CREDENTIAL_HEADERS - {"authorization"})
    extra = [f"{name}: {SECRET}-{name}" for name in names]
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.broker.port)
    try:
        writer.write(
            post_bytes(
                CHAT,
                "/v1/chat/completions",
                USER_KEY,
                *extra,
                "X-Kept: yes",
                chunked=lane == "aiohttp",
            )
        )
        status, _, _ = await read_response(reader)
    finally:
        writer.close()
    assert status == 200
    assert relay.broker.express is not None
    assert relay.broker.express.served == (1 if lane == "express" else 0)
    seen = relay.stub.seen[-1].headers
    assert seen["X-Kept"] == "yes"  # the request did get there, with its other headers
    for name in [*names, "authorization"]:
        assert name not in seen, name
    assert SECRET not in json.dumps(list(seen.items()))
    assert USER_KEY not in json.dumps(list(seen.items()))


async def test_azure_style_api_key_header_does_not_reach_the_llm(relay: Relay) -> None:
    headers = {"Authorization": f"Bearer {USER_KEY}", "Api-Key": USER_KEY}
    status, _, _ = await post(f"{relay.base_url}/chat/completions", CHAT, headers)
    assert status == 200
    assert "Api-Key" not in relay.stub.seen[-1].headers


# -- one way in for connectors -------------------------------------------------


async def test_the_connector_token_is_taken_only_as_a_bearer_authorization(
    make_broker: MakeBroker,
) -> None:
    broker = await make_broker()
    url = f"ws://127.0.0.1:{broker.port}/relay"
    for headers in ({"x-api-key": CONNECTOR_TOKEN}, {"Authorization": CONNECTOR_TOKEN}):
        with pytest.raises(InvalidStatus) as refused:
            async with ws_connect(url, additional_headers=headers, close_timeout=1):
                pass
        assert refused.value.response.status_code == 401
    bearer = {"Authorization": f"Bearer {CONNECTOR_TOKEN}"}
    async with ws_connect(url, additional_headers=bearer, close_timeout=1) as accepted:
        assert accepted.response is not None and accepted.response.status_code == 101


# -- never logged ----------------------------------------------------------------


def _malformed() -> list[tuple[bytes, bytes]]:
    """(a request to send first on the connection, or b"", then the malformed one)."""
    good_post = post_bytes(b"{}", "/v1/chat/completions", KEY)  # 400 at once, on the lane
    good_get = b"GET /health HTTP/1.1\r\nHost: b\r\n\r\n"  # served by aiohttp
    heads = [
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {KEY}\x01\r\n"
        "Content-Length: 2\r\n\r\n{}",
        f"GET /v1/models HTTP/1.1\r\nHost: b\r\nx-api-key: {KEY}\x01\r\n\r\n",
        f"GET /v1/models HTTP/1.1\r\nHost: b\r\nAuthorization\x01: Bearer {KEY}\r\n\r\n",
        f"GET /v1/models HTTP/1.1\r\nHost: b\r\nApi-Key: {KEY}\x7f\r\n\r\n",
        f"GET /v1/models HTTP/1.1\r\nHost: b\r\nx-goog-api-key: {KEY}\x00\r\n\r\n",
        f"GET /v1/models HTTP/1.1\r\nHost: b\r\nCookie: s={SECRET}\x01\r\n\r\n",
        f"GET /v1/models HTTP/1.1\r\nHost: b\r\nProxy-Authorization: Basic {SECRET}\x01\r\n\r\n",
        f"GET /v1/models HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {KEY}\r\n folded\x01\r\n\r\n",
        f"GET /v1/models?key={KEY}\x01 HTTP/1.1\r\nHost: b\r\n\r\n",
        f"GET /v1/mod\x00els HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {KEY}\r\n\r\n",
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {KEY}\r\n"
        "Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    ]
    cases = []
    for head in heads:
        raw = head.encode("latin-1")
        cases += [(b"", raw), (good_post, raw), (good_get, raw)]
    # The relay's own lean parser, first on a connection, and aiohttp's later on one.
    upgrade = (
        "GET /relay HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    )
    for bad in (f"Authorization: Bearer {KEY}\x01", f"x-api-key: {KEY}", f"Auth\x00: {KEY}"):
        raw = f"{upgrade}{bad}\r\n\r\n".encode("latin-1")
        cases += [(b"", raw), (good_get, raw)]
    return cases


async def _start_broker(procs: list[Proc], pure_python_parser: bool) -> tuple[Proc, int]:
    env = dict(os.environ)
    if pure_python_parser:
        env["AIOHTTP_NO_EXTENSIONS"] = "1"  # aiohttp's other parser, with other messages
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broker.cli",
        "serve",
        "--host=127.0.0.1",
        "--port=0",
        f"--user-api-key={KEY}",
        f"--connector-token={CONNECTOR_TOKEN}",
        "--database-url=sqlite+aiosqlite:///:memory:",
        "--log-format=json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        env=env,
    )
    broker = Proc(process)
    procs.append(broker)
    port = json.loads(await broker.wait_line(event_named("broker listening")))["port"]
    return broker, int(port)


async def _send(port: int, first: bytes, malformed: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if first:
            writer.write(first)
            await read_response(reader)
        writer.write(malformed)
        return await asyncio.wait_for(reader.read(), 10)  # the 400, then the broker hangs up
    finally:
        writer.close()


@pytest.mark.parametrize("pure_python_parser", [False, True])
async def test_malformed_requests_leave_only_json_lines_without_secrets(
    procs: list[Proc], pure_python_parser: bool
) -> None:
    broker, port = await _start_broker(procs, pure_python_parser)
    for first, malformed in _malformed():
        answer = await _send(port, first, malformed)
        assert answer[:10] in (b"HTTP/1.1 4", b"HTTP/1.0 4"), answer
    assert await broker.signal_and_wait(signal.SIGTERM) == 0
    assert broker.lines, "the broker wrote nothing"
    for line in broker.lines:
        assert isinstance(json.loads(line), dict), line  # one JSON object per line, no traceback
        assert KEY not in line and SECRET not in line, line
    refused = [e for e in broker.json_lines() if e.get("logger") == "aiohttp.server"]
    assert refused, "aiohttp logged no refusal, so nothing was tested"
    assert all(e["level"] == "warning" and "error" in e for e in refused)
