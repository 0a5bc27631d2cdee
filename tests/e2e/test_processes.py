"""The real commands as separate processes: graceful SIGTERM, JSON logs, the demo."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

import aiohttp
import openai

from tests.stub_llm import StubLLM, sse_event

KEY = "sk-process-test-key"
TOKEN = "process-test-token"


class Proc:
    """A child process whose output lines are collected as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._new = asyncio.Event()
        assert process.stdout is not None and process.stderr is not None
        self._readers = [
            asyncio.create_task(self._collect(process.stdout)),
            asyncio.create_task(self._collect(process.stderr)),
        ]

    @classmethod
    async def start(cls, module: str, *args: str, env: dict[str, str] | None = None) -> Proc:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
            env=None if env is None else {**os.environ, **env},
        )
        return cls(process)

    async def _collect(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.lines.append(line.decode(errors="replace").rstrip("\n"))
            self._new.set()

    async def wait_line(self, match: Callable[[str], bool], timeout: float = 20) -> str:
        async with asyncio.timeout(timeout):
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if match(line):
                        return line
                seen = len(self.lines)
                if self.process.returncode is not None:
                    raise AssertionError("process exited:\n" + "\n".join(self.lines))
                self._new.clear()
                await self._new.wait()

    def json_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    async def signal_and_wait(self, sig: int, timeout: float = 20) -> int:
        if self.process.returncode is None:
            self.process.send_signal(sig)
        return await self.ended(timeout)

    async def ended(self, timeout: float = 20) -> int:
        """The exit status, once the process has exited and its output has reached its end
        (which a child process it left running would hold open)."""
        code = await asyncio.wait_for(self.process.wait(), timeout)
        await asyncio.wait_for(asyncio.gather(*self._readers), timeout)
        return code

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)


def event_named(name: str) -> Callable[[str], bool]:
    def match(line: str) -> bool:
        try:
            return bool(json.loads(line).get("event") == name)
        except ValueError:
            return False

    return match


async def start_pair(stub: StubLLM, procs: list[Proc]) -> tuple[Proc, Proc, str]:
    broker = await Proc.start(
        "broker.cli",
        "serve",
        "--host=127.0.0.1",
        "--port=0",
        f"--user-api-key={KEY}",
        f"--connector-token={TOKEN}",
        "--log-format=json",
    )
    procs.append(broker)
    port = json.loads(await broker.wait_line(event_named("broker listening")))["port"]
    connector = await Proc.start(
        "connector_app.cli",
        "--headless",
        f"--broker-url=ws://127.0.0.1:{port}/relay",
        f"--broker-token={TOKEN}",
        f"--llm-url={stub.url}/v1",
        "--log-format=json",
        "--name=proc-test",
    )
    procs.append(connector)
    await broker.wait_line(event_named("connector connected"))
    return broker, connector, f"http://127.0.0.1:{port}"


async def stream_while(
    url: str, request_id: str, action: Callable[[], None], events: int = 8
) -> bytes:
    """Start a paced stream, run `action` after the first event, return the whole body."""
    body = {
        "model": "stub-model",
        "stream": True,
        "messages": [{"role": "user", "content": "secret prompt text"}],
        "x_stub": {"mode": "events", "events": events, "interval": 0.1},
    }
    headers = {"Authorization": f"Bearer {KEY}", "X-Request-ID": request_id}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as resp,
    ):
        assert resp.status == 200
        received = await resp.content.readuntil(b"\n\n")
        action()
        return received + await resp.content.read()


