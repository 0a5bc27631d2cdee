"""A real, private Secret Service for tests: a D-Bus bus of its own with an unlocked GNOME Keyring.

`running_secret_service(root)` starts two processes and stops both when the block ends:

- `dbus-daemon --nofork --print-address` with a bus configuration written here. The session
  bus configuration Debian ships would D-Bus-activate any service installed on the machine
  (a second gnome-keyring-daemon among them) the moment a client asks for one; this one
  activates nothing, so the only Secret Service on the bus is the one started below. The
  daemon is started directly rather than through `dbus-run-session`, which ties the bus to
  the life of one child command and does not pass signals on to it: a fixture must keep the
  bus up across several commands (a `set`, then a `status`, then the bundled app) and stop
  it by its process id.
- `gnome-keyring-daemon --unlock --components=secrets --foreground` on that bus, reading a
  fixed password on stdin: it creates the `login` keyring under `$XDG_DATA_HOME/keyrings`
  and unlocks it, so no prompt ever shows. (With an empty password it creates nothing and
  every write fails with "Prompt dismissed".)

HOME and the XDG directories are under `root`, so the keyring file is thrown away with it.
XDG_RUNTIME_DIR (where the bus socket and the keyring's control socket live) is a short
directory of its own under the system temporary directory instead: a Unix socket path may
not exceed 108 bytes, which a pytest `tmp_path` easily does. The start waits until the
Secret Service answers on the bus with its default collection unlocked, through the same
client library keyring uses (secretstorage over jeepney), rather than sleeping.

Both tools come from Debian packages (`dbus-daemon`, `gnome-keyring`), and `secret-tool`
(`libsecret-tools`) is the independent client `lookup` and `store` use; a missing one fails
the test, naming the package.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

import pytest
import secretstorage
from jeepney.io.blocking import open_dbus_connection  # type: ignore[import-untyped]

TOOLS: Final = {
    "dbus-daemon": "dbus-daemon",
    "gnome-keyring-daemon": "gnome-keyring",
    "secret-tool": "libsecret-tools",
}
"""Each program used here, and the Debian package that has it."""

KEYRING_PASSWORD: Final = b"remotellm-test-keyring"
START_TIMEOUT: Final = 30.0

# A session bus that activates nothing: no <servicedir>, no <standard_session_servicedirs/>.
BUS_CONFIG: Final = """<!DOCTYPE busconfig PUBLIC
 "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:dir={socket_dir}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


@dataclass(frozen=True)
class SecretService:
    """A running private Secret Service and how a child process reaches it."""

    env: dict[str, str]
    """The variables a child needs to use this keyring and no other: DBUS_SESSION_BUS_ADDRESS,
    HOME, XDG_DATA_HOME, XDG_CONFIG_HOME, XDG_CACHE_HOME, XDG_RUNTIME_DIR."""
    processes: tuple[subprocess.Popen[bytes], ...]
    """dbus-daemon and gnome-keyring-daemon, stopped (and reaped) when the block ends."""

    @property
    def address(self) -> str:
        """The D-Bus address of the private bus."""
        return self.env["DBUS_SESSION_BUS_ADDRESS"]

    def child_env(self, base: Mapping[str, str] = os.environ) -> dict[str, str]:
        """`base` (the test's environment) with `env` over it, and without a
        PYTHON_KEYRING_BACKEND that would make keyring skip the Secret Service."""
        merged = {k: v for k, v in base.items() if k != "PYTHON_KEYRING_BACKEND"}
        merged.update(self.env)
        return merged

    def lookup(self, name: str, service: str = "remotellm") -> str | None:
        """The secret keyring stored for (service, name), read with `secret-tool`, a libsecret
        client independent of Python's keyring; None when there is none."""
        result = self._secret_tool("lookup", "service", service, "username", name)
        return result.stdout if result.returncode == 0 else None

    def store(self, name: str, value: str, service: str = "remotellm") -> None:
        """Store a secret where keyring's Secret Service backend looks for (service, name)."""
        label = f"Password for '{name}' on '{service}'"
        args = ("store", "--label", label, "service", service, "username", name)
        result = self._secret_tool(*args, stdin=value)
        assert result.returncode == 0, f"secret-tool store failed: {result.stderr}"

    def _secret_tool(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["secret-tool", *args],
            input=stdin,
            env=self.child_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )


