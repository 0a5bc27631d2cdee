"""Runs `remotellm-connector` from this checkout and, at exit, writes the modules it imported.

Only modules the app imported count, not those the interpreter loaded at start-up (`site`
and what the environment's `.pth` files bring); and only those loaded from a file (a `.py`
or an extension module): the others are built into the interpreter or made at run time
(shiboken's signature support, Cython's runtime, `os.path`) and need nothing from a bundle.

`python tests/bundle/modules_probe.py OUT [args...]`: the bundle tests compare that list with
what the bundle holds, so a module PyInstaller missed or the spec trimmed is caught.
"""

import atexit
import sys
from pathlib import Path


def _from_a_file(module: object) -> bool:
    spec = getattr(module, "__spec__", None)
    origin = getattr(spec, "origin", None) or ""
    return origin.endswith((".py", ".pyc", ".so")) and Path(origin).is_file()


def _dump(out: Path, before: frozenset[str]) -> None:
    names = [n for n, m in list(sys.modules.items()) if n not in before and _from_a_file(m)]
    out.write_text("\n".join(sorted(names)))


if __name__ == "__main__":
    atexit.register(_dump, Path(sys.argv[1]), frozenset(sys.modules))
    sys.argv = ["remotellm-connector", *sys.argv[2:]]
    sys.path.insert(0, str(Path(__file__).parents[2]))
    from connector_app.cli import main

    sys.exit(main())
