"""What the Linux archive holds, and the install script in it."""

from __future__ import annotations

import configparser
import os
import runpy
import shutil
import stat
import subprocess
import tarfile
from importlib.metadata import version
from pathlib import Path

from tests.bundle.conftest import BUILD, Bundle


def test_the_archive_is_named_by_version_and_arch_and_holds_one_folder(bundle: Bundle) -> None:
    ver = version("remotellm")
    assert bundle.archive.name == f"remotellm-connector-{ver}-linux-{os.uname().machine}.tar.gz"
    assert bundle.folder.name == bundle.archive.name.removesuffix(".tar.gz")
    with tarfile.open(bundle.archive) as tar:
        members = tar.getmembers()
    assert {m.name.split("/", 1)[0] for m in members} == {bundle.folder.name}
    assert all(m.uid == 0 and m.gid == 0 and not m.uname for m in members)
    top = {p.name for p in bundle.folder.iterdir()}
    assert top == {
        "remotellm-connector",
        "_internal",
        "remotellm-connector.desktop",
        "remotellm.svg",
        "install.sh",
        "INSTALL.txt",
        "LICENSE",
        "THIRD-PARTY-LICENSES.txt",
    }
    for program in ("remotellm-connector", "install.sh"):
        assert (bundle.folder / program).stat().st_mode & stat.S_IXUSR


def test_the_bundle_holds_no_broken_link_no_test_code_no_broker_and_no_qml(
    bundle: Bundle,
) -> None:
    internal = bundle.folder / "_internal"
    dangling = [p for p in internal.rglob("*") if p.is_symlink() and not p.exists()]
    assert not dangling
    modules = runpy.run_path(str(BUILD))["bundled_modules"](bundle.folder)
    assert "connector_app.cli" in modules and "keyring.backends.SecretService" in modules
    for absent in ("broker", "tests", "mypy", "hypothesis", "setuptools", "readline"):
        assert not {m for m in modules if m.split(".")[0] == absent}, absent
    assert not (internal / "PySide6" / "Qt" / "translations").exists()
    qt = {p.name for p in (internal / "PySide6" / "Qt" / "lib").iterdir()}
    assert "libQt6Widgets.so.6" in qt
    assert not {n for n in qt if n.startswith(("libQt6Qml", "libQt6Quick", "libQt6WebEngine"))}


def test_the_licences_cover_python_qt_and_every_bundled_distribution(bundle: Bundle) -> None:
    assert "MIT License" in (bundle.folder / "LICENSE").read_text()
    licences = (bundle.folder / "THIRD-PARTY-LICENSES.txt").read_text()
    assert "PYTHON SOFTWARE FOUNDATION LICENSE" in licences
    assert "GNU LGPL version 3" in licences
    names = ("aiohttp", "websockets", "keyring", "PySide6_Essentials", "truststore", "pydantic")
    for name in names:
        assert f"\n{name} " in licences, name
    # The system libraries the build took along, each with its Debian copyright file.
    for library in ("libX11.so.6", "libxcb-cursor.so.0", "libssl.so.3", "libglib-2.0.so.0"):
        assert f"{library}" in licences and "(Debian package " in licences, library
    assert "no licence file found" not in licences
    # Only what the bundle holds: the broker's own dependencies are not in it.
    for absent in ("SQLAlchemy", "Authlib", "Jinja2", "pytest", "pyinstaller"):
        assert f"\n{absent} " not in licences, absent


def test_the_desktop_file_is_valid_and_install_sh_points_it_at_the_bundle(
    bundle: Bundle, tmp_path: Path
) -> None:
    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str  # type: ignore[assignment,method-assign]
    entry.read(bundle.folder / "remotellm-connector.desktop")
    section = entry["Desktop Entry"]
    assert (section["Type"], section["Icon"], section["Terminal"]) == (
        "Application",
        "remotellm",
        "false",
    )
    env = bundle.env(tmp_path)
    env["PATH"] = "/usr/bin:/bin"  # install.sh is a shell script: sh, cp, sed, ln
    done = subprocess.run(
        [str(bundle.folder / "install.sh")], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    installed = tmp_path / ".local" / "share" / "applications" / "remotellm-connector.desktop"
    assert f'Exec="{bundle.exe}"' in installed.read_text().splitlines()
    icons = tmp_path / ".local" / "share" / "icons"
    icon = icons / "hicolor" / "scalable" / "apps" / "remotellm.svg"
    assert icon.read_bytes() == (bundle.folder / "remotellm.svg").read_bytes()
    link = tmp_path / ".local" / "bin" / "remotellm-connector"
    assert link.resolve() == bundle.exe.resolve()
    done = subprocess.run(
        [str(bundle.folder / "install.sh"), "--uninstall"], env=env, capture_output=True, timeout=30
    )
    assert done.returncode == 0
    assert not installed.exists() and not icon.exists() and not link.is_symlink()
    done = subprocess.run(
        [str(bundle.folder / "install.sh"), "--bogus"], env=env, capture_output=True, timeout=30
    )
    assert done.returncode == 2 and b"usage" in done.stderr


def test_install_sh_leaves_another_install_alone_and_refuses_unsafe_paths(
    bundle: Bundle, tmp_path: Path
) -> None:
    env = {**bundle.env(tmp_path), "PATH": "/usr/bin:/bin"}
    install = str(bundle.folder / "install.sh")
    link = tmp_path / ".local" / "bin" / "remotellm-connector"
    link.parent.mkdir(parents=True)
    other = tmp_path / "tools" / "bin" / "remotellm-connector"  # as `uv tool install` links it
    other.parent.mkdir(parents=True)
    other.write_text("#!/bin/sh\n")
    link.symlink_to(other)
    done = subprocess.run([install], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "another install" in done.stderr
    assert link.readlink() == other
    done = subprocess.run([install, "--uninstall"], env=env, capture_output=True, timeout=30)
    assert done.returncode == 0 and link.readlink() == other
    # A folder whose path sed or the Desktop Entry spec would mangle is refused, not installed.
    copy = tmp_path / "a&b" / "bundle"
    shutil.copytree(bundle.folder, copy, symlinks=True, ignore=shutil.ignore_patterns("_internal"))
    done = subprocess.run(
        [str(copy / "install.sh")], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1 and "without" in done.stderr
    assert link.readlink() == other
