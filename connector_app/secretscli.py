"""`remotellm-connector secrets set|delete|status`: the tray app's secrets in the OS keyring.

For scripted set-ups and for checking which keyring a build uses. A value is read from stdin
(a hidden prompt on a terminal), never from the command line, where other users of the machine
can read it in `ps`. Nothing here prints a value.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence
from typing import Final, TextIO

from connector_app.core.secrets import KeyringStore, KeyringUnavailable, SecretStore

NAMES: Final = {"broker-token": "broker_token", "llm-api-key": "llm_api_key"}
"""Command-line names and the keyring names (as the tray app stores them)."""


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{prog} secrets",
        description="The connector token and the LLM API key in the OS keyring (service "
        "`remotellm`), where the tray app reads them.",
        epilog="`set` reads the value from stdin (a hidden prompt on a terminal, otherwise the "
        f"first line), never from the command line: `{prog} secrets set broker-token < file`.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("set", "store a secret"), ("delete", "remove a secret")):
        sub = actions.add_parser(action, help=text)
        sub.add_argument("name", choices=sorted(NAMES), metavar="NAME", help=" or ".join(NAMES))
    actions.add_parser("status", help="the keyring in use and which secrets it holds")
    return parser


def read_value(label: str, stdin: TextIO) -> str:
    """A hidden prompt on a terminal; otherwise stdin's first line without its line ending."""
    if stdin.isatty():
        try:
            return getpass.getpass(f"{label}: ")
        except EOFError:  # Ctrl-D at the prompt: nothing typed
            return ""
    return stdin.readline().rstrip("\r\n")


def main(
    prog: str,
    argv: Sequence[str],
    store: KeyringStore | None = None,
    stdin: TextIO | None = None,
) -> int:
    """Run one `secrets` action; 0 on success, 1 when the keyring or the value fails, 130 on
    Ctrl-C (and 2 on a usage error, through argparse)."""
    parser = build_parser(prog)
    args, extra = parser.parse_known_args(argv)
    if extra:  # argparse would repeat them, and one may be a secret typed in the wrong place
        parser.error(
            f"{len(extra)} unexpected argument(s); a value is read from stdin, never from the "
            "command line, where `ps` shows it to every user"
        )
    store = store if store is not None else KeyringStore()
    try:
        if args.action == "status":
            print_status(store)
        elif args.action == "set":
            value = read_value(args.name, sys.stdin if stdin is None else stdin)
            if not value.strip():
                raise ValueError(f"the {args.name} is empty; nothing was stored")
            store.set(NAMES[args.name], value)
            print(f"{args.name} stored in the keyring ({store.describe()})")
        else:
            print(delete(store, args.name))
    except (KeyringUnavailable, ValueError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C at the prompt: a new line, not a traceback
        print(file=sys.stderr)
        return 130
    return 0


def print_status(store: KeyringStore) -> None:
    states = {name: stored(store, field) for name, field in NAMES.items()}
    print(f"keyring: {store.describe()}")
    for name, state in states.items():
        print(f"{name}: {'stored' if state else 'not stored'}")


def delete(store: KeyringStore, name: str) -> str:
    if not stored(store, NAMES[name]):
        return f"{name} was not stored in the keyring ({store.describe()})"
    store.set(NAMES[name], None)
    return f"{name} deleted from the keyring ({store.describe()})"


def stored(store: SecretStore, field: str) -> bool:
    return store.get(field) is not None
