"""`remotellm-connector secrets`: set, delete and status against a real Secret Service."""

from __future__ import annotations

import io
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from connector_app.core.secrets import NO_KEYRING_HELP, KeyringStore
from connector_app.secretscli import main
from tests.connector_app.core.test_profile import MemoryKeyring
from tests.secretservice import SecretService

ROOT = Path(__file__).parents[2]
TOKEN = "ct-4f1c9e2a-very-secret-token"
COMMAND = [sys.executable, "-m", "connector_app.cli", "secrets"]


def secrets(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The real command in a child process, stdin a pipe (as in a script)."""
    return subprocess.run(
        [*COMMAND, *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_set_status_and_delete_go_through_the_secret_service(
    secret_service: SecretService,
) -> None:
    """keyring finds the Secret Service by itself. Where keyrings.alt is installed too (it is
    a dependency), keyring chains the two, and status names the one that stores: the first."""
    env = secret_service.child_env()
    outputs: list[str] = []

    def run(*args: str, stdin: str = "") -> str:
        result = secrets(env, *args, stdin=stdin)
        outputs.extend((result.stdout, result.stderr))
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "broker-token: not stored" in run("status")
    assert run("set", "broker-token", stdin=f"{TOKEN}\nignored second line\n") == (
        "broker-token stored in the keyring (SecretService Keyring)\n"
    )
    assert secret_service.lookup("broker_token") == TOKEN  # read by libsecret, not keyring
    assert run("status") == (
        "keyring: SecretService Keyring\nbroker-token: stored\nllm-api-key: not stored\n"
    )
    assert run("delete", "broker-token").startswith("broker-token deleted from the keyring")
    assert secret_service.lookup("broker_token") is None
    assert run("delete", "broker-token").startswith("broker-token was not stored")
    assert "broker-token: not stored" in run("status")
    assert not [text for text in outputs if TOKEN in text]


def test_on_a_terminal_set_prompts_without_echoing_the_value(
    secret_service: SecretService,
) -> None:
    code, screen = type_at_prompt(secret_service, "llm-api-key", f"{TOKEN}\n".encode())
    assert code == 0, screen
    assert "llm-api-key stored in the keyring" in screen
    assert TOKEN not in screen
    assert secret_service.lookup("llm_api_key") == TOKEN


@pytest.mark.parametrize(
    ("typed", "code", "shown"),
    [
        (b"\x04", 1, "error: the broker-token is empty; nothing was stored"),
        (b"\x03", 130, ""),
    ],
    ids=["ctrl-d", "ctrl-c"],
)
def test_on_a_terminal_ctrl_d_or_ctrl_c_at_the_prompt_stores_nothing(
    secret_service: SecretService, typed: bytes, code: int, shown: str
) -> None:
    exit_code, screen = type_at_prompt(secret_service, "broker-token", typed)
    assert exit_code == code, screen
    assert shown in screen
    assert "Traceback" not in screen
    assert secret_service.lookup("broker_token") is None


def type_at_prompt(service: SecretService, name: str, typed: bytes) -> tuple[int, str]:
    """Run `secrets set NAME` on a real pseudo-terminal, its controlling terminal (so getpass
    switches echo off and Ctrl-C interrupts it), type at the prompt; the exit code and what
    the terminal showed."""
    master, slave = os.openpty()
    # The child makes the terminal on its stdin its controlling terminal, then runs the
    # command, as a login shell does for the commands typed in it.
    take_tty = (
        "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
        "os.execv(sys.executable, sys.argv[1:])"
    )
    argv = [sys.executable, "-c", take_tty, *COMMAND, "set", name]
    child = subprocess.Popen(
        argv,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=service.child_env(),
        cwd=ROOT,
        start_new_session=True,
    )
    os.close(slave)
    try:
        screen = read_until(master, f"{name}: ".encode())
        os.write(master, typed)
        code = child.wait(timeout=60)
        return code, screen + read_all(master)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(master)


def read_until(fd: int, wanted: bytes, timeout: float = 60.0) -> str:
    """What the terminal shows, up to and including `wanted`."""
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {wanted!r} on the terminal: {seen!r}"
        if select.select([fd], [], [], left)[0]:
            seen += os.read(fd, 1024)
    return seen.decode()


def read_all(fd: int) -> str:
    """The rest of the terminal's output; Linux reports EIO once the child side is closed."""
    seen = b""
    try:
        while chunk := os.read(fd, 1024):
            seen += chunk
    except OSError:
        pass
    return seen.decode()


@pytest.mark.parametrize(
    "args", [["set", "broker-token"], ["delete", "llm-api-key"], ["status"]], ids=str
)
def test_without_a_keyring_each_action_exits_1_with_the_plain_message(
    tmp_path: Path, args: list[str]
) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
    }
    result = secrets(env, *args, stdin=f"{TOKEN}\n")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"remotellm-connector: error: {NO_KEYRING_HELP}\n"


@pytest.mark.parametrize("typed", ["", "\n", "  \t\n", "\nct-on-the-second-line\n"])
def test_an_empty_value_is_refused_and_nothing_is_stored(
    typed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = MemoryKeyring()
    code = main(
        "remotellm-connector", ["set", "broker-token"], KeyringStore(backend), io.StringIO(typed)
    )
    assert code == 1
    assert capsys.readouterr().err == (
        "remotellm-connector: error: the broker-token is empty; nothing was stored\n"
    )
    assert backend.store == {}


def test_the_value_is_the_first_line_as_typed_without_its_line_ending() -> None:
    backend = MemoryKeyring()
    store = KeyringStore(backend)
    assert (
        main("remotellm-connector", ["set", "llm-api-key"], store, io.StringIO(" k y \r\nx")) == 0
    )
    assert backend.store == {("remotellm", "llm_api_key"): " k y "}


@pytest.mark.parametrize(
    ("argv", "mentions"),
    [
        (["set"], "required: NAME"),
        (["set", "broker_token"], "invalid choice: 'broker_token'"),
        (["set", "broker-token", TOKEN], "1 unexpected argument(s); a value is read from stdin"),
        ([], "required: ACTION"),
        (["list"], "invalid choice: 'list'"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], mentions: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Among them a value on the command line, which `ps` would show: it is not taken."""
    backend = MemoryKeyring()
    with pytest.raises(SystemExit) as exited:
        main("remotellm-connector", argv, KeyringStore(backend), io.StringIO(""))
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert mentions in err
    assert TOKEN not in err
    assert backend.store == {}
