"""`remotellm-connector pair --broker-url URL`: pair this connector by signing in on the broker.

Prints the link and the code, waits while a person approves it in a browser, then keeps the
token where the connector reads it: the OS keyring (`broker_token`, as the tray app stores
it) with the relay URL and name in `connector.yaml`; or, with `--to-file` or when no keyring
works, `connector.env` beside it (mode 0600), which the systemd unit reads. Exit codes: 0
paired, 1 denied, expired or failed, 2 usage, 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final, TextIO

from connector_app.core.pairing import Paired, PairingFailed, Sleep, Started, pair_connector
from connector_app.core.profile import Profile, ProfileStore, default_config_path
from connector_app.core.secrets import KeyringStore, KeyringUnavailable, SecretStore
from connector_app.core.trust import client_context
from shared.settings import ConfigError

ENV_NAME = "connector.env"
TOKEN_VAR = "REMOTELLM_CONNECTOR_BROKER_TOKEN"
URL_VAR = "REMOTELLM_CONNECTOR_BROKER_URL"
NAME_VAR = "REMOTELLM_CONNECTOR_NAME"


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{prog} pair",
        description="Pair this connector with a broker: approve it by signing in on the broker "
        "in a browser, and the token is stored for you (no token to copy).",
    )
    parser.add_argument(
        "--broker-url", required=True, help="the broker, e.g. https://llm.example.com"
    )
    parser.add_argument("--name", default=socket.gethostname(), help="connector name (host name)")
    parser.add_argument("--ca-file", type=Path, help="PEM CA bundle to trust for the broker")
    parser.add_argument(
        "--config", type=Path, help=f"connector.yaml to update (default {default_config_path()})"
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow plain http:// to a broker that is not on this machine (the token then "
        "crosses the network unencrypted)",
    )
    parser.add_argument(
        "--to-file",
        action="store_true",
        help=f"write the token to {ENV_NAME} (mode 0600) beside connector.yaml instead of the "
        "keyring: for the headless service",
    )
    return parser


SHELL_ESCAPED: Final = '\\"$`'
"""Escaped with a backslash inside double quotes: the same four for a POSIX shell and for
systemd's EnvironmentFile (its SHELL_NEED_ESCAPE), so both read the exact value back."""


def env_line(name: str, value: str) -> str:
    """`NAME="value"`, as a shell's `. file` and systemd's EnvironmentFile both read it."""
    quoted = "".join("\\" + c if c in SHELL_ESCAPED else c for c in value)
    return f'{name}="{quoted}"'


def write_env_file(path: Path, paired: Paired) -> None:
    """Set the token, relay URL and name in an env file (other lines kept), mode 0600."""
    wanted = {TOKEN_VAR: paired.token, URL_VAR: paired.relay_url, NAME_VAR: paired.name}
    kept = []
    if path.is_file():
        kept = [
            line
            for line in path.read_text().splitlines()
            if line.partition("=")[0].strip() not in wanted
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join([*kept, *(env_line(k, v) for k, v in wanted.items())]) + "\n")
    os.replace(temp, path)


def keyring_profile(
    config: Path, secrets: SecretStore | None, to_file: bool
) -> tuple[ProfileStore, Profile] | None:
    """The profile to update when the token goes to the keyring; None when it goes to the
    env file. Raises ConfigError for a connector.yaml that cannot be read, before any write."""
    if to_file or secrets is None:
        return None
    store = ProfileStore(config, secrets)
    profile = store.load()
    return None if profile.secrets_error else (store, profile)


def save(paired: Paired, config: Path, secrets: SecretStore | None, to_file: bool) -> str:
    """Keep the pairing's token and relay URL; says where, in words.

    connector.yaml is read (ConfigError) and written before the keyring, and put back if
    the keyring then refuses the token, so a failure leaves no half-done pairing behind.
    """
    target = keyring_profile(config, secrets, to_file)
    if target is not None and secrets is not None:
        store, profile = target
        before = config.read_bytes() if config.is_file() else None
        profile.values.update(broker_url=paired.relay_url, name=paired.name)
        store.save(profile, with_secrets=False)
        try:
            secrets.set("broker_token", paired.token)
        except KeyringUnavailable:
            if before is None:
                config.unlink(missing_ok=True)
            else:
                config.write_bytes(before)
        else:
            return f"the token is in the OS keyring; the broker URL is in {config}"
    env = config.with_name(ENV_NAME)
    write_env_file(env, paired)
    return f"the token and broker URL are in {env} (readable only by you)"


def instructions(started: Started, name: str) -> str:
    """What the person is asked to do, printed before waiting."""
    minutes = started.expires_in // 60
    return (
        f"Open {started.verification_uri_complete}\n"
        f"or go to {started.verification_uri} and type the code {started.user_code}\n"
        f'Sign in and approve the connector "{name}" (the code works for {minutes} '
        "minutes). Waiting... (Ctrl-C cancels)"
    )


async def pair(
    args: argparse.Namespace, out: TextIO, secrets: SecretStore | None, sleep: Sleep
) -> int:
    """Run one pairing; the exit code."""
    config = args.config or default_config_path()
    keyring_profile(config, secrets, args.to_file)  # a broken connector.yaml fails first
    paired = await pair_connector(
        args.broker_url,
        args.name,
        tls=client_context(args.ca_file),
        on_started=lambda started: print(instructions(started, args.name), file=out, flush=True),
        insecure=args.insecure,
        sleep=sleep,
    )
    where = save(paired, config, secrets, args.to_file)
    print(f'Paired as "{paired.name}"; {where}.', file=out)
    return 0


def main(
    prog: str,
    argv: Sequence[str],
    *,
    out: TextIO | None = None,
    secrets: SecretStore | None = None,
) -> int:
    """`remotellm-connector pair`: the exit code."""
    args = build_parser(prog).parse_args(argv)
    stream = out if out is not None else sys.stdout
    store = secrets if secrets is not None else KeyringStore()
    try:
        return asyncio.run(pair(args, stream, store, asyncio.sleep))
    except PairingFailed as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(
            f"{prog}: cannot update the configuration: {exc}; nothing was stored", file=sys.stderr
        )
        return 1
    except (OSError, ValueError) as exc:
        hint = " (or pass --insecure if you really mean it)" if "http://" in str(exc) else ""
        print(f"{prog}: error: {exc}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: cancelled; nothing was stored", file=sys.stderr)
        return 130
