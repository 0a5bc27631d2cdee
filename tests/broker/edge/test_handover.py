"""The handover: the one module that couples the broker to aiohttp's server beyond its API."""

from __future__ import annotations

import ast
import asyncio
import contextvars
import email.utils
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import aiohttp
import aiohttp.typedefs
import pytest
from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.web_response import REASON_PHRASES
from packaging.requirements import Requirement

from broker.edge import handover
from broker.edge.handover import SERVER, ResponseHead, http_date
from shared import protocol as p
from shared import upgrade
from shared import websocket as ws
from tests.conftest import MakeBroker
from tests.raw_connector import RawConnector, parse_response, upgrade_request

ROOT = Path(__file__).resolve().parents[3]
HANDOVER = ROOT / "broker" / "edge" / "handover.py"

# -- writing heads as aiohttp does ----------------------------------------------------------


def test_every_status_line_carries_aiohttps_reason_phrase() -> None:
    for status in range(100, 600):
        expected = f"HTTP/1.1 {status} {REASON_PHRASES.get(status, '')}"
        assert ResponseHead.status_line(status) == expected


def test_the_server_header_is_aiohttps() -> None:
    assert SERVER == SERVER_SOFTWARE


def test_the_date_is_aiohttps_date_of_the_same_second() -> None:
    heads = ResponseHead()
    for _ in range(100):  # a second may turn between the two readings: read again
        before = int(time.time())
        theirs = rfc822_formatted_time()
        ours = heads.stamp()
        if int(time.time()) == before:
            assert ours == f"Date: {theirs}\r\nServer: {SERVER_SOFTWARE}"
            return
    pytest.fail("the second turned in each of 100 tries")


def _instants() -> Iterator[int]:
    """Every weekday and month, single-digit days and hours, leap days, other centuries."""
    day = 86_400
    yield from (0, 951_782_400, 951_868_799, 2_147_483_647, 4_107_542_399, 253_402_300_799)
    for start in (1_700_000_000, 1_709_164_800):  # 2023, and the leap year 2024
        yield from range(start, start + 400 * day, day + 3_601)


def test_the_date_has_the_http_date_format_the_standard_library_writes() -> None:
    for instant in _instants():
        assert http_date(instant) == email.utils.formatdate(instant, usegmt=True)


def test_the_date_is_formatted_again_only_when_the_second_turns() -> None:
    now = [86_400.2]
    heads = ResponseHead(clock=lambda: now[0])
    first = heads.stamp()
    assert first == f"Date: Fri, 02 Jan 1970 00:00:00 GMT\r\nServer: {SERVER}"
    now[0] = 86_400.9
    assert heads.stamp() is first
    now[0] = 86_401.0
    assert heads.stamp() == f"Date: Fri, 02 Jan 1970 00:00:01 GMT\r\nServer: {SERVER}"


# -- giving a connection to aiohttp ---------------------------------------------------------

_REQUEST: contextvars.ContextVar[str] = contextvars.ContextVar("request")


class _Recorder(asyncio.Protocol):
    """Stands where aiohttp's protocol would: what it is given, and in which context."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.seen: list[str | None] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.seen.append(_REQUEST.get(None))

    def data_received(self, data: bytes) -> None:
        self.seen.append(_REQUEST.get(None))
        self.data += data


class _Giver(asyncio.Protocol):
    """Reads the first bytes of a connection, then hands it over from a request's context."""

    def __init__(self, recorder: _Recorder) -> None:
        self.recorder = recorder

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        # As the express lane does it: from a request's task, in that request's context.
        contextvars.copy_context().run(self._give, data)

    def _give(self, data: bytes) -> None:
        _REQUEST.set("req-1")
        handover.to_aiohttp(self.transport, lambda: self.recorder, data)


async def test_a_connection_given_to_aiohttp_keeps_its_bytes_and_no_request_context() -> None:
    recorder = _Recorder()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Giver(recorder), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"read by the lane ")
        async with asyncio.timeout(10):
            while not recorder.data:
                await asyncio.sleep(0.01)
        writer.write(b"then by aiohttp")
        async with asyncio.timeout(10):
            while len(recorder.data) < len(b"read by the lane then by aiohttp"):
                await asyncio.sleep(0.01)
    finally:
        writer.close()
        server.close()
        await server.wait_closed()
    assert bytes(recorder.data) == b"read by the lane then by aiohttp"
    assert set(recorder.seen) == {None}  # the request's id did not follow the connection


# -- taking a connection from aiohttp -------------------------------------------------------