def require_tools() -> None:
    """Fail (never skip) the test when a program is missing, naming its Debian package."""
    missing = [pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            "the Secret Service tests need the Debian packages "
            f"{', '.join(missing)}: `apt-get install {' '.join(missing)}` (bash .ci/run does)",
            pytrace=False,
        )


@contextlib.contextmanager
def running_secret_service(root: Path) -> Iterator[SecretService]:
    """Run a private bus and an unlocked gnome-keyring-daemon under `root` for the block."""
    require_tools()
    runtime = Path(tempfile.mkdtemp(prefix="rllm-ss-"))  # mode 0700, as XDG_RUNTIME_DIR must be
    env = {
        "HOME": str(root / "home"),
        "XDG_DATA_HOME": str(root / "home" / ".local" / "share"),
        "XDG_CONFIG_HOME": str(root / "home" / ".config"),
        "XDG_CACHE_HOME": str(root / "home" / ".cache"),
        "XDG_RUNTIME_DIR": str(runtime),
    }
    for key in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    config = root / "bus.conf"
    config.write_text(BUS_CONFIG.format(socket_dir=runtime))
    log = (root / "daemons.log").open("wb")
    started: list[subprocess.Popen[bytes]] = []
    try:
        bus = start_bus(config, env, log)
        started.append(bus)
        env["DBUS_SESSION_BUS_ADDRESS"] = read_address(bus, root / "daemons.log")
        started.append(start_keyring(env, log))
        wait_until_unlocked(env["DBUS_SESSION_BUS_ADDRESS"], started, root / "daemons.log")
        yield SecretService(env, tuple(started))
    finally:
        for process in reversed(started):  # the keyring first, while its bus is still up
            stop(process)
        log.close()
        shutil.rmtree(runtime, ignore_errors=True)


def start_bus(config: Path, env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address=1"],
        env={"PATH": os.environ["PATH"], **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log,
    )


def read_address(bus: subprocess.Popen[bytes], log: Path) -> str:
    assert bus.stdout is not None
    line = bus.stdout.readline().decode().strip()  # printed once the bus listens
    bus.stdout.close()
    assert line, f"dbus-daemon printed no address: {log.read_text(errors='replace')}"
    return line


def start_keyring(env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    keyring = subprocess.Popen(
        ["gnome-keyring-daemon", "--unlock", "--components=secrets", "--foreground"],
        env={"PATH": os.environ["PATH"], **env},
        stdin=subprocess.PIPE,
        stdout=log,
        stderr=log,
    )
    assert keyring.stdin is not None
    keyring.stdin.write(KEYRING_PASSWORD)  # it reads the password up to end of file
    keyring.stdin.close()
    return keyring


def wait_until_unlocked(address: str, processes: list[subprocess.Popen[bytes]], log: Path) -> None:
    """Poll the bus until the Secret Service's default collection exists and is unlocked."""
    deadline = time.monotonic() + START_TIMEOUT
    while not default_collection_unlocked(address):
        for process in processes:
            assert process.poll() is None, (
                f"{process.args!r} exited ({process.returncode}): {log.read_text(errors='replace')}"
            )
        assert time.monotonic() < deadline, (
            f"the Secret Service did not come up within {START_TIMEOUT:.0f} s: "
            f"{log.read_text(errors='replace')}"
        )
        time.sleep(0.05)


def default_collection_unlocked(address: str) -> bool:
    with open_dbus_connection(bus=address) as connection:
        if not secretstorage.check_service_availability(connection):
            return False
        try:
            return not secretstorage.Collection(connection).is_locked()
        except secretstorage.exceptions.ItemNotFoundException:
            return False  # the login keyring is not created yet


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it is still running after 10 s; always reaped."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
