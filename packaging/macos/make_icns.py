"""Render assets/remotellm.svg into the app's .icns icon.

Usage: python packaging/macos/make_icns.py OUTPUT.icns [--svg PATH]

Each size is drawn from the SVG with Qt's SVG renderer (offscreen, so it runs on a build
machine without a display, Linux included) and stored as PNG; the ICNS container is written
by hand because it is only a header and a list of typed chunks, and macOS's `iconutil`
exists only on a Mac.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
from pathlib import Path

DEFAULT_SVG = Path(__file__).resolve().parents[2] / "assets" / "remotellm.svg"

ICNS_TYPES: tuple[tuple[bytes, int], ...] = (
    (b"icp4", 16),
    (b"icp5", 32),
    (b"ic11", 32),  # 16x16@2x
    (b"ic12", 64),  # 32x32@2x
    (b"ic07", 128),
    (b"ic13", 256),  # 128x128@2x
    (b"ic08", 256),
    (b"ic14", 512),  # 256x256@2x
    (b"ic09", 512),
    (b"ic10", 1024),  # 512x512@2x
)
"""The PNG-based ICNS element types and the pixel size each holds."""


def icns_bytes(entries: list[tuple[bytes, bytes]]) -> bytes:
    """An ICNS file: 'icns', the big-endian total length, then each type, length and data.

    Each element's length counts its own 8-byte header, as the file's counts its own.
    """
    body = b"".join(kind + struct.pack(">I", 8 + len(data)) + data for kind, data in entries)
    return b"icns" + struct.pack(">I", 8 + len(body)) + body


def render_pngs(svg: Path, sizes: set[int]) -> dict[int, bytes]:
    """Each size's PNG, drawn from the SVG on a transparent square."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    # Imported here so `--help` works without Qt, and after the platform is chosen.
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice
    from PySide6.QtGui import QGuiApplication, QImage, QImageWriter, QPainter
    from PySide6.QtSvg import QSvgRenderer

    # Held in a local so the application outlives every image drawn below.
    _app = QGuiApplication.instance() or QGuiApplication([])
    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise SystemExit(f"{svg} is not an SVG image Qt can draw; check the file.")
    pngs: dict[int, bytes] = {}
    for size in sorted(sizes):
        image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
        image.fill(0)
        painter = QPainter(image)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        renderer.render(painter)
        painter.end()
        data = QByteArray()
        buffer = QBuffer(data)
        buffer.open(QIODevice.OpenModeFlag.WriteOnly)
        writer = QImageWriter(buffer, QByteArray(b"png"))
        if not writer.write(image):
            raise SystemExit(f"Qt could not write a PNG ({writer.errorString()}).")
        buffer.close()
        pngs[size] = bytes(data.data())
    return pngs


def make_icns(svg: Path, output: Path) -> Path:
    """Write the .icns for `svg` to `output`; returns `output`."""
    pngs = render_pngs(svg, {size for _, size in ICNS_TYPES})
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(icns_bytes([(kind, pngs[size]) for kind, size in ICNS_TYPES]))
    return output


def main(argv: list[str] | None = None) -> int:
    """Command line: the output path, optionally another SVG."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="the .icns file to write")
    parser.add_argument("--svg", type=Path, default=DEFAULT_SVG, help="the source SVG")
    args = parser.parse_args(argv)
    if not args.svg.is_file():
        parser.error(f"{args.svg} does not exist; pass --svg with the icon's path.")
    print(make_icns(args.svg, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
