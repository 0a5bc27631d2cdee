"""`remotellm-connector`: the connector, headless (`--headless`) or as a tray app."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from connector_app import demo
from connector_app.core.connector import Connector
from connector_app.core.settings import ConnectorSettings
from shared import eventloop
from shared.logging import configure_logging
from shared.settings import LOG_LEVELS, ConfigError, load
from shared.signals import shutdown_signals
from shared.version import package_version

PROG = "remotellm-connector"
log = structlog.get_logger("remotellm.connector")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="RemoteLLM connector: share a local LLM server through a broker.",
        epilog=f"other commands: `{PROG} autostart --help` (launch at login), `{PROG} secrets "
        f"--help` (the token and LLM key in the OS keyring), `{PROG} pair --help` (pair with a "
        f"broker by signing in), `{PROG} demo --help` (the connector "
        "that `remotellm-broker demo` starts)",
    )
    add = parser.add_argument
    add("--version", action="version", version=f"{PROG} {package_version()}")
    add("--headless", action="store_true", help="run without the tray app (servers, services)")
    add(
        "--config",
        type=Path,
        help="YAML file with settings (flags and env vars win over it); for the tray app, "
        "the connector.yaml to use instead of the one in the user config directory",
    )
    add("--broker-url", help="broker relay URL, e.g. wss://broker.example.com/relay")
    add("--broker-token", help="connector token from the broker's operator")
    add("--llm-url", help="local LLM server base URL (default http://127.0.0.1:11434)")
    add("--llm-api-key", help="API key of the local LLM server, if it wants one")
    add("--model", action="append", help="serve this model (repeatable; default: discover)")
    add(
        "--block-user",
        "--blocked-users",
        dest="blocked_users",
        action="append",
        help="refuse this user id's requests (repeatable)",
    )
    add("--max-concurrency", type=int, help="requests served at once (default 4)")
    add("--name", help="name shown to the broker operator (default: host name)")
    add(
        "--ca-file",
        type=Path,
        help="PEM CA bundle to trust for the broker instead of the system's store",
    )
    add("--insecure", action="store_true", default=None, help="allow ws:// to a remote host")
    add("--discovery-interval", type=float, help="seconds between model discoveries (30)")
    add("--heartbeat", type=float, help="seconds between pings to the broker (10)")
    add("--shutdown-grace", type=float, help="seconds to finish requests on shutdown (30)")
    add("--log-level", type=str.lower, choices=LOG_LEVELS)
    add("--log-format", choices=["json", "console"])
    return parser


async def run_headless(settings: ConnectorSettings) -> int:
    """Serve until SIGTERM/SIGINT, then drain and return 0."""
    connector = Connector(settings)
    stopping: list[asyncio.Task[None]] = []

    def on_signal() -> None:
        log.info("shutting down")
        stopping.append(asyncio.create_task(connector.stop()))

    log.info(
        "connector starting",
        broker_url=settings.broker_url,
        llm_url=settings.llm_url,
        max_concurrency=settings.max_concurrency,
    )
    with shutdown_signals(on_signal):
        await connector.run()
        for task in stopping:
            await task
    log.info("stopped")
    return 0


def autostart_main(argv: Sequence[str]) -> int:
    """`remotellm-connector autostart enable|disable|status [--headless]`."""
    from connector_app.core.autostart import Autostart, AutostartError

    parser = argparse.ArgumentParser(
        prog=f"{PROG} autostart", description="Start the connector when you log in."
    )
    parser.add_argument("action", choices=["enable", "disable", "status"])
    parser.add_argument(
        "--headless", action="store_true", help="the headless service instead of the tray app"
    )
    args = parser.parse_args(argv)
    auto = Autostart(Path.home())
    what = "headless connector" if args.headless else "tray app"
    try:
        if args.action == "enable":
            print(f"launch at login enabled for the {what}: {auto.enable(args.headless)}")
        elif args.action == "disable":
            print(f"launch at login disabled for the {what}: {auto.disable(args.headless)}")
        else:
            state = "enabled" if auto.is_enabled(args.headless) else "disabled"
            print(f"launch at login {state} for the {what} ({auto.path(args.headless)})")
    except AutostartError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    return 0


def has_display(environ: Mapping[str, str] | None = None, platform: str = sys.platform) -> bool:
    """Whether Qt can open a window; without one, Qt aborts the process (SIGABRT)."""
    env = os.environ if environ is None else environ
    if platform in ("darwin", "win32") or env.get("QT_QPA_PLATFORM"):
        return True
    return bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


TRAY_FLAGS = ("config", "log_level", "log_format", "headless")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["autostart"]:
        return autostart_main(argv[1:])
    if argv[:1] == ["secrets"]:
        from connector_app import secretscli

        return secretscli.main(PROG, argv[1:])
    if argv[:1] == ["pair"]:
        from connector_app import paircli

        return paircli.main(PROG, argv[1:])
    if argv[:1] == ["demo"]:
        return demo.main(PROG, argv[1:])
    args = build_parser().parse_args(argv)
    if not args.headless:
        given = [k for k, v in vars(args).items() if v not in (None, False) and k not in TRAY_FLAGS]
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            print(
                f"{PROG}: error: {flags} only apply with --headless; the tray app takes its "
                "settings from Settings… or REMOTELLM_CONNECTOR_* environment variables",
                file=sys.stderr,
            )
            return 2
        if not has_display():
            print(
                f"{PROG}: error: there is no display (DISPLAY and WAYLAND_DISPLAY are unset) for "
                "the tray app; run it with --headless",
                file=sys.stderr,
            )
            return 2
        from connector_app.qt.app import run_tray  # Qt is loaded only for the tray app

        return run_tray(args.config, args.log_level or "info", args.log_format or "console")
    fields = ConnectorSettings.model_fields
    cli: dict[str, Any] = {k: v for k, v in vars(args).items() if k in fields}
    try:
        settings = load(ConnectorSettings, cli, args.config)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    return eventloop.run(run_headless(settings))


if __name__ == "__main__":
    sys.exit(main())
