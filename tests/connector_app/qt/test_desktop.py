"""The tray app on a real X desktop: Xvfb, Debian's `trayer` as the tray, xdotool as the hand.

It must fail, not skip, when those programs are missing: CI (.ci/run) installs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from broker.server import BrokerServer
from tests.conftest import CONNECTOR_TOKEN, USER_KEY, MakeBroker, logged_events, wait_models
from tests.stub_llm import CHAT_BODY, StubLLM

TOOLS = ("Xvfb", "trayer", "xdotool")
ROOT = Path(__file__).parents[3]


def require_tools() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"the real-desktop test needs {', '.join(missing)}; install them with "
            "`apt-get install xvfb trayer xdotool` (bash .ci/run does)"
        )


def read(path: Path) -> str:
    """A log file's text (small files; fine to read from the event loop in a test)."""
    return path.read_text()


async def poll(condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not await condition():
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


@contextlib.asynccontextmanager
async def process(
    argv: list[str], env: dict[str, str], log: Path, **kwargs: object
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Start a process with its output in `log`; stop it (TERM, then KILL) on the way out."""
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            **kwargs,  # type: ignore[arg-type]
        )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # it may have just exited
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def xdotool(env: dict[str, str], *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "xdotool", *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    return out.decode()


async def display_ready(env: dict[str, str]) -> bool:
    return bool(await xdotool(env, "getdisplaygeometry"))


async def windows(env: dict[str, str], pid: int) -> list[dict[str, int]]:
    """The visible windows of a process (the tray icon, the menu), with their geometry."""
    found = []
    for wid in (await xdotool(env, "search", "--onlyvisible", "--pid", str(pid))).split():
        shell = await xdotool(env, "getwindowgeometry", "--shell", wid)
        values = dict(line.split("=", 1) for line in shell.split())
        found.append({k: int(v) for k, v in values.items() if k in ("X", "Y", "WIDTH", "HEIGHT")})
    return found


async def start_display(tmp_path: Path) -> tuple[asyncio.subprocess.Process, str]:
    """Xvfb on a display number it picks itself (-displayfd), so parallel runs never clash."""
    read_end, write_end = os.pipe()
    log = (tmp_path / "xvfb.log").open("wb")
    # -noreset: a server that resets when its last client leaves refuses the next one
    # for a moment, and trayer would start into that gap.
    argv = ["Xvfb", "-displayfd", str(write_end), "-screen", "0", "1024x768x24"]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        "-nolisten",
        "tcp",
        "-noreset",
        stdout=log,
        stderr=log,
        pass_fds=(write_end,),
    )
    os.close(write_end)
    log.close()

    def read_line() -> bytes:
        # Xvfb may write the number and the newline separately; closing the pipe before the
        # newline arrives makes it die with "Cannot write display number".
        data = b""
        while not data.endswith(b"\n"):
            chunk = os.read(read_end, 32)
            if not chunk:
                break
            data += chunk
        return data

    try:
        number = await asyncio.wait_for(asyncio.to_thread(read_line), 30)
    finally:
        os.close(read_end)
    if not number.strip():
        raise AssertionError("Xvfb did not start; see xvfb.log")
    return proc, f":{number.decode().strip()}"


async def test_the_app_in_a_real_tray_shows_its_icon_opens_its_menu_and_serves(
    tmp_path: Path, stub: StubLLM, make_broker: MakeBroker
) -> None:
    require_tools()
    broker = await make_broker()
    xvfb, display = await start_display(tmp_path)
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),  # the single-instance socket lives here: no clash with a real app
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_RUNTIME_DIR": str(runtime),
        "DISPLAY": display,
        "QT_QPA_PLATFORM": "xcb",
        "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
        "REMOTELLM_CONNECTOR_BROKER_URL": f"ws://127.0.0.1:{broker.port}/relay",
        "REMOTELLM_CONNECTOR_BROKER_TOKEN": CONNECTOR_TOKEN,
        "REMOTELLM_CONNECTOR_LLM_URL": stub.url,
        "REMOTELLM_CONNECTOR_NAME": "desktop-test",
    }
    app_log = tmp_path / "app.log"
    trayer = ["trayer", "--edge", "top", "--align", "right", "--widthtype", "request",
              "--height", "32", "--SetDockType", "true"]  # fmt: skip
    app_argv = [sys.executable, "-m", "connector_app.cli", "--log-format", "json"]
    try:
        await poll(lambda: display_ready(env), f"the X server on {display}")
        async with process(trayer, env, tmp_path / "trayer.log"):

            async def tray_up() -> bool:
                return bool(await xdotool(env, "search", "--name", "^panel$"))

            await poll(tray_up, "trayer's panel")
            async with process(app_argv, env, app_log, cwd=str(ROOT)) as app:
                await desktop_scenario(env, app, app_log, broker)
    finally:
        xvfb.terminate()
        await xvfb.wait()


async def desktop_scenario(
    env: dict[str, str], app: asyncio.subprocess.Process, app_log: Path, broker: BrokerServer
) -> None:

    def logged(text: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return text in read(app_log)

        return check

    def logged_with(**fields: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return any(fields.items() <= e.items() for e in logged_events(read(app_log)))

        return check

    async def icon_embedded() -> bool:
        return any(w["WIDTH"] <= 64 for w in await windows(env, app.pid))

    await poll(logged("tray icon shown"), "the app to show its tray icon")
    await poll(icon_embedded, "the icon to appear in trayer")
    icon = next(w for w in await windows(env, app.pid) if w["WIDTH"] <= 64)
    x, y = icon["X"] + icon["WIDTH"] // 2, icon["Y"] + icon["HEIGHT"] // 2
    await xdotool(env, "mousemove", str(x), str(y), "click", "3")

    async def menu_open() -> bool:
        return any(w["HEIGHT"] > 64 for w in await windows(env, app.pid))

    await poll(logged("tray menu opened"), "the menu to open on a click")
    await poll(menu_open, "the menu window to be visible")
    await xdotool(env, "key", "Escape")

    await wait_models(broker, {"stub-model"}, timeout=30)
    headers = {"Authorization": f"Bearer {USER_KEY}", "X-Request-ID": "req-desktop"}
    body = {"model": "stub-model", "messages": [{"role": "user", "content": "Hi"}]}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{broker.base_url}/v1/chat/completions", json=body, headers=headers) as resp,
    ):
        assert resp.status == 200
        assert await resp.read() == CHAT_BODY
    await poll(logged_with(request_id="req-desktop"), "the app to log the request")

    app.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(app.wait(), 30) == 0
    assert {"event": "stopped"}.items() <= logged_events(read(app_log))[-1].items()
