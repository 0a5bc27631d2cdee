"""The Linux bundle's budgets: `uv run python -m bench.bundle [--folder DIR] [--runs N]`.

Builds the bundle with packaging/build_bundle.py (or takes an unpacked one with `--folder`)
and reports its size unpacked and as `.tar.gz`. Then it starts the tray app N times from
the bundle and N times from this checkout (the installed app), taking turns, on Xvfb with
trayer as the tray (tests/bundle's harness), its token in a GNOME Keyring on a private bus,
against a broker and a stub LLM in this process. Per variant it reports the median time
from launch until the broker lists the app's models (serving), and the resident memory
once it has served one request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import runpy
import signal
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from broker.server import BrokerServer
from tests.bundle.conftest import desktop
from tests.conftest import CONNECTOR_TOKEN, USER_KEY, broker_settings
from tests.connector_app.qt.test_desktop import process
from tests.secretservice import running_secret_service
from tests.stub_llm import StubLLM

ROOT = Path(__file__).parents[1]
BUILD = ROOT / "packaging" / "build_bundle.py"
BUDGETS = {"unpacked_mb": 100, "archive_mb": 45, "serving_s": 1.5, "rss_mb": 100}
CHAT = {"model": "stub-model", "messages": [{"role": "user", "content": "Hi"}]}


def build(into: Path) -> tuple[Path, Path]:
    """(unpacked folder, archive): the documented build, then the archive unpacked."""
    import subprocess

    dist = into / "dist"
    subprocess.run(
        [sys.executable, str(BUILD), "--dist", str(dist), "--work", str(into / "work")], check=True
    )
    (archive,) = dist.glob("remotellm-connector-*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(into / "unpacked", filter="tar")
    (folder,) = (into / "unpacked").iterdir()
    return folder, archive


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


async def one_launch(
    argv: list[str], env: dict[str, str], broker: BrokerServer, log: Path
) -> tuple[float, float]:
    """(seconds from launch to serving, resident MB after one served request)."""
    started = time.perf_counter()
    async with process(argv, env, log, cwd=env["HOME"]) as app:
        while "stub-model" not in broker.hub.models():
            if app.returncode is not None:
                raise RuntimeError(f"the app exited; see {log}")
            await asyncio.sleep(0.005)
        serving = time.perf_counter() - started
        headers = {"Authorization": f"Bearer {USER_KEY}"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{broker.base_url}/v1/chat/completions", json=CHAT, headers=headers) as r,
        ):
            assert r.status == 200, await r.text()
            await r.read()
        memory = rss_mb(app.pid)
        app.send_signal(signal.SIGTERM)
        await asyncio.wait_for(app.wait(), 30)
    while broker.hub.models():  # noqa: ASYNC110 (the link is gone before the next launch)
        await asyncio.sleep(0.01)
    return serving, memory


async def launches(folder: Path, runs: int, work: Path) -> dict[str, dict[str, float]]:
    stub = StubLLM()
    await stub.start()
    broker = BrokerServer(broker_settings())
    await broker.start()
    stack = contextlib.ExitStack()
    service = stack.enter_context(running_secret_service(work / "keyring"))
    # As on a desktop: the token comes from the Secret Service (GNOME Keyring).
    service.store("broker_token", CONNECTOR_TOKEN)
    base = {
        "LANG": "C.UTF-8",
        "DBUS_SESSION_BUS_ADDRESS": service.address,
        "REMOTELLM_CONNECTOR_BROKER_URL": f"ws://127.0.0.1:{broker.port}/relay",
        "REMOTELLM_CONNECTOR_LLM_URL": stub.url,
    }
    variants = {
        "bundle": [str(folder / "remotellm-connector")],
        "installed": [sys.executable, "-m", "connector_app.cli"],
    }
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    try:
        async with desktop(work) as screen:
            for i in range(runs):
                for name, argv in variants.items():
                    home = work / f"{name}-{i}"
                    (home / "run").mkdir(parents=True, mode=0o700)
                    env = {**base, **screen, "HOME": str(home), "TMPDIR": str(home),
                           "XDG_CONFIG_HOME": str(home / "config"),
                           "XDG_RUNTIME_DIR": str(home / "run")}  # fmt: skip
                    if name == "installed":
                        env["PYTHONPATH"] = str(ROOT)
                    log = home / "app.log"
                    samples[name].append(await one_launch(argv, env, broker, log))
    finally:
        stack.close()
        await broker.stop()
        await stub.stop()
    return {
        name: {
            "serving_s_median": statistics.median(s for s, _ in rows),
            "serving_s_max": max(s for s, _ in rows),
            "rss_mb_median": statistics.median(m for _, m in rows),
        }
        for name, rows in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, help="an unpacked bundle (default: build one)")
    parser.add_argument("--runs", type=int, default=5, help="launches per variant (5)")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-bundle-") as tmp:
        work = Path(tmp)
        result: dict[str, Any] = {}
        if args.folder:
            folder = args.folder
        else:
            started = time.perf_counter()
            folder, archive = build(work)
            result["build_s"] = round(time.perf_counter() - started, 1)
            result["archive_mb"] = round(archive.stat().st_size / 1e6, 1)
        tree_size = runpy.run_path(str(BUILD))["tree_size"]
        result["unpacked_mb"] = round(tree_size(folder) / 1e6, 1)
        result["launches"] = asyncio.run(launches(folder, args.runs, work))
    print(json.dumps(result, indent=2))
    print(report(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


def report(result: dict[str, Any]) -> str:
    """A Markdown table of each figure against its budget."""
    launches = result["launches"]
    rows = [
        ("Unpacked size", result["unpacked_mb"], "—", BUDGETS["unpacked_mb"], "MB"),
        ("`.tar.gz` size", result.get("archive_mb", "—"), "—", BUDGETS["archive_mb"], "MB"),
        ("Launch to serving (median)", launches["bundle"]["serving_s_median"],
         launches["installed"]["serving_s_median"], BUDGETS["serving_s"], "s"),
        ("Resident memory once serving", launches["bundle"]["rss_mb_median"],
         launches["installed"]["rss_mb_median"], BUDGETS["rss_mb"], "MB"),
    ]  # fmt: skip
    lines = ["| Figure | Bundle | Installed app | Budget |", "| --- | --- | --- | --- |"]
    for name, bundle, installed, budget, unit in rows:
        digits = 2 if unit == "s" else 1
        cells = [
            f"{v:.{digits}f} {unit}" if isinstance(v, float) else str(v)
            for v in (bundle, installed)
        ]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | ≤ {budget} {unit} |")
    return "\n".join(lines)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
