"""`remotellm-connector demo`: the connector half of `remotellm-broker demo`.

The broker's demo runs it as a child process (the broker package does not import the
connector): it serves a local LLM server it finds on the usual ports, or the built-in `echo`
model, to the broker at `--broker-url`, with the token from REMOTELLM_CONNECTOR_BROKER_TOKEN
(never a command-line argument, which other users of the machine can read). It stops on
SIGTERM or SIGINT, and when its standard input closes: the broker's demo holds that pipe, so
the connector ends with it even when the broker is killed outright.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
from collections.abc import Callable, Sequence

from aiohttp import web
from pydantic import SecretStr, ValidationError

from connector_app.core.connector import Connector
from connector_app.core.discovery import KNOWN_SERVERS, detect_local_server
from connector_app.core.echo import create_echo_app
from connector_app.core.settings import ConnectorSettings
from shared import eventloop
from shared.logging import configure_logging
from shared.settings import LOG_LEVELS, describe
from shared.signals import shutdown_signals

TOKEN_VARIABLE = "REMOTELLM_CONNECTOR_BROKER_TOKEN"


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{prog} demo",
        description="The connector of `remotellm-broker demo`: serves a local LLM server it "
        f"finds, or the built-in echo model; the token comes from {TOKEN_VARIABLE}. Stops on "
        "Ctrl-C or when its standard input closes.",
    )
    parser.add_argument("--broker-url", required=True, help="the broker's relay URL")
    parser.add_argument("--echo", action="store_true", help="serve the echo model, skip detection")
    parser.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS, default="warning")
    return parser


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


def _when_stdin_closes(then: Callable[[], None]) -> None:
    """Call `then` on the event loop once standard input reaches its end."""
    loop = asyncio.get_running_loop()

    def watch() -> None:
        while sys.stdin.buffer.read(4096):
            pass
        loop.call_soon_threadsafe(then)

    # A thread, because a pipe cannot be awaited on every platform's event loop; a daemon, so
    # that it never holds the process open once the connector has stopped.
    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()


async def run_demo(settings: ConnectorSettings, *, force_echo: bool = False) -> int:
    """Serve the demo's connector (`settings` with the LLM server it finds) until told to
    stop; 0 on a clean stop."""
    llm_url, echo = await _local_llm(force_echo)
    connector = Connector(settings.model_copy(update={"llm_url": llm_url}))
    stopping: list[asyncio.Task[None]] = []

    def stop() -> None:
        if not stopping:
            stopping.append(asyncio.create_task(connector.stop(grace=5.0)))

    try:
        with shutdown_signals(stop):
            _when_stdin_closes(stop)
            await connector.run()
            for task in stopping:
                await task
    finally:
        if echo is not None:
            await echo.cleanup()
    return 0


def main(prog: str, argv: Sequence[str]) -> int:
    """`remotellm-connector demo --broker-url URL [--echo]`."""
    args = build_parser(prog).parse_args(argv)
    token = os.environ.get(TOKEN_VARIABLE)
    if not token:
        print(
            f"{prog}: error: set {TOKEN_VARIABLE} to the broker's connector token", file=sys.stderr
        )
        return 2
    try:  # the other settings may come from REMOTELLM_CONNECTOR_* variables, as for --headless
        settings = ConnectorSettings(
            broker_url=args.broker_url,
            broker_token=SecretStr(token),
            llm_url="http://127.0.0.1",  # replaced by the server found (or the echo server)
            name="demo",
            max_concurrency=8,
            model=[],
            llm_api_key=None,
        )
    except ValidationError as exc:
        print(f"{prog}: error: {describe(exc)}", file=sys.stderr)
        return 2
    configure_logging(args.log_level, "console")
    return eventloop.run(run_demo(settings, force_echo=args.echo))
