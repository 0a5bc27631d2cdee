"""`remotellm-broker`: serve (default) or demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from broker.accounts.admin import add_commands
from broker.accounts.admin import run as run_admin
from broker.accounts.records import StoreError
from broker.demo import DemoError, run_demo
from broker.server import BrokerServer
from broker.settings import BrokerSettings
from shared import eventloop
from shared.logging import configure_logging
from shared.settings import LOG_LEVELS, ConfigError, load
from shared.signals import shutdown_signals
from shared.version import package_version

PROG = "remotellm-broker"
COMMANDS = ("serve", "demo", "users", "keys", "connectors", "usage")
log = structlog.get_logger("remotellm.broker")


def _serve_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--config", type=Path, help="YAML file with settings (flags and env vars win over it)")
    add("--host", help="address to listen on (default 0.0.0.0)")
    add("--port", type=int, help="TCP port (default 8443; 0 picks a free one)")
    add("--user-api-key", action="append", help="accept this user API key (repeatable)")
    add("--connector-token", action="append", help="accept this connector token (repeatable)")
    add("--log-level", type=str.lower, choices=LOG_LEVELS)
    add("--log-format", choices=["json", "console"])
    add("--max-body-size", type=int, help="largest request body in bytes (default 32 MiB)")
    add("--request-timeout", type=float, help="seconds per request end to end (default 600)")
    add("--connector-wait", type=float, help="seconds to hold a request for a connector (5)")
    add("--queue-timeout", type=float, help="seconds to wait for a busy connector (30)")
    add(
        "--max-user-share",
        type=float,
        help="share (0-1] of one connector's slots a user may hold while others wait (1: no cap)",
    )
    add("--head-timeout", type=float, help="seconds to send a whole request head (30)")
    add("--body-timeout", type=float, help="seconds a request body may pause (30)")
    add("--idle-timeout", type=float, help="seconds a kept-alive connection may idle (30)")
    add("--stall-timeout", type=float, help="seconds a client may take none of its answer (60)")
    add("--shutdown-grace", type=float, help="seconds to finish requests on SIGTERM (30)")
    add("--heartbeat", type=float, help="seconds between pings to connectors (15)")
    add("--tls-cert", type=Path, help="PEM certificate chain: serve HTTPS and WSS")
    add("--tls-key", type=Path, help="PEM private key for --tls-cert")
    _store_options(parser)
    add("--public-url", help="base URL users see (default: http://HOST:PORT of the request)")
    add("--gitlab-url", help="GitLab instance for sign-in (default https://gitlab.com)")
    add("--gitlab-client-id", help="OAuth application id on GitLab: enables the portal")
    add("--gitlab-client-secret", help="OAuth application secret on GitLab")
    add(
        "--gitlab-allowed-group",
        action="append",
        help="only members of this GitLab group may sign in (repeatable)",
    )
    add(
        "--gitlab-read-groups",
        action="store_true",
        default=None,
        help="read each user's GitLab groups at sign-in (asks for read_api), so owners can "
        "share connectors with groups",
    )
    add(
        "--pairing",
        choices=["users", "admins", "off"],
        help="who may approve a connector's pairing by signing in (default users: whoever may "
        "sign in to the portal)",
    )
    add(
        "--session-secret",
        help="key for portal session cookies (default: kept in --data-dir; cluster mode: "
        "derived from --cluster-secret)",
    )
    add("--redis-url", help="Redis URL: cluster mode, state shared with other brokers")
    add("--cluster-secret", help="secret the cluster's brokers share (32+ characters)")
    add("--internal-url", help="base URL other brokers reach this one on (default HOST:PORT)")
    add(
        "--workers",
        type=int,
        help="run N broker processes on one port (SO_REUSEPORT; needs --redis-url)",
    )
    # Given by the supervisor of --workers to each worker (broker.cluster.workers.WORKER_FLAG).
    add("--worker-index", type=int, help=argparse.SUPPRESS)
    add("--key-rpm", type=int, help="requests per minute per API key (default 0: unlimited)")
    add("--key-concurrency", type=int, help="concurrent requests per API key (0: unlimited)")
    add("--key-daily-tokens", type=int, help="tokens per API key per UTC day (0: unlimited)")
    add(
        "--cors-origin",
        action="append",
        help="let browser pages from this origin call the API (repeatable; * for any)",
    )


def _store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help="directory of the store (default: per user)")
    parser.add_argument("--database-url", help="SQLAlchemy async URL (default: SQLite in data dir)")


def _admin_store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML file with settings")
    _store_options(parser)
    parser.add_argument(
        "--redis-url", help="the cluster's Redis: tell its brokers of the change at once"
    )
    parser.add_argument("--cluster-secret", help="the cluster's secret (with --redis-url)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="RemoteLLM broker: an OpenAI-compatible API in front of connected local LLMs.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {package_version()}")
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the broker (default)")
    _serve_options(serve)
    add_commands(commands, _admin_store_options)
    demo = commands.add_parser("demo", help="a broker, a key and a connector, on this machine")
    demo.add_argument("--port", type=int, default=8443, help="port (default 8443; 0 = any)")
    demo.add_argument(
        "--echo", action="store_true", help="serve the built-in echo model, skip detection"
    )
    demo.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS, default="warning")
    return parser


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def _settings_from(args: argparse.Namespace) -> BrokerSettings:
    fields = BrokerSettings.model_fields
    cli: dict[str, Any] = {k: v for k, v in vars(args).items() if k in fields}
    return load(BrokerSettings, cli, args.config)


async def serve(settings: BrokerSettings, worker: int | None = None) -> int:
    if worker is not None:
        structlog.contextvars.bind_contextvars(worker=worker)
    server = BrokerServer(settings, reuse_port=worker is not None)
    try:
        await server.start()
    except ssl.SSLError as exc:
        await server.stop()
        return _fail(f"cannot use --tls-cert/--tls-key: {exc.reason or exc}")
    except StoreError as exc:
        await server.stop()
        return _fail(str(exc))
    except OSError as exc:
        await server.stop()
        where = f"{settings.host}:{settings.port}"
        print(f"{PROG}: error: cannot listen on {where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if settings.tls is None and settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "serving plain HTTP on a non-loopback address: put a TLS-terminating proxy in front"
            " or pass --tls-cert and --tls-key"
        )
    if not settings.portal:
        log.info(
            "GitLab sign-in is off (no --gitlab-client-id): users get keys from"
            " `remotellm-broker keys create` or --user-api-key"
        )
    if settings.database_url:  # the URL may hold a password: name only the driver
        log.info("using store", driver=settings.database_url.partition(":")[0])
    else:
        log.info("using store", path=str(settings.data_dir / "remotellm.db"))
    log.info("broker listening", host=settings.host, port=server.port)
    watcher = _watch_supervisor() if worker is not None else None
    with shutdown_signals() as stop:
        try:
            await stop.wait()
            log.info("shutting down")
        finally:
            await server.stop()
            if watcher is not None:
                watcher.cancel()
    log.info("stopped")
    return 0


def _watch_supervisor() -> asyncio.Task[None]:
    from broker.cluster.workers import leave_with_parent

    return asyncio.create_task(leave_with_parent(os.getppid()))


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list[0] not in (*COMMANDS, "-h", "--help", "--version"):
        args_list.insert(0, "serve")
    args = build_parser().parse_args(args_list)
    if args.command == "demo":
        configure_logging(args.log_level, "console")
        with contextlib.suppress(KeyboardInterrupt):
            try:
                return eventloop.run(
                    run_demo(args.port, force_echo=args.echo, log_level=args.log_level)
                )
            except DemoError as exc:
                print(f"{PROG}: error: {exc}", file=sys.stderr)
                return 1
        return 0
    try:
        settings = _settings_from(args)
    except ConfigError as exc:
        return _fail(str(exc))
    if args.command != "serve":
        configure_logging("warning", "console")
        try:
            return eventloop.run(run_admin(args, settings))
        except StoreError as exc:  # the store could not be opened
            return _fail(str(exc))
    configure_logging(settings.log_level, settings.log_format)
    if args.workers is not None and args.worker_index is None:
        return _supervise(settings, args_list[1:], args.workers)
    return eventloop.run(serve(settings, args.worker_index))


def _supervise(settings: BrokerSettings, argv: list[str], count: int) -> int:
    from broker.cluster.workers import WorkersError, supervise

    try:
        return eventloop.run(supervise(settings, argv, count))
    except WorkersError as exc:
        return _fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