async def test_sigterm_lets_in_flight_streams_finish_on_both_sides(
    stub: StubLLM, procs: list[Proc]
) -> None:
    broker, connector, url = await start_pair(stub, procs)
    expected = b"".join(sse_event(i) for i in range(8)) + b"data: [DONE]\n\n"

    # The connector is stopped mid-stream: the stream still completes.
    body = await stream_while(
        url, "proc-conn-1", lambda: connector.process.send_signal(signal.SIGTERM)
    )
    assert body == expected
    assert await connector.signal_and_wait(signal.SIGTERM) == 0

    # A new connector; now the broker is stopped mid-stream.
    connector2 = await Proc.start(
        "connector_app.cli",
        "--headless",
        f"--broker-url=ws{url[4:]}/relay",
        f"--broker-token={TOKEN}",
        f"--llm-url={stub.url}",
        "--log-format=json",
    )
    procs.append(connector2)
    await connector2.wait_line(event_named("connected to broker"))
    body = await stream_while(
        url, "proc-broker-1", lambda: broker.process.send_signal(signal.SIGTERM)
    )
    assert body == expected
    assert await broker.signal_and_wait(signal.SIGTERM) == 0
    # The connector was told to go away and is trying to come back, not dead.
    await connector2.wait_line(event_named("broker going away"))
    await connector2.wait_line(event_named("relay link down"))
    assert connector2.process.returncode is None
    assert await connector2.signal_and_wait(signal.SIGTERM) == 0

    # Both processes logged the request under its correlation id, as JSON; no prompt, no key.
    broker_ids = {line.get("request_id") for line in broker.json_lines()}
    connector_ids = {line.get("request_id") for line in connector.json_lines()}
    assert {"proc-conn-1", "proc-broker-1"} <= broker_ids
    assert "proc-conn-1" in connector_ids
    for proc in (broker, connector, connector2):
        text = "\n".join(proc.lines)
        assert KEY not in text and TOKEN not in text
        assert "secret prompt text" not in text


async def test_demo_answers_requests_and_stops_cleanly(procs: list[Proc]) -> None:
    demo = await Proc.start("broker.cli", "demo", "--echo", "--port=0")
    procs.append(demo)
    await demo.wait_line(lambda line: "Press Ctrl-C" in line)
    output = "\n".join(demo.lines)
    base_url = re.search(r"Base URL : (\S+)", output)
    key = re.search(r"API key  : (\S+)", output)
    assert base_url and key
    assert "curl" in output and "from openai import OpenAI" in output
    async with openai.AsyncOpenAI(base_url=base_url[1], api_key=key[1]) as client:
        reply = await client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "Hello over the relay"}]
        )
        assert reply.choices[0].message.content == "Hello over the relay"
        stream = await client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "one two three"}], stream=True
        )
        words = [c.choices[0].delta.content async for c in stream if c.choices[0].delta.content]
        assert "".join(words) == "one two three"
    assert await demo.signal_and_wait(signal.SIGINT) == 0
    assert demo.lines[-1] == "Stopped."


async def test_a_killed_demo_leaves_no_connector_running(procs: list[Proc]) -> None:
    # The demo's connector is a child process holding the same output pipes: they reach their
    # end only once it has exited too, which it does when the broker's end of its stdin closes.
    demo = await Proc.start("broker.cli", "demo", "--echo", "--port=0")
    procs.append(demo)
    await demo.wait_line(lambda line: "Press Ctrl-C" in line)
    assert await demo.signal_and_wait(signal.SIGKILL) == -signal.SIGKILL


async def test_a_demo_that_cannot_listen_says_so_and_starts_no_connector(
    procs: list[Proc],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        demo = await Proc.start("broker.cli", "demo", "--echo", f"--port={port}")
        procs.append(demo)
        assert await demo.ended() == 1
    assert f"cannot listen on 127.0.0.1:{port}" in demo.lines[-1]
    assert "--port 0" in demo.lines[-1]
    assert not any("echo" in line for line in demo.lines)


async def test_a_demo_whose_connector_fails_stops_and_says_why(procs: list[Proc]) -> None:
    bad = {"REMOTELLM_CONNECTOR_HEARTBEAT": "0"}  # the child reads its settings' variables
    demo = await Proc.start("broker.cli", "demo", "--echo", "--port=0", env=bad)
    procs.append(demo)
    assert await demo.ended() == 1
    output = "\n".join(demo.lines)
    assert "remotellm-connector: error: invalid setting 'heartbeat'" in output
    assert "the demo's connector stopped (exit status 2)" in demo.lines[-1]
    assert "Press Ctrl-C" not in output
