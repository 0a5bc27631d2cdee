"""What the bundle leaves out of PySide6, and the libraries only those parts pulled in.

PyInstaller's Qt hooks collect every plugin of each plugin type a used Qt module names
(all nine platform plugins, the GTK 3 theme with GTK itself, every image format) and
every Qt translation. The app needs far less, so the spec keeps an explicit list and
then drops the shared libraries that only the dropped plugins needed.

Loaded by the spec (and the tests) with `runpy.run_path`: `packaging/` is a folder of
scripts, never an importable package.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable
from pathlib import PurePath

# (destination name, source path, type code): PyInstaller's TOC entry.
Entry = tuple[str, str, str]

# Per plugin folder, the plugins the app loads (by file stem without the `lib` prefix);
# a folder not listed here is left out whole. Linux first, then the macOS names.
PLUGINS_KEPT: dict[str, frozenset[str]] = {
    # X11 and Wayland sessions; macOS.
    "platforms": frozenset({"qxcb", "qwayland", "qcocoa"}),
    # Dark mode and the file picker through the desktop portal (GTK 3 itself is not shipped).
    "platformthemes": frozenset({"qxdgdesktopportal"}),
    # Typing accented letters and CJK input in the Settings dialog.
    "platforminputcontexts": frozenset(
        {"composeplatforminputcontextplugin", "ibusplatforminputcontextplugin"}
    ),
    # The tray and window icons are SVG.
    "imageformats": frozenset({"qsvg"}),
    "iconengines": frozenset({"qsvgicon"}),
    # A Wayland window needs a shell and draws its own title bar.
    "wayland-shell-integration": frozenset({"xdg-shell"}),
    "wayland-decoration-client": frozenset({"bradient", "adwaita"}),
    # QtNetwork's TLS backend (the connector's own TLS goes through Python's ssl module).
    "tls": frozenset({"qopensslbackend", "qsecuretransportbackend"}),
    # The native look on macOS.
    "styles": frozenset({"qmacstyle"}),
}

# Python packages that are installed beside the app for development but never imported by
# it; PyInstaller would follow optional imports into them (pydantic's mypy plugin into mypy,
# structlog's greenlet support into greenlet, PyInstaller's own runtime hook into setuptools).
EXCLUDED_MODULES: tuple[str, ...] = (
    "broker",
    "mypy",
    "hypothesis",
    "pytest",
    "_pytest",
    "setuptools",
    "pkg_resources",
    "greenlet",
    "tkinter",
    # The interactive prompt's line editing (GNU readline, GPL): nothing in the app asks for it.
    "readline",
    "sqlalchemy",
    "IPython",
)


def plugin_of(dest: str) -> tuple[str, str] | None:
    """(plugin folder, plugin stem) for a Qt plugin's destination path, else None."""
    parts = PurePath(dest).parts
    if "plugins" not in parts[:-2] or "PySide6" not in parts:
        return None
    folder = parts[-2]
    stem = parts[-1].split(".", 1)[0]
    return folder, stem.removeprefix("lib")


def keeps_plugin(dest: str) -> bool:
    """Whether the bundle keeps this binary (True for anything that is not a Qt plugin)."""
    plugin = plugin_of(dest)
    if plugin is None:
        return True
    folder, stem = plugin
    return stem in PLUGINS_KEPT.get(folder, frozenset())


def keeps_data(dest: str) -> bool:
    """Qt's translations are left out: the app is not translated, so they would never load."""
    parts = PurePath(dest).parts
    return not ("PySide6" in parts and "translations" in parts)


def trim_binaries(
    binaries: Iterable[Entry], imports: Callable[[str], Iterable[str]]
) -> tuple[list[Entry], list[Entry]]:
    """(kept, dropped): the plugins not kept, and every library that only they needed.

    `imports(source)` gives the file names of the libraries a binary loads (its whole
    closure, as `ldd` reports it). A library stays if any binary that stays loads it.
    """
    entries = list(binaries)
    dropped_plugins = [e for e in entries if not keeps_plugin(e[0])]
    candidates = {name for e in dropped_plugins for name in map(_base, imports(e[1]))}
    roots = [e for e in entries if keeps_plugin(e[0]) and _base(e[0]) not in candidates]
    needed = {name for e in roots for name in map(_base, imports(e[1]))}
    kept: list[Entry] = []
    dropped: list[Entry] = []
    for entry in entries:
        base = _base(entry[0])
        orphan = base in candidates and base not in needed
        (dropped if not keeps_plugin(entry[0]) or orphan else kept).append(entry)
    return kept, dropped


def trim_links(entries: Iterable[Entry], kept: Iterable[Entry]) -> list[Entry]:
    """`entries` without the symbolic links whose target is no longer in `kept`.

    PyInstaller links a library it moved into a package folder (PySide6/Qt/lib) from the
    top level; the link would dangle once the library is dropped.
    """
    targets = {PurePath(e[0]).as_posix() for e in kept}
    return [
        e
        for e in entries
        if e[2] != "SYMLINK"
        or posixpath.normpath(posixpath.join(posixpath.dirname(e[0]), e[1])) in targets
    ]


def _base(path: str) -> str:
    return PurePath(path).name
