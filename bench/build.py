"""An experiment: RemoteLLM with its hot path compiled to C by mypyc (`--build compiled`).

The broker's and the connector's request path is our own fully typed Python (the express lane,
the relay link, the wire protocol, the connector's stream table), the kind of code mypyc, which
ships with mypy, compiles to C extension modules. `python -m bench --build compiled` and
`python -m bench.instructions --build compiled` measure RemoteLLM built that way: the three
packages and pyproject.toml are copied into `bench/results/native/<key>/`, the modules in
COMPILED are compiled there in place (about 95 s on the two-core machine), and the broker and
the connector start with that copy first on their path (`-P` and `PYTHONPATH`, so the checkout
in the current directory does not shadow it). The key hashes the sources, this file, the
interpreter and mypy's version, so an edit rebuilds and a rerun does not. The stub, the floor
and the bare relays always run the checkout.

It is not how RemoteLLM ships (bench/README.md, "The compiled build", says why), so wheels stay
pure Python and every run measures the checkout unless asked. `python -m bench.compiled`
(bench/compiled.py) checks the compiled build: made, loaded, and passing the suites. It is not
part of the test run, which builds and tests only what users receive.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / "results" / "native"
PACKAGES = ("shared", "broker", "connector_app")
DONE = "compiled.ok"


class Unavailable(Exception):
    """The compiled build could not be made here (no C compiler, or mypyc refused the code)."""


# The modules compiled, relative to the project root. Everything on the hot path of a request
# or a streamed event in either process; the rest (CLI, settings, the portal, the store's
# schema, the Qt app) runs once or rarely and stays interpreted. Left out on purpose:
# shared/settings.py (mypyc does not compile nested classes, which pydantic-settings needs)
# and connector_app/core/pool.py (an async generator, which mypyc does not compile).
COMPILED = (
    "shared/endpoints.py",
    "shared/eventloop.py",
    "shared/flow.py",
    "shared/frames.py",
    "shared/handshake.py",
    "shared/jsoncodec.py",
    "shared/logging.py",
    "shared/outbox.py",
    "shared/protocol.py",
    "shared/signals.py",
    "shared/text.py",
    "shared/tracecontext.py",
    "shared/upgrade.py",
    "shared/websocket.py",
    "broker/accounts.py",
    "broker/api.py",
    "broker/auth.py",
    "broker/books.py",
    "broker/call.py",
    "broker/callbacktrip.py",
    "broker/deadline.py",
    "broker/errors.py",
    "broker/express.py",
    "broker/expresscall.py",
    "broker/expresstimers.py",
    "broker/framing.py",
    "broker/front.py",
    "broker/headers.py",
    "broker/hub.py",
    "broker/keyformat.py",
    "broker/keys.py",
    "broker/ledger.py",
    "broker/lifecycle.py",
    "broker/limits.py",
    "broker/link.py",
    "broker/metrics.py",
    "broker/records.py",
    "broker/relay.py",
    "broker/requesthead.py",
    "broker/tally.py",
    "broker/trip.py",
    "broker/usage.py",
    "broker/websocket.py",
    "connector_app/core/activity.py",
    "connector_app/core/backoff.py",
    "connector_app/core/client.py",
    "connector_app/core/connector.py",
    "connector_app/core/discovery.py",
    "connector_app/core/echo.py",
    "connector_app/core/failures.py",
    "connector_app/core/http1.py",
    "connector_app/core/llm.py",
    "connector_app/core/probe.py",
    "connector_app/core/proxy.py",
    "connector_app/core/status.py",
    "connector_app/core/stream.py",
    "connector_app/core/streams.py",
    "connector_app/core/streammachine.py",
    "connector_app/core/target.py",
    "connector_app/core/wakeup.py",
    "connector_app/core/wire.py",
)


def compile_tree(root: Path) -> list[Path]:
    """Compile COMPILED under `root` in place; return the extension files written there.

    Run it with `root` as the current directory, in a process of its own (`compiled` does): mypy
    reads pyproject.toml and finds the modules from there. mypyc type-checks them with the
    project's mypy settings against the packages this interpreter imports. Raises whatever
    mypyc, the C compiler or setuptools raise.
    """
    from mypyc.build import mypycify
    from setuptools import Distribution

    work = Path(tempfile.mkdtemp(prefix="remotellm-mypyc-"))
    try:
        extensions = mypycify(
            list(COMPILED),
            opt_level="3",
            multi_file=True,  # several C files of a sane size instead of one huge one
            target_dir=str(work / "c"),
        )
        distribution = Distribution({"name": "remotellm-native", "ext_modules": extensions})
        command: Any = distribution.get_command_obj("build_ext")
        command.build_lib = str(work / "lib")
        command.build_temp = str(work / "tmp")
        command.ensure_finalized()
        command.run()
        written = []
        for built in (work / "lib").rglob("*"):
            if built.suffix in (".so", ".pyd"):
                destination = root / built.relative_to(work / "lib")
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(built, destination)
                written.append(destination)
        return written
    finally:
        shutil.rmtree(work, ignore_errors=True)


def add_option(parser: argparse.ArgumentParser) -> None:
    """`--build source|compiled`, for the commands that start RemoteLLM's processes."""
    parser.add_argument(
        "--build",
        choices=("compiled", "source"),
        default="source",
        help="RemoteLLM as it ships, the checkout's Python (the default), or with its hot path"
        " compiled by mypyc (an experiment, bench/build.py)",
    )


