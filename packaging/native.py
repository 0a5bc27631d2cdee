"""Compile the relay's hot path to C with mypyc when a wheel is built.

The broker's and the connector's request path is our own Python (the express lane, the relay
link, the wire protocol, the connector's stream table), and mypyc, which ships with mypy,
compiles exactly that kind of fully typed code to C extension modules. A wheel built from this
checkout (`uv build`, `uv tool install .`, `pip install .`) carries the compiled modules beside
their sources; Python imports the compiled one first. About a third of each process's
instructions per request go away (docs/performance.md, "The compiled hot path").

- An editable install (`uv run` in a checkout, `pip install -e .`) is never compiled, so an
  edited `.py` file is what runs.
- `REMOTELLM_NO_EXTENSIONS=1` builds a pure-Python wheel.
- Without a C compiler, or if mypyc refuses the code, the build warns and stays pure Python,
  as aiohttp's own build does; `REMOTELLM_REQUIRE_EXTENSIONS=1` makes that an error instead.

hatchling loads this file as the wheel target's custom build hook (pyproject.toml); the bench
and the tests call `compile_tree` on a copy of the checkout. This directory is not a Python
package (`packaging` is also a well-known distribution's name), so load it by path.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

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
    "shared/upgrade.py",
    "shared/websocket.py",
    "broker/accounts.py",
    "broker/api.py",
    "broker/auth.py",
    "broker/call.py",
    "broker/deadline.py",
    "broker/errors.py",
    "broker/express.py",
    "broker/expresscall.py",
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
    "connector_app/core/target.py",
    "connector_app/core/wakeup.py",
    "connector_app/core/wire.py",
)

NO_EXTENSIONS = "REMOTELLM_NO_EXTENSIONS"
REQUIRE_EXTENSIONS = "REMOTELLM_REQUIRE_EXTENSIONS"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def compile_tree(root: Path, jobs: int = 2) -> list[Path]:
    """Compile COMPILED under `root` in place; return the extension files written there.

    mypyc type-checks the modules with the project's mypy settings (pyproject.toml under
    `root`) and the packages importable by this interpreter, so it runs in the build's
    environment with the project's dependencies installed. Raises whatever mypyc, the C
    compiler or setuptools raise.
    """
    from mypyc.build import mypycify
    from setuptools import Distribution

    root = root.resolve()
    here = Path.cwd()
    work = Path(tempfile.mkdtemp(prefix="remotellm-mypyc-"))
    os.chdir(root)  # mypy reads pyproject.toml and resolves the modules from the cwd
    try:
        extensions = mypycify(
            list(COMPILED),
            opt_level="3",
            multi_file=True,  # several C files, compiled in parallel below
            target_dir=str(work / "c"),
        )
        distribution = Distribution({"name": "remotellm-native", "ext_modules": extensions})
        command: Any = distribution.get_command_obj("build_ext")
        command.build_lib = str(work / "lib")
        command.build_temp = str(work / "tmp")
        command.parallel = jobs
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
        os.chdir(here)
        shutil.rmtree(work, ignore_errors=True)


def _hook_base() -> type:
    try:
        from hatchling.builders.hooks.plugin.interface import BuildHookInterface
    except ImportError:  # loaded by the bench or the tests, not by hatchling
        return object
    return BuildHookInterface  # type: ignore[no-any-return]


class NativeBuildHook(_hook_base()):  # type: ignore[misc]
    """hatchling's custom build hook: compile the hot path into a standard (not editable) wheel."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version == "editable" or _flag(NO_EXTENSIONS):
            return
        stage = Path(tempfile.mkdtemp(prefix="remotellm-native-"))
        self._stage = stage
        try:
            for package in ("shared", "broker", "connector_app"):
                shutil.copytree(
                    Path(self.root) / package,
                    stage / package,
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"),
                )
            shutil.copyfile(Path(self.root) / "pyproject.toml", stage / "pyproject.toml")
            built = compile_tree(stage, jobs=os.cpu_count() or 1)
        except Exception as exc:  # no compiler, or mypyc refused the code
            if _flag(REQUIRE_EXTENSIONS):
                raise
            self.app.display_warning(
                f"remotellm: building a pure-Python wheel; compiling the hot path failed: {exc!r}"
                f" (set {REQUIRE_EXTENSIONS}=1 to make this an error)"
            )
            return
        for path in built:
            build_data["force_include"][str(path)] = str(path.relative_to(stage))
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        self.app.display_info(f"remotellm: compiled {len(built)} modules with mypyc")

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        stage = getattr(self, "_stage", None)
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)


if __name__ == "__main__":
    # python packaging/native.py ROOT: compile a copy of the checkout in place (the bench's way).
    for path in compile_tree(Path(sys.argv[1] if len(sys.argv) > 1 else ".")):
        print(path)
