"""Build the connector bundle for the platform this runs on, and its archive.

    uv run --group packaging python packaging/build_bundle.py [--dist DIR] [--work DIR]

Linux: `dist/remotellm-connector/` (one folder: the executable and `_internal/`) and
`dist/remotellm-connector-<version>-linux-<arch>.tar.gz`, which holds that folder with a
`.desktop` file, the icon, an install script, the licences and a short install note.
macOS: `dist/RemoteLLM.app` and `dist/remotellm-connector-<version>-macos-<arch>.zip` (ad hoc
signed; `packaging/macos/sign_and_notarize.sh` signs, notarizes and zips it for distribution).

A script, not a module of an importable package: `packaging/` would shadow the `packaging`
library that pip and PyInstaller import.
"""

from __future__ import annotations

import argparse
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator, Sequence
from importlib.metadata import distribution, packages_distributions, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "packaging" / "pyinstaller" / "remotellm-connector.spec"
LINUX = ROOT / "packaging" / "linux"
NAME = "remotellm-connector"
APP = "RemoteLLM.app"
LICENCE_FILE = re.compile(r"(LICEN[CS]E|COPYING|NOTICE|AUTHORS)", re.IGNORECASE)


def archive_name(ver: str, system: str = sys.platform, machine: str = "") -> str:
    """`remotellm-connector-0.1.0-linux-x86_64.tar.gz`, or `-macos-arm64.zip` for the .app."""
    arch = machine or platform.machine()
    if system == "darwin":
        return f"{NAME}-{ver}-macos-{arch}.zip"
    return f"{NAME}-{ver}-linux-{arch}.tar.gz"


def tree_size(path: Path) -> int:
    """Bytes on disk a folder's files take (symbolic links count as links, not targets)."""
    return sum(p.lstat().st_size for p in path.rglob("*") if not p.is_dir() or p.is_symlink())


def bundled_modules(folder: Path) -> set[str]:
    """Every module a one-folder build can import: the executable's archive, the base library,
    the extension modules beside it, and the interpreter's built-in modules."""
    from PyInstaller.archive.readers import CArchiveReader

    exe = CArchiveReader(str(folder / NAME))
    names = set(exe.toc) | set(exe.open_embedded_archive("PYZ.pyz").toc)
    internal = folder / "_internal"
    with zipfile.ZipFile(internal / "base_library.zip") as base:
        for name in base.namelist():
            names.add(name.removesuffix(".pyc").removesuffix("/__init__").replace("/", "."))
    dynload = f"python{sys.version_info[0]}.{sys.version_info[1]}/lib-dynload/"
    for ext in internal.rglob("*.so"):
        rel = ext.relative_to(internal).as_posix().removeprefix(dynload)
        names.add(rel.split(".", 1)[0].replace("/", "."))
    return names | set(sys.builtin_module_names)


def bundled_distributions(folder: Path) -> list[str]:
    """The installed distributions whose modules the one-folder build holds, sorted by name."""
    owners = packages_distributions()
    tops = {m.split(".", 1)[0] for m in bundled_modules(folder)}
    return sorted({dist for top in tops for dist in owners.get(top, [])}, key=str.lower)


def system_libraries(folder: Path) -> list[str]:
    """The shared libraries the build took from the build machine's system (beside Python's
    own and the wheels', which keep their folders or licences of their own)."""
    internal = folder / "_internal"
    return sorted(
        p.name
        for p in internal.glob("lib*.so*")
        if not p.is_symlink() and not p.name.startswith("libpython")
    )


def system_licences(libraries: list[str]) -> list[str]:
    """Per Debian package that provided some of `libraries`, its copyright file; a library no
    package owns (or a build machine without dpkg) is listed as such."""
    owners: dict[str, list[str]] = {}
    for name in libraries:
        found = subprocess.run(
            ["dpkg", "-S", f"*/{name}"], capture_output=True, text=True, check=False
        ) if shutil.which("dpkg") else None  # fmt: skip
        package = found.stdout.split(":", 1)[0] if found and found.returncode == 0 else ""
        owners.setdefault(package, []).append(name)
    parts = []
    for package, names in sorted(owners.items()):
        copyright_file = Path("/usr/share/doc", package, "copyright")
        if package and copyright_file.is_file():
            text = copyright_file.read_text(errors="replace")
            parts.append(f"{', '.join(names)} (Debian package {package}):\n\n{text}")
        else:
            parts.append(f"{', '.join(names)}: from the build machine; no licence file found")
    return parts