def chosen(wanted: str, notes: list[str]) -> Path | None:
    """The compiled copy a run asked for (`--build`), or None for the checkout; if compiling
    fails, the run measures the checkout and `notes` says why."""
    if wanted == "source":
        return None
    t0 = time.monotonic()
    try:
        tree = compiled()
    except Unavailable as exc:
        note = f"RemoteLLM ran from the checkout's Python: {exc}"
        print(note, file=sys.stderr, flush=True)
        notes.append(note)
        return None
    print(
        f"RemoteLLM runs the compiled build in {tree} ({time.monotonic() - t0:.0f} s to get it)",
        file=sys.stderr,
        flush=True,
    )
    return tree


def _sources(root: Path) -> list[Path]:
    files = [root / "pyproject.toml"]
    for package in PACKAGES:
        files += sorted(p for p in (root / package).rglob("*.py") if "__pycache__" not in p.parts)
    return files


def key(root: Path = ROOT) -> str:
    """A hash of what the compiled modules are made from."""
    digest = hashlib.sha256()
    digest.update(sys.version.encode())
    digest.update(importlib.metadata.version("mypy").encode())
    digest.update(Path(__file__).read_bytes())
    for path in _sources(root):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def compiled(root: Path = ROOT, cache: Path = CACHE) -> Path:
    """The directory of a compiled copy of `root`'s packages, built now if not cached."""
    tree = cache / key(root)
    if (tree / DONE).exists():
        return tree
    cache.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix="build-", dir=cache))
    try:
        for package in PACKAGES:
            shutil.copytree(
                root / package,
                stage / package,
                ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"),
            )
        shutil.copyfile(root / "pyproject.toml", stage / "pyproject.toml")
        print("compiling the hot path with mypyc (about 95 s) ...", file=sys.stderr, flush=True)
        done = subprocess.run(
            # -P: not bench/ first on the path (its profile.py would shadow the standard one)
            [sys.executable, "-P", str(Path(__file__).resolve()), str(stage)],
            cwd=stage,
            capture_output=True,
            text=True,
            check=False,
        )
        built = done.stdout.split()
        if done.returncode != 0 or not built:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise Unavailable(f"compiling the hot path failed: {last}")
        (stage / DONE).write_text("\n".join(built) + "\n")
        for old in cache.iterdir():  # one compiled copy is enough; drop the stale ones
            if old.name != stage.name:
                shutil.rmtree(old, ignore_errors=True)
        stage.rename(tree)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return tree


if __name__ == "__main__":
    # The compiling process `compiled` starts, in the copy: print what it wrote.
    for path in compile_tree(Path(sys.argv[1]).resolve()):
        print(path.relative_to(Path(sys.argv[1]).resolve()))
