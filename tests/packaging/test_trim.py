"""The spec's trimming rules (packaging/pyinstaller/trim.py) on made-up build lists."""

from __future__ import annotations

import runpy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

TRIM: dict[str, Any] = runpy.run_path(
    str(Path(__file__).parents[2] / "packaging" / "pyinstaller" / "trim.py")
)
PLUGINS = "PySide6/Qt/plugins"

# What each made-up binary loads (its ldd closure), by source path.
LOADS = {
    "/qt/libqxcb.so": ["libQt6XcbQpa.so.6", "libxcb.so.1", "libQt6Gui.so.6"],
    "/qt/libqgtk3.so": ["libgtk-3.so.0", "libcairo.so.2", "libQt6Gui.so.6", "libxcb.so.1"],
    "/qt/libqeglfs.so": ["libQt6EglFSDeviceIntegration.so.6", "libQt6Gui.so.6"],
    "/qt/QtGui.abi3.so": ["libQt6Gui.so.6"],
    "/sys/libgtk-3.so.0": ["libcairo.so.2"],
}


def loads(source: str) -> Iterable[str]:
    return LOADS.get(source, [])


BINARIES = [
    (f"{PLUGINS}/platforms/libqxcb.so", "/qt/libqxcb.so", "BINARY"),
    (f"{PLUGINS}/platformthemes/libqgtk3.so", "/qt/libqgtk3.so", "BINARY"),
    (f"{PLUGINS}/platforms/libqeglfs.so", "/qt/libqeglfs.so", "BINARY"),
    ("PySide6/QtGui.abi3.so", "/qt/QtGui.abi3.so", "EXTENSION"),
    ("PySide6/Qt/lib/libQt6Gui.so.6", "/qt/libQt6Gui.so.6", "BINARY"),
    ("PySide6/Qt/lib/libQt6XcbQpa.so.6", "/qt/libQt6XcbQpa.so.6", "BINARY"),
    ("PySide6/Qt/lib/libQt6EglFSDeviceIntegration.so.6", "/qt/libEglFS.so.6", "BINARY"),
    ("libgtk-3.so.0", "/sys/libgtk-3.so.0", "BINARY"),
    ("libcairo.so.2", "/sys/libcairo.so.2", "BINARY"),
    ("libxcb.so.1", "/sys/libxcb.so.1", "BINARY"),
]


def test_only_listed_plugins_stay_and_libraries_only_dropped_plugins_needed_go() -> None:
    kept, dropped = TRIM["trim_binaries"](BINARIES, loads)
    assert {e[0].rsplit("/", 1)[-1] for e in dropped} == {
        "libqgtk3.so",
        "libqeglfs.so",
        "libgtk-3.so.0",
        "libcairo.so.2",
        "libQt6EglFSDeviceIntegration.so.6",
    }
    # libxcb and libQt6Gui were loaded by dropped plugins too, but a kept binary needs them.
    assert {e[0].rsplit("/", 1)[-1] for e in kept} == {
        "libqxcb.so",
        "QtGui.abi3.so",
        "libQt6Gui.so.6",
        "libQt6XcbQpa.so.6",
        "libxcb.so.1",
    }


def test_a_library_no_plugin_loaded_is_never_dropped() -> None:
    lone = ("libpython3.11.so.1.0", "/py/libpython3.11.so.1.0", "BINARY")
    kept, _ = TRIM["trim_binaries"]([*BINARIES, lone], loads)
    assert lone in kept


def test_translations_are_left_out_and_links_to_dropped_libraries_removed() -> None:
    assert not TRIM["keeps_data"]("PySide6/Qt/translations/qtbase_de.qm")
    assert TRIM["keeps_data"]("connector_app/assets/tray-connected.svg")
    kept = [("PySide6/Qt/lib/libQt6Gui.so.6", "/qt/libQt6Gui.so.6", "BINARY")]
    links = [
        ("libQt6Gui.so.6", "PySide6/Qt/lib/libQt6Gui.so.6", "SYMLINK"),
        ("libQt6OpenGL.so.6", "PySide6/Qt/lib/libQt6OpenGL.so.6", "SYMLINK"),
    ]
    assert TRIM["trim_links"]([*kept, *links], kept) == [*kept, links[0]]


def test_the_kept_plugins_cover_x11_wayland_svg_and_macos() -> None:
    keeps = TRIM["keeps_plugin"]
    wanted = ("platforms/libqxcb.so", "platforms/libqwayland.so", "platforms/libqcocoa.dylib",
              "iconengines/libqsvgicon.so", "imageformats/libqsvg.so",
              "wayland-shell-integration/libxdg-shell.so")  # fmt: skip
    for plugin in wanted:
        assert keeps(f"{PLUGINS}/{plugin}"), plugin
    for plugin in ("platforms/libqvnc.so", "platformthemes/libqgtk3.so",
                   "imageformats/libqjpeg.so", "sqldrivers/libqsqlite.so"):  # fmt: skip
        assert not keeps(f"{PLUGINS}/{plugin}"), plugin
    assert keeps("libssl.so.3")