def third_party_licences(distributions: list[str], libraries: Sequence[str] = ()) -> str:
    """Python's licence, every bundled distribution's (its licence files, else its metadata's
    words) and the system libraries' (`system_licences`)."""
    parts = [
        "Licences of the software in this bundle.\n\n"
        f"Python {platform.python_version()}:\n\n"
        + Path(sys.base_prefix, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}")
        .joinpath("LICENSE.txt")
        .read_text(errors="replace")
    ]
    for name in distributions:
        if name.lower() == "remotellm":
            continue
        dist = distribution(name)
        meta = dist.metadata
        header = (
            f"{name} {dist.version}: {meta.get('License-Expression') or meta.get('License') or ''}"
        )
        texts = [
            Path(f.locate()).read_text(errors="replace")
            for f in dist.files or []
            if LICENCE_FILE.search(f.name) and f.suffix not in (".py", ".pyc")
        ]
        if name.lower().startswith(("pyside6", "shiboken6")):
            texts.append(
                "Qt and Qt for Python are used under the GNU LGPL version 3. The Qt libraries "
                "are the unmodified shared libraries in _internal/PySide6/Qt/lib and may be "
                "replaced by compatible builds. Source: the Qt Project (qt.io)."
            )
        parts.append("\n\n".join([header.strip(" :"), *texts]))
    parts.extend(system_licences(list(libraries)))
    return ("\n\n" + "=" * 78 + "\n\n").join(parts) + "\n"


def build(dist: Path, work: Path) -> Path:
    """Run PyInstaller on the spec; returns the one-folder build (or the .app on macOS)."""
    import PyInstaller.__main__

    PyInstaller.__main__.run(
        [
            str(SPEC),
            "--noconfirm",
            "--clean",
            "--log-level",
            "WARN",
            "--distpath",
            str(dist),
            "--workpath",
            str(work),
        ]
    )
    return dist / (APP if sys.platform == "darwin" else NAME)


def linux_archive(folder: Path, dist: Path, ver: str) -> Path:
    """The .tar.gz: the one-folder build plus what a desktop needs to list and start it."""
    target = dist / archive_name(ver)
    top = target.name.removesuffix(".tar.gz")
    extras = {
        f"{NAME}.desktop": (LINUX / f"{NAME}.desktop").read_bytes(),
        "remotellm.svg": (ROOT / "assets" / "remotellm.svg").read_bytes(),
        "install.sh": (LINUX / "install.sh").read_bytes(),
        "INSTALL.txt": (LINUX / "INSTALL.txt").read_bytes(),
        "LICENSE": (ROOT / "LICENSE").read_bytes(),
        "THIRD-PARTY-LICENSES.txt": third_party_licences(
            bundled_distributions(folder), system_libraries(folder)
        ).encode(),
    }
    staging = dist / top
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(folder, staging, symlinks=True)
    for name, data in extras.items():
        (staging / name).write_bytes(data)
    (staging / "install.sh").chmod(0o755)
    with tarfile.open(target, "w:gz", compresslevel=9) as tar:
        tar.add(staging, arcname=top, filter=_normalised)
    shutil.rmtree(staging)
    return target


def _normalised(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Files owned by nobody in particular, so unpacking as root does not keep the builder's ids."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def macos_archive(app: Path, dist: Path, ver: str) -> Path:
    """The .zip: a folder with the .app and the licences, copied and zipped with `ditto` to
    keep the app's symbolic links and signatures."""
    target = dist / archive_name(ver)
    staging = dist / target.name.removesuffix(".zip")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    subprocess.run(["ditto", str(app), str(staging / app.name)], check=True)
    (staging / "LICENSE").write_bytes((ROOT / "LICENSE").read_bytes())
    licences = third_party_licences(bundled_distributions(dist / NAME))
    (staging / "THIRD-PARTY-LICENSES.txt").write_text(licences)
    subprocess.run(["ditto", "-c", "-k", "--keepParent", str(staging), str(target)], check=True)
    shutil.rmtree(staging)
    return target


def _lines(folder: Path, archive: Path | None) -> Iterator[str]:
    yield f"built {folder} ({tree_size(folder) / 1e6:.1f} MB unpacked)"
    if archive is not None:
        yield f"archive {archive} ({archive.stat().st_size / 1e6:.1f} MB)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dist", type=Path, default=ROOT / "dist", help="output folder (dist/)")
    parser.add_argument(
        "--work",
        type=Path,
        default=ROOT / "build" / "pyinstaller",
        help="PyInstaller's work folder",
    )
    parser.add_argument("--no-archive", action="store_true", help="only the folder or the .app")
    args = parser.parse_args(argv)
    if sys.platform not in ("darwin", "linux"):
        parser.error(f"bundles are built on Linux and macOS, not {sys.platform}")
    ver = version("remotellm")
    folder = build(args.dist.resolve(), args.work.resolve())
    archive = None
    if not args.no_archive:
        make = macos_archive if sys.platform == "darwin" else linux_archive
        archive = make(folder, args.dist.resolve(), ver)
    for line in _lines(folder, archive):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
