"""The bench's compiled build (`--build compiled`, bench/build.py) is made, loaded, and passes.

It compiles the hot path once (cached in bench/results/native/ by a hash of the sources, about
95 s on the two-core machine when they changed), checks that a broker and connector started
the way the bench starts them import the compiled modules, not the checkout's, and runs the
suites that exercise the hot path again in a child pytest with the compiled copy first on its
path. Tests marked `source_only` are left out there: they replace a module's function or
constant, or pass a stand-in where the code names a class, which compiled code refuses by
design (they run on the checkout's Python with the rest of the suite).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import build
from bench.procs import Children

ROOT = Path(__file__).resolve().parent.parent
SUITES = ("tests/shared", "tests/broker", "tests/connector_app/core", "tests/e2e")


@pytest.fixture(scope="module")
def tree() -> Path:
    try:
        return build.compiled()
    except build.Unavailable as exc:
        pytest.fail(f"the compiled build could not be made here: {exc}")


@pytest.mark.timeout(600)
def test_the_bench_runs_the_hot_path_compiled(tree: Path, tmp_path: Path) -> None:
    assert build.compiled() == tree  # cached: the same sources give the same copy at once
    probe = (
        "import broker.express, broker.trip, shared.protocol, connector_app.core.streams as s;"
        "print(broker.express.__file__, broker.trip.__file__, shared.protocol.__file__,"
        " s.__file__)"
    )
    children = Children(tmp_path, build=tree)
    child = children.start_remotellm("probe", [sys.executable, "-c", probe])
    assert child.process.wait(60) == 0
    children.stop_all()
    files = child.log_path.read_text().split()
    assert len(files) == 4, files
    for file in files:
        assert Path(file).is_relative_to(tree) and file.endswith(".so"), file
    # The same command without the build runs the checkout's sources.
    plain = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert all(f.endswith(".py") for f in plain.stdout.split())


@pytest.mark.timeout(1800)
def test_the_suites_pass_on_the_compiled_build(tree: Path) -> None:
    done = subprocess.run(
        [
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
            "not source_only",
            *SUITES,
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join((str(tree), str(ROOT)))},
        capture_output=True,
        text=True,
        timeout=1700,
        check=False,
    )
    tail = "\n".join(done.stdout.splitlines()[-30:])
    assert done.returncode == 0, f"the compiled build failed:\n{tail}\n{done.stderr[-2000:]}"
    assert " passed" in tail and "deselected" in tail


def test_no_compiled_coroutine_awaits_in_a_finally_after_handling_an_exception() -> None:
    # mypyc raises the handled exception again when such a `finally` awaits something that does
    # not suspend (bench/README.md); the suites catch it only where they go, so forbid the shape.
    found = []
    for name in build.COMPILED:
        for node in ast.walk(ast.parse((ROOT / name).read_text())):
            if isinstance(node, ast.Try) and node.handlers and node.finalbody:
                inside = (n for s in node.finalbody for n in ast.walk(s))
                if any(isinstance(n, ast.Await) for n in inside):
                    found.append(f"{name}:{node.lineno}")
    assert found == []
