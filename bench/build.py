"""Which build of RemoteLLM the bench runs: the checkout's Python, or its hot path compiled.

A wheel built from this checkout compiles the relay's hot path with mypyc
(`packaging/native.py`), so that is what an operator who installs RemoteLLM runs, and what a
full run measures. The bench does not build and install a wheel each time: it copies the
three packages and pyproject.toml into `bench/results/native/<key>/`, compiles that copy in
place with the same function the wheel build uses, and starts the broker and the connector
with that copy first on their path (`-P` and `PYTHONPATH`, so the checkout in the current
directory does not shadow it). The key hashes every source file, the interpreter and mypy's
version, so an edit rebuilds (about a minute and a half on the two-core machine) and a rerun
does not. The stub, the floor and the bare relays always run the checkout.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / "results" / "native"
PACKAGES = ("shared", "broker", "connector_app")
DONE = "compiled.ok"


class Unavailable(Exception):
    """The compiled build could not be made here (no C compiler, or mypyc refused the code)."""


def _native() -> ModuleType:
    """packaging/native.py, loaded by path (`packaging` is another distribution's name)."""
    spec = importlib.util.spec_from_file_location("remotellm_native", ROOT / "packaging/native.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    digest.update((root / "packaging" / "native.py").read_bytes())
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
        print("compiling the hot path with mypyc (about 90 s) ...", file=sys.stderr, flush=True)
        try:
            built = _native().compile_tree(stage)
        except Exception as exc:
            raise Unavailable(f"compiling the hot path failed: {exc!r}") from exc
        if not built:
            raise Unavailable("mypyc wrote no extension module")
        (stage / DONE).write_text("\n".join(str(p.relative_to(stage)) for p in built) + "\n")
        shutil.rmtree(tree, ignore_errors=True)
        stage.rename(tree)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return tree
