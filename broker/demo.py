"""`remotellm-broker demo`: a broker, a fresh key and an in-process connector on this machine."""

from __future__ import annotations

import asyncio
import secrets
import sys

from aiohttp import web
from pydantic import SecretStr

from broker.cli import PROG, until_signalled
from broker.server import BrokerServer
from broker.settings import BrokerSettings
from connector_app.core.connector import Connector
from connector_app.core.discovery import KNOWN_SERVERS, detect_local_server
from connector_app.core.echo import create_echo_app
from connector_app.core.settings import ConnectorSettings

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


async def run_demo(port: int, *, force_echo: bool = False) -> int:
    key = f"sk-demo-{secrets.token_hex(16)}"
    token = secrets.token_urlsafe(32)
    settings = BrokerSettings(
        host="127.0.0.1",
        port=port,
        user_api_key=[SecretStr(key)],
        connector_token=[SecretStr(token)],
        shutdown_grace=5.0,
    )
    server = BrokerServer(settings)
    try:
        await server.start()
    except OSError as exc:
        print(
            f"{PROG}: error: cannot listen on 127.0.0.1:{port} ({exc.strerror or exc});"
            " pass --port with a free port, or --port 0 for any",
            file=sys.stderr,
        )
        return 1
    echo: web.AppRunner | None = None
    found = None if force_echo else await detect_local_server()
    if found is not None:
        kind, llm_url = found
        print(f"Found {kind} at {llm_url}; serving its models.", flush=True)
    else:
        echo, llm_url = await _start_echo()
        if not force_echo:
            ports = ", ".join(f"{name} {p}" for name, p in KNOWN_SERVERS)
            print(f"No local LLM server answered on the usual ports ({ports}).", flush=True)
        print("Serving the built-in 'echo' model, which streams your message back.", flush=True)
    connector = Connector(
        ConnectorSettings(
            broker_url=f"ws://127.0.0.1:{server.port}/relay",
            broker_token=SecretStr(token),
            llm_url=llm_url,
            name="demo",
            max_concurrency=8,
            model=[],
            llm_api_key=None,
        )
    )
    task = asyncio.create_task(connector.run())
    try:
        hub = server.hub
        if not await hub.wait_for_models(READY_TIMEOUT):
            print("Warning: the connector has not reported any model yet.", flush=True)
        print(banner(f"{server.base_url}/v1", key, list(hub.models())), flush=True)
        await until_signalled()
        print("Stopping...", flush=True)
    finally:
        await connector.stop(grace=5.0)
        await task
        await server.stop()
        if echo is not None:
            await echo.cleanup()
    print("Stopped.", flush=True)
    return 0
