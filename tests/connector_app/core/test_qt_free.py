"""The connector core never imports Qt (the tray layer is the only Qt user)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).parents[3] / "connector_app" / "core"
QT_PACKAGES = ("PySide6", "PyQt5", "PyQt6", "shiboken6", "qasync", "connector_app.qt")


def test_no_module_in_core_imports_qt() -> None:
    offenders = []
    for path in sorted(CORE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith(QT_PACKAGES)]
    assert not offenders
    assert len(list(CORE.glob("*.py"))) > 5  # the scan really looked at the core


def test_importing_the_whole_core_loads_no_qt() -> None:
    code = (
        "import sys, pkgutil, importlib, connector_app.core as c\n"
        "for m in pkgutil.iter_modules(c.__path__):\n"
        "    importlib.import_module(f'{c.__name__}.{m.name}')\n"
        f"print(sorted(n for n in sys.modules if n.startswith({QT_PACKAGES!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_only_the_qt_package_imports_qt() -> None:
    root = CORE.parents[1]
    offenders = []
    for package in ("shared", "broker", "connector_app"):
        for path in sorted((root / package).rglob("*.py")):
            if "qt" in path.relative_to(root).parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                else:
                    continue
                hits = [n for n in names if n.startswith(QT_PACKAGES[:-1])]
                offenders += [f"{path.relative_to(root)}: {n}" for n in hits]
    assert offenders == []