async def test_aiohttp_still_keeps_the_bytes_behind_an_upgrade_where_the_handover_reads_them() -> (
    None
):
    """Fails, saying so, when a newer aiohttp moves or retypes `RequestHandler._message_tail`."""

    async def answer(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response()

    protocol = web.Server(answer)()
    assert handover.parser_tail(protocol) == b""  # raises AiohttpMoved, with what to do


async def test_an_upgrade_taken_from_aiohttp_is_the_bytes_the_client_sent() -> None:
    sent = (
        b"GET /relay?x=1 HTTP/1.1\r\nHost: b\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"X-Odd: Kept As Sent\r\n\r\n"
    )
    behind = b"\x82\x05hello, sent right behind the head"
    taken: list[bytes] = []

    async def take(request: web.BaseRequest) -> web.StreamResponse:
        got = handover.from_aiohttp(request)
        assert got is not None
        taken.append(got.received)
        got.transport.set_protocol(asyncio.Protocol())  # as the relay's socket takes it
        got.transport.write(b"taken")
        got.transport.close()
        handover.back_to_aiohttp(request)
        return web.Response(status=101)

    runner = web.ServerRunner(web.Server(take))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = runner.server
    assert server is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", runner.addresses[0][1])
    try:
        writer.write(sent + behind)
        assert await asyncio.wait_for(reader.read(), 10) == b"taken"  # and nothing of aiohttp's
        async with asyncio.timeout(10):
            while server.connections:
                await asyncio.sleep(0.01)  # aiohttp forgot the connection it gave away
    finally:
        writer.close()
        await runner.cleanup()
    assert taken == [sent + behind]


async def test_a_hello_sent_with_an_upgrade_on_a_pooled_connection_is_not_lost(
    make_broker: MakeBroker,
) -> None:
    """The upgrade reaches aiohttp (not the first request): the hello behind it sits in its
    parser, and the relay must still get it."""
    broker = await make_broker()
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    raw = RawConnector(reader, writer)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: b\r\n\r\n")
        status, headers, _ = parse_response(await reader.readuntil(b"\r\n\r\n"))
        await reader.readexactly(int(headers["content-length"]))
        assert status == 200
        request, key = upgrade_request(broker.port)
        hello = p.encode(p.Hello(p.PROTOCOL_VERSION, "eager", ("m",), 1))
        writer.write(request + ws.encode_frame(ws.OP_BINARY, hello, mask=True))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        upgrade.check_response(head[:-4], key)
        welcome = await raw.next_event()
        assert isinstance(welcome, ws.Message)
        assert isinstance(p.decode(welcome.data)[0], p.Welcome)
        assert [link.name for link in broker.hub.links] == ["eager"]
    finally:
        raw.close()


def test_aiohttp_is_capped_below_a_version_the_handover_was_not_checked_on() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    requirement = next(
        Requirement(line)
        for line in pyproject["project"]["dependencies"]
        if Requirement(line).name == "aiohttp"
    )
    assert any(spec.operator == "<" for spec in requirement.specifier), (
        "broker/edge/handover.py reads a private attribute of aiohttp: keep its cap"
    )
    assert requirement.specifier.contains(aiohttp.__version__)


# -- nothing else reaches into aiohttp ------------------------------------------------------

_PUBLIC: dict[str, frozenset[str]] = {
    "aiohttp": frozenset(aiohttp.__all__) | {"web", "typedefs", "__version__"},
    "aiohttp.web": frozenset(web.__all__),
    "aiohttp.typedefs": frozenset(
        name for name in vars(aiohttp.typedefs) if not name.startswith("_")
    ),
}
"""The modules of aiohttp the broker may use, and their public names."""

_PRIVATE_ATTRIBUTES = frozenset({"_message_tail"})
"""aiohttp's private attributes the handover reads, by attribute or by name."""


def _from_aiohttp(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
        return [name for name in names if name.startswith("aiohttp.") and name not in _PUBLIC]
    module = node.module or ""
    if module != "aiohttp" and not module.startswith("aiohttp."):
        return []
    if module not in _PUBLIC:
        return [module]
    return [f"{module}.{alias.name}" for alias in node.names if alias.name not in _PUBLIC[module]]


def _reached(node: ast.Attribute) -> list[str]:
    if node.attr in _PRIVATE_ATTRIBUTES:
        return [node.attr]
    if isinstance(node.value, ast.Name) and node.value.id in ("aiohttp", "web"):
        module = "aiohttp" if node.value.id == "aiohttp" else "aiohttp.web"
        if node.attr not in _PUBLIC[module]:
            return [f"{node.value.id}.{node.attr}"]
    return []


def aiohttp_internals(source: str) -> list[str]:
    """What the source takes from aiohttp beyond the public names (`__all__`) of `aiohttp`,
    `aiohttp.web` and `aiohttp.typedefs`, or the private attributes the handover reads."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            found += _from_aiohttp(node)
        elif isinstance(node, ast.Attribute):
            found += _reached(node)
        elif isinstance(node, ast.Constant) and node.value in _PRIVATE_ATTRIBUTES:
            found.append(node.value)
    return found


@pytest.mark.parametrize(
    "source",
    [
        "from aiohttp.web_response import REASON_PHRASES",
        "from aiohttp import helpers",
        "import aiohttp.http",
        "from aiohttp.web import _run_app",
        "import aiohttp\naiohttp.http.SERVER_SOFTWARE",
        "from aiohttp import web\nweb.web_protocol",
        "request.protocol._message_tail",
        "getattr(request.protocol, '_message_tail', b'')",
    ],
)
def test_an_aiohttp_internal_is_found(source: str) -> None:
    assert aiohttp_internals(source)


def test_public_aiohttp_names_are_not_internals() -> None:
    source = (
        "import aiohttp\nfrom aiohttp import web, ClientSession\n"
        "from aiohttp.typedefs import Handler\nfrom aiohttp_session import new_session\n"
        "web.Response\naiohttp.ClientTimeout\n"
    )
    assert aiohttp_internals(source) == []


def test_only_the_handover_reaches_into_aiohttp() -> None:
    offenders = {
        str(path.relative_to(ROOT)): found
        for path in sorted((ROOT / "broker").rglob("*.py"))
        if path != HANDOVER and (found := aiohttp_internals(path.read_text()))
    }
    assert offenders == {}, (
        "only broker/edge/handover.py may use aiohttp beyond aiohttp, aiohttp.web and "
        "aiohttp.typedefs' public names"
    )
