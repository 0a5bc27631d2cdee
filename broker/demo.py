"""`remotellm-broker demo`: a broker, a fresh key and a connector on this machine.

The connector runs as a child process (`remotellm-connector demo`, connector_app/demo.py), so
that the broker package never imports the connector's: the broker is deployed without it. The
child gets the connector token through its environment, never its command line (which every
user of the machine can read), serves a local LLM server it finds or the built-in `echo` model,
and is stopped before the broker: by closing its standard input, which it watches, so that it
also ends when the broker is killed outright.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
from collections.abc import Awaitable

from pydantic import SecretStr

from broker.server import BrokerServer
from broker.settings import BrokerSettings
from shared.signals import shutdown_signals

READY_TIMEOUT = 30.0
"""Seconds to wait for the connector's models before showing the banner anyway (the child
starts a Python, and may probe the usual ports for a local LLM server, first)."""
STOP_TIMEOUT = 10.0
"""Seconds the child has to drain (its grace is 5) before it is killed."""
TOKEN_VARIABLE = "REMOTELLM_CONNECTOR_BROKER_TOKEN"


class DemoError(Exception):
    """The demo cannot run; the message says why and what to do."""


def banner(base_url: str, key: str, models: list[str]) -> str:
    model = models[0] if models else "MODEL"
    return f"""
RemoteLLM demo is running.

  Base URL : {base_url}
  API key  : {key}
  Models   : {", ".join(models) or "(none yet)"}

Try it with curl:

  curl {base_url}/chat/completions \\
    -H "Authorization: Bearer {key}" \\
    -H "Content-Type: application/json" \\
    -d '{{"model": "{model}", "stream": true,
         "messages": [{{"role": "user", "content": "Hello from RemoteLLM"}}]}}'

or with the openai Python package:

  from openai import OpenAI
  client = OpenAI(base_url="{base_url}", api_key="{key}")
  reply = client.chat.completions.create(
      model="{model}", messages=[{{"role": "user", "content": "Hello from RemoteLLM"}}]
  )
  print(reply.choices[0].message.content)

Press Ctrl-C to stop.
"""


async def _start_connector(
    port: int, token: str, force_echo: bool, log_level: str
) -> asyncio.subprocess.Process:
    """`remotellm-connector demo` in a child process (this Python, so the same install)."""
    command = [sys.executable, "-m", "connector_app.cli", "demo"]
    command += [f"--broker-url=ws://127.0.0.1:{port}/relay", f"--log-level={log_level}"]
    return await asyncio.create_subprocess_exec(
        *command,
        *(["--echo"] if force_echo else []),
        env={**os.environ, TOKEN_VARIABLE: token},
        stdin=asyncio.subprocess.PIPE,
        # Its own session: Ctrl-C reaches the broker only, which stops the child first.
        start_new_session=True,
    )


async def _stop_connector(child: asyncio.subprocess.Process) -> None:
    """Close the child's standard input (its cue to drain and leave); kill it if it lingers."""
    if child.stdin is not None:
        child.stdin.close()
    try:
        async with asyncio.timeout(STOP_TIMEOUT):
            await child.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()


async def _first_of(*waits: Awaitable[object]) -> None:
    """Return when the first of `waits` is done; the others are cancelled."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


async def _serve(server: BrokerServer, child: asyncio.subprocess.Process, key: str) -> None:
    """Show the banner once the connector has reported its models (or after READY_TIMEOUT,
    with a warning), and serve until Ctrl-C or SIGTERM; DemoError if the child exits."""
    with shutdown_signals() as stop:
        models = asyncio.ensure_future(server.hub.wait_for_models(READY_TIMEOUT))
        await _first_of(models, stop.wait(), child.wait())
        if child.returncode is None and not stop.is_set():
            if not models.result():
                print("Warning: the connector has not reported any model yet.", flush=True)
            print(banner(f"{server.base_url}/v1", key, list(server.hub.models())), flush=True)
            await _first_of(stop.wait(), child.wait())
        if not stop.is_set():
            raise DemoError(f"the demo's connector stopped (exit status {child.returncode})")
        print("Stopping...", flush=True)


async def run_demo(port: int, *, force_echo: bool = False, log_level: str = "warning") -> int:
    """Run a broker, a fresh key and a connector until Ctrl-C; 0 on a clean stop.

    Raises DemoError when the broker cannot listen or the connector stops on its own.
    """
    key = f"sk-demo-{secrets.token_hex(16)}"
    token = secrets.token_urlsafe(32)
    settings = BrokerSettings(
        host="127.0.0.1",
        port=port,
        user_api_key=[SecretStr(key)],
        connector_token=[SecretStr(token)],
        shutdown_grace=5.0,
        # The demo leaves nothing behind: an in-memory store, a throwaway session key.
        database_url="sqlite+aiosqlite:///:memory:",
        session_secret=SecretStr(secrets.token_urlsafe(32)),
    )
    server = BrokerServer(settings)
    try:
        try:
            await server.start()
        except OSError as exc:
            raise DemoError(
                f"cannot listen on 127.0.0.1:{port} ({exc.strerror or exc});"
                " pass --port with a free port, or --port 0 for any"
            ) from None
        child = await _start_connector(server.port, token, force_echo, log_level)
        try:
            await _serve(server, child, key)
        finally:
            await _stop_connector(child)
    finally:
        await server.stop()
    print("Stopped.", flush=True)
    return 0
