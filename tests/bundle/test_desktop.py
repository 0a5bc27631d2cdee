"""The tray app from the bundle on a real X desktop, against the same app run from source.

Both run the same scenario (tray icon shown in trayer, menu opened, a request served, a
clean exit) on one Xvfb. Whatever the source app imported or mapped from PySide6 must be in
the bundle too, so a module or Qt plugin that freezing lost or the spec trimmed fails here.
"""

from __future__ import annotations

import asyncio
import contextlib
import runpy
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from broker.server import BrokerServer
from tests.bundle.conftest import Bundle, desktop, mapped_files
from tests.conftest import CONNECTOR_TOKEN, MakeBroker
from tests.connector_app.qt.test_desktop import desktop_scenario, process
from tests.stub_llm import StubLLM

ROOT = Path(__file__).parents[2]
PROBE = Path(__file__).with_name("modules_probe.py")
TRIM = ROOT / "packaging" / "pyinstaller" / "trim.py"
BUILD = ROOT / "packaging" / "build_bundle.py"


@contextlib.asynccontextmanager
async def watched_maps(pid: int) -> AsyncIterator[set[str]]:
    """The union of the files a process maps while the block runs (sampled every 0.1 s)."""
    seen: set[str] = set()

    async def sample() -> None:
        while True:
            try:
                seen.update(mapped_files(pid))
            except (FileNotFoundError, ProcessLookupError):
                return
            await asyncio.sleep(0.1)

    task = asyncio.create_task(sample())
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def pyside_files(mapped: set[str], pyside: Path) -> set[str]:
    """The mapped files from a PySide6 folder, relative to it (Qt/lib/…, Qt/plugins/…)."""
    prefix = str(pyside) + "/"
    return {m.removeprefix(prefix) for m in mapped if m.startswith(prefix)}


async def run_app(
    argv: list[str], env: dict[str, str], desktop: dict[str, str], log: Path, broker: BrokerServer
) -> set[str]:
    """Run the scenario on the app (`desktop` is the environment xdotool needs)."""
    cwd = str(env["HOME"])
    async with process(argv, env, log, cwd=cwd) as app, watched_maps(app.pid) as seen:
        await desktop_scenario(desktop, app, log, broker)
    return seen


async def test_the_bundled_tray_app_shows_its_icon_serves_and_lacks_nothing_the_source_uses(
    bundle: Bundle, tmp_path: Path, stub: StubLLM, make_broker: MakeBroker
) -> None:
    broker = await make_broker()
    common = {
        "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
        "REMOTELLM_CONNECTOR_BROKER_URL": f"ws://127.0.0.1:{broker.port}/relay",
        "REMOTELLM_CONNECTOR_BROKER_TOKEN": CONNECTOR_TOKEN,
        "REMOTELLM_CONNECTOR_LLM_URL": stub.url,
        "REMOTELLM_CONNECTOR_NAME": "bundle-desktop",
    }
    modules = tmp_path / "modules.txt"
    async with desktop(tmp_path) as screen:
        source_env = {**bundle.env(tmp_path / "source", **common), **screen}
        source_argv = [sys.executable, str(PROBE), str(modules), "--log-format", "json"]
        source_maps = await run_app(
            source_argv, source_env, screen, tmp_path / "source.log", broker
        )
        bundle_env = bundle.env(tmp_path / "bundle", **common, **screen)
        bundle_env["PATH"] = bundle.env(tmp_path / "bundle")["PATH"]  # no Python, no tools
        bundle_argv = [str(bundle.exe), "--log-format", "json"]
        bundle_maps = await run_app(
            bundle_argv, bundle_env, screen, tmp_path / "bundle.log", broker
        )

    imported = set(modules.read_text().split())
    assert "PySide6.QtWidgets" in imported and "keyring.backends.fail" in imported
    # Left out on purpose (optional imports of libraries, never needed by the app): the
    # bundled app just went through the whole scenario without them.
    excluded = tuple(runpy.run_path(str(TRIM))["EXCLUDED_MODULES"])
    wanted = {m for m in imported if m.split(".")[0] not in excluded}
    bundled = runpy.run_path(str(BUILD))["bundled_modules"](bundle.folder)
    assert not wanted - bundled
    import PySide6

    source_qt = pyside_files(source_maps, Path(PySide6.__file__).parent)
    bundle_qt = pyside_files(bundle_maps, bundle.folder / "_internal" / "PySide6")
    assert "Qt/plugins/platforms/libqxcb.so" in source_qt
    assert "Qt/plugins/iconengines/libqsvgicon.so" in source_qt
    assert not source_qt - bundle_qt
