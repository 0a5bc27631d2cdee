"""`python -m bench.compiled [PATH ...]`: check the compiled build (`--build compiled`).

RemoteLLM ships as pure Python, so the test run builds and tests only that; the copy with the
hot path compiled by mypyc (bench/build.py) is a benchmark experiment, checked here instead.
This command gets the compiled copy (built when the sources changed, about 95 s on two cores;
cached otherwise), checks that a broker and a connector started the way the bench starts them
import the compiled modules rather than the checkout's, and runs the suites that exercise the
hot path again in a child pytest with the compiled copy first on its path (or only the PATHs
given). Tests marked `source_only` are left out there: they replace a module's function or
constant, or pass a stand-in where the code names a class, which compiled code refuses by
design. It exits 1 on any failure, with the tail of the child's output.

Run it before publishing a `--build compiled` result and after changing a module in COMPILED.
"""

from __future__ import annotations

import argparse
import ast
import collections
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench import build
from bench.procs import Children

ROOT = build.ROOT
SUITES = ("tests/shared", "tests/broker", "tests/connector_app/core", "tests/e2e")
TAIL = 30  # lines of the child's output repeated when it fails

# Imports four compiled modules and prints where each came from.
PROBE = (
    "import broker.edge.express, broker.stream.trip, shared.protocol,"
    " connector_app.core.streams as s;"
    "print(broker.edge.express.__file__, broker.stream.trip.__file__, shared.protocol.__file__,"
    " s.__file__)"
)


def awaits_in_finally_after_except(
    root: Path = ROOT, names: Sequence[str] = build.COMPILED
) -> list[str]:
    """Where a module of `names` awaits in a `finally` that follows an `except` (`file:line`).

    Compiled, such a coroutine raises the handled exception again when the awaited call does not
    suspend (bench/README.md, "The compiled build"), so the shape is forbidden there.
    """
    found = []
    for name in names:
        for node in ast.walk(ast.parse((root / name).read_text())):
            if isinstance(node, ast.Try) and node.handlers and node.finalbody:
                inside = (n for s in node.finalbody for n in ast.walk(s))
                if any(isinstance(n, ast.Await) for n in inside):
                    found.append(f"{name}:{node.lineno}")
    return found


def suite_command(paths: Sequence[str]) -> list[str]:
    """The child pytest that runs `paths` on the compiled copy (with `suite_env`)."""
    return [
        sys.executable,
        "-P",  # the checkout (the current directory) must not come first
        "-m",
        "pytest",
        "--import-mode=append",  # nor the rootdir pytest would insert
        "--tb=native",  # pytest's own formatting fails on a compiled frame
        "-p",
        "no:cacheprovider",
        "-q",
        "-rfE",
        "-m",
        "not source_only and not compiled_crash",
        *paths,
    ]


def suite_env(tree: Path) -> dict[str, str]:
    """The child's environment: the compiled copy first on its path, then the checkout."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join((str(tree), str(ROOT)))}


def not_loaded(tree: Path) -> list[str]:
    """What a broker or connector started as the bench starts them imported from outside
    `tree` or uncompiled (empty when all four probed modules are compiled ones in `tree`)."""
    with tempfile.TemporaryDirectory(prefix="remotellm-compiled-") as logs:
        children = Children(Path(logs), build=tree)
        try:
            child = children.start_remotellm("probe", [sys.executable, "-c", PROBE])
            code = child.process.wait(60)
        finally:
            children.stop_all()
        files = child.log_path.read_text().split()
    if code != 0 or len(files) != 4:
        return [f"the probe failed (exit {code}): {' '.join(files)[-2000:]}"]
    return [f for f in files if not (Path(f).is_relative_to(tree) and f.endswith(".so"))]


def run_suites(tree: Path, paths: Sequence[str]) -> tuple[int, list[str]]:
    """Run the child pytest, echoing its output; return its exit code and its last lines."""
    tail: collections.deque[str] = collections.deque(maxlen=TAIL)
    with subprocess.Popen(
        suite_command(paths),
        cwd=ROOT,
        env=suite_env(tree),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as child:
        assert child.stdout is not None
        for line in child.stdout:
            print(line, end="", flush=True)
            tail.append(line.rstrip("\n"))
    return child.returncode, list(tail)


def parse(argv: Sequence[str] | None) -> list[str]:
    """The paths to run on the compiled copy: the ones given, checked to exist, or SUITES."""
    parser = argparse.ArgumentParser(prog="python -m bench.compiled", description=__doc__)
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help=f"test files or folders to run (default: {' '.join(SUITES)})",
    )
    paths: list[str] = parser.parse_args(argv).paths or list(SUITES)
    missing = [p for p in paths if not (ROOT / p.split("::")[0]).exists()]
    if missing:
        parser.error(f"no such test path under {ROOT}: {', '.join(missing)}")
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Build, probe and test the compiled copy; exit 1 on any failure."""
    paths = parse(argv)
    t0 = time.monotonic()
    if shapes := awaits_in_finally_after_except():
        print(f"FAILED: an await in a finally after an except: {', '.join(shapes)}")
        return 1
    try:
        tree = build.compiled()
    except build.Unavailable as exc:
        print(f"FAILED: the compiled build could not be made here: {exc}")
        return 1
    if wrong := not_loaded(tree):
        print(f"FAILED: the bench's processes did not run the compiled copy: {', '.join(wrong)}")
        return 1
    print(f"the bench's processes import the compiled copy in {tree}", flush=True)
    code, tail = run_suites(tree, paths)
    minutes = f"{(time.monotonic() - t0) / 60:.1f} min"
    summary = next((line for line in reversed(tail) if line.strip()), "")
    deselected = "deselected" in summary or paths != list(SUITES)
    if code != 0 or " passed" not in summary or not deselected:
        shown = "\n".join(tail)
        print(f"\nFAILED: the compiled build failed the suites (exit {code}, {minutes}):\n{shown}")
        return 1
    print(f"\nthe compiled build passed ({minutes}): {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
