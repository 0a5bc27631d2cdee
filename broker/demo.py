"""`remotellm-broker demo`: a broker, a fresh key and an in-process connector on this machine."""

from __future__ import annotations

import asyncio
import secrets
import sys

from aiohttp import web
from pydantic import SecretStr

from broker.cli import PROG
from broker.server import BrokerServer
from broker.settings import BrokerSettings
from connector_app.core.connector import Connector
from connector_app.core.discovery import KNOWN_SERVERS, detect_local_server
from connector_app.core.echo import create_echo_app
from connector_app.core.settings import ConnectorSettings
from shared.signals import shutdown_signals

READY_TIMEOUT = 15.0


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


async def _start_echo() -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(create_echo_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def _local_llm(force_echo: bool) -> tuple[str, web.AppRunner | None]:
    """The LLM server to serve: a detected one, or the built-in echo server (started here)."""
    found = None if force_echo else await detect_local_server()
    if found is not None:
        kind, llm_url = found
        print(f"Found {kind} at {llm_url}; serving its models.", flush=True)
        return llm_url, None
    echo, llm_url = await _start_echo()
    if not force_echo:
        ports = ", ".join(f"{name} {p}" for name, p in KNOWN_SERVERS)
        print(f"No local LLM server answered on the usual ports ({ports}).", flush=True)
    print(
        "Serving the built-in 'echo' model, which streams your message back"
        " (OpenAI, Anthropic /v1/messages and Ollama /api/* clients alike).",
        flush=True,
    )
    return llm_url, echo


def _demo_connector(port: int, token: str, llm_url: str) -> Connector:
    return Connector(
        ConnectorSettings(
            broker_url=f"ws://127.0.0.1:{port}/relay",
            broker_token=SecretStr(token),
            llm_url=llm_url,
            name="demo",
            max_concurrency=8,
            model=[],
            llm_api_key=None,
        )
    )


async def run_demo(port: int, *, force_echo: bool = False) -> int:
    """Run a broker, a fresh key and a connector until Ctrl-C; 0 on a clean stop."""
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
        await server.start()
    except OSError as exc:
        await server.stop()
        print(
            f"{PROG}: error: cannot listen on 127.0.0.1:{port} ({exc.strerror or exc});"
            " pass --port with a free port, or --port 0 for any",
            file=sys.stderr,
        )
        return 1
    llm_url, echo = await _local_llm(force_echo)
    connector = _demo_connector(server.port, token, llm_url)
    task = asyncio.create_task(connector.run())
    with shutdown_signals() as stop:
        try:
            if not await server.hub.wait_for_models(READY_TIMEOUT):
                print("Warning: the connector has not reported any model yet.", flush=True)
            print(banner(f"{server.base_url}/v1", key, list(server.hub.models())), flush=True)
            await stop.wait()
            print("Stopping...", flush=True)
        finally:
            await connector.stop(grace=5.0)
            await task
            await server.stop()
            if echo is not None:
                await echo.cleanup()
    print("Stopped.", flush=True)
    return 0
