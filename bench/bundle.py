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
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from broker.server import BrokerServer
from tests.bundle.conftest import build_and_unpack, desktop, rss_mb
from tests.conftest import CONNECTOR_TOKEN, broker_settings
from tests.connector_app.qt.test_desktop import process
from tests.e2e.test_relay import AUTH, CHAT
from tests.secretservice import running_secret_service
from tests.stub_llm import StubLLM

ROOT = Path(__file__).parents[1]
BUILD = ROOT / "packaging" / "build_bundle.py"
BUDGETS = {"unpacked_mb": 100, "archive_mb": 45, "serving_s": 1.5, "rss_mb": 100}


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
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{broker.base_url}/v1/chat/completions", json=CHAT, headers=AUTH) as r,
        ):
            assert r.status == 200, await r.text()
            await r.read()
        memory = rss_mb(app.pid)
        app.send_signal(signal.SIGTERM)
        await asyncio.wait_for(app.wait(), 30)
    while broker.hub.models():  # noqa: ASYNC110 (the link is gone before the next launch)
        await asyncio.sleep(0.01)
    return serving, memory


async def launches(
    folder: Path, runs: int, work: Path, keyring: bool
) -> dict[str, dict[str, float]]:
    stub = StubLLM()
    await stub.start()
    broker = BrokerServer(broker_settings())
    await broker.start()
    base = {
        "LANG": "C.UTF-8",
        "REMOTELLM_CONNECTOR_BROKER_URL": f"ws://127.0.0.1:{broker.port}/relay",
        "REMOTELLM_CONNECTOR_LLM_URL": stub.url,
    }
    variants = {
        "bundle": [str(folder / "remotellm-connector")],
        "installed": [sys.executable, "-m", "connector_app.cli"],
    }
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    try:
        with contextlib.ExitStack() as stack:
            if keyring:  # as on a desktop: the token comes from GNOME Keyring
                service = stack.enter_context(running_secret_service(work / "keyring"))
                service.store("broker_token", CONNECTOR_TOKEN)
                base["DBUS_SESSION_BUS_ADDRESS"] = service.address
            else:
                base["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
                base["REMOTELLM_CONNECTOR_BROKER_TOKEN"] = CONNECTOR_TOKEN
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
    parser.add_argument(
        "--no-keyring",
        action="store_true",
        help="no keyring backend: the token from the environment (default: GNOME Keyring)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-bundle-") as tmp:
        work = Path(tmp)
        result: dict[str, Any] = {}
        if args.folder:
            folder = args.folder
        else:
            (work / "unpacked").mkdir()
            built = build_and_unpack(work, work / "unpacked")
            folder = built.folder
            result["build_s"] = round(built.build_seconds, 1)
            result["archive_mb"] = round(built.archive.stat().st_size / 1e6, 1)
        tree_size = runpy.run_path(str(BUILD))["tree_size"]
        result["unpacked_mb"] = round(tree_size(folder) / 1e6, 1)
        result["launches"] = asyncio.run(
            launches(folder, args.runs, work, keyring=not args.no_keyring)
        )
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
