"""The build script's and the spec's settings, checked without building."""

from __future__ import annotations

import re
import runpy
from pathlib import Path
from typing import Any

from connector_app.core.autostart import LABEL

ROOT = Path(__file__).parents[2]
BUILD: dict[str, Any] = runpy.run_path(str(ROOT / "packaging" / "build_bundle.py"))
MAC: dict[str, Any] = runpy.run_path(str(ROOT / "packaging" / "macos" / "app_settings.py"))
SPEC = (ROOT / "packaging" / "pyinstaller" / "remotellm-connector.spec").read_text()
SIGN = (ROOT / "packaging" / "macos" / "sign_and_notarize.sh").read_text()


def test_archive_names_match_what_the_signing_script_writes() -> None:
    name = BUILD["archive_name"]
    assert name("1.2.3", "linux", "x86_64") == "remotellm-connector-1.2.3-linux-x86_64.tar.gz"
    mac = name("1.2.3", "darwin", "arm64")
    assert mac == "remotellm-connector-1.2.3-macos-arm64.zip"
    assert "remotellm-connector-$version-macos-$arch.zip" in SIGN


def test_the_spec_takes_every_macos_setting_from_app_settings() -> None:
    (spec_name,) = re.findall(r'^NAME = "([^"]+)"$', SPEC, re.MULTILINE)
    assert spec_name == MAC["EXECUTABLE"]
    assert 'mac["codesign_kwargs"](' in SPEC
    assert 'BUNDLE(coll, **mac["bundle_kwargs"](' in SPEC
    assert "entitlements.plist" in SPEC and "make_icns.py" in SPEC
    assert MAC["BUNDLE_ID"] == LABEL


def test_tree_size_counts_links_as_links(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * 10_000)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "link").symlink_to("../big")
    assert 10_000 < BUILD["tree_size"](tmp_path) < 10_200
