"""The macOS bundle's settings, checked on Linux: RemoteLLM.app is built on a Mac, so these
tests read what the build takes from packaging/macos/ (the Info.plist entries, PyInstaller's
keyword arguments, the entitlements, the icon, the signing script) and the LaunchAgent that
points into the app."""

from __future__ import annotations

import importlib.util
import os
import plistlib
import re
import runpy
import shutil
import struct
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from platformdirs.macos import MacOS
from PySide6.QtGui import QImage

from connector_app.core.autostart import LABEL, Autostart
from connector_app.core.secrets import SECRET_FIELDS, SERVICE

ROOT = Path(__file__).parents[2]
MACOS = ROOT / "packaging" / "macos"
SIGN = MACOS / "sign_and_notarize.sh"
ENTITLEMENTS = MACOS / "entitlements.plist"

# The PNG-based ICNS element types and the size of their images (Apple's icns format).
ICNS_SIZES = {
    "icp4": 16,
    "icp5": 32,
    "ic11": 32,
    "ic12": 64,
    "ic07": 128,
    "ic13": 256,
    "ic08": 256,
    "ic14": 512,
    "ic09": 512,
    "ic10": 1024,
}


@pytest.fixture(scope="module")
def settings() -> dict[str, Any]:
    return runpy.run_path(str(MACOS / "app_settings.py"))


@pytest.fixture(scope="module")
def version() -> str:
    return metadata.version("remotellm")


def pyinstaller_source(relative: str) -> str:
    """A file of the installed PyInstaller, read as text (importing it is not needed)."""
    spec = importlib.util.find_spec("PyInstaller")
    assert spec is not None and spec.submodule_search_locations
    return (Path(spec.submodule_search_locations[0]) / relative).read_text()


def accepted_kwargs(source: str, cls: str) -> set[str]:
    """The keyword arguments a PyInstaller build target reads with `kwargs.get(...)`."""
    body = source.split(f"class {cls}(", 1)[1].split("\nclass ", 1)[0]
    return set(re.findall(r"kwargs\.get\(\s*['\"](\w+)['\"]", body))


def test_info_plist_survives_plistlib_and_holds_every_setting(
    settings: dict[str, Any], version: str
) -> None:
    plist = plistlib.loads(plistlib.dumps(settings["info_plist"](version)))
    assert plist == {
        "CFBundleName": "RemoteLLM",
        "CFBundleDisplayName": "RemoteLLM",
        "CFBundleIdentifier": "org.remotellm.connector",
        "CFBundleExecutable": "remotellm-connector",
        "CFBundlePackageType": "APPL",
        "CFBundleShortVersionString": version,
        "CFBundleVersion": version,
        # The PySide6-Essentials 6.11 wheels are tagged macosx_13_0.
        "LSMinimumSystemVersion": "13.0",
        "LSUIElement": True,
        # PyInstaller writes LSBackgroundOnly=True for a console EXE; that app shows no UI.
        "LSBackgroundOnly": False,
        "LSApplicationCategoryType": "public.app-category.developer-tools",
        "NSHighResolutionCapable": True,
        "NSRequiresAquaSystemAppearance": False,
        "NSHumanReadableCopyright": settings["COPYRIGHT"],
        "NSLocalNetworkUsageDescription": settings["LOCAL_NETWORK_REASON"],
    }
    assert "local network" in plist["NSLocalNetworkUsageDescription"]
    assert "MIT" in plist["NSHumanReadableCopyright"]


def test_the_plist_version_is_the_package_version(settings: dict[str, Any]) -> None:
    plist = settings["info_plist"](metadata.version("remotellm"))
    assert plist["CFBundleShortVersionString"] == metadata.version("remotellm")
    assert isinstance(plist["CFBundleVersion"], str)  # a number here crashes the app at start


def test_bundle_kwargs_are_ones_pyinstallers_bundle_reads(
    settings: dict[str, Any], version: str
) -> None:
    kwargs = settings["bundle_kwargs"](version, "build/remotellm.icns")
    assert kwargs == {
        "name": "RemoteLLM.app",
        "icon": "build/remotellm.icns",
        "bundle_identifier": settings["BUNDLE_ID"],
        "version": version,
        "info_plist": settings["info_plist"](version),
    }
    # BUNDLE reads its options with kwargs.get, so a misspelt one would be ignored silently.
    assert set(kwargs) <= accepted_kwargs(pyinstaller_source("building/osx.py"), "BUNDLE")


def test_codesign_kwargs_are_ones_pyinstallers_exe_reads(settings: dict[str, Any]) -> None:
    entitlements = str(ENTITLEMENTS)
    signed = settings["codesign_kwargs"]("Developer ID Application: X (TEAM)", entitlements)
    assert signed == {
        "codesign_identity": "Developer ID Application: X (TEAM)",
        "entitlements_file": entitlements,
        "target_arch": None,
    }
    # Ad hoc signing turns no hardened runtime on, so entitlements would mean nothing.
    adhoc = settings["codesign_kwargs"](None, entitlements, "universal2")
    assert adhoc == {
        "codesign_identity": None,
        "entitlements_file": None,
        "target_arch": "universal2",
    }
    assert set(signed) <= accepted_kwargs(pyinstaller_source("building/api.py"), "EXE")


def test_the_bundle_id_is_the_launch_agents_label(settings: dict[str, Any]) -> None:
    assert settings["BUNDLE_ID"] == LABEL


@pytest.mark.parametrize("headless", [False, True], ids=["tray", "headless"])
def test_the_launch_agent_starts_the_apps_executable(
    settings: dict[str, Any], version: str, tmp_path: Path, headless: bool
) -> None:
    executable = settings["executable_path"]()
    autostart = Autostart(tmp_path, platform="darwin", command=[executable])
    agent = plistlib.loads(autostart.render(headless).encode())
    info = settings["info_plist"](version)
    assert executable == f"/Applications/RemoteLLM.app/Contents/MacOS/{info['CFBundleExecutable']}"
    assert agent["ProgramArguments"] == [executable, *(["--headless"] if headless else [])]
    assert agent["Label"] == info["CFBundleIdentifier"] + (".headless" if headless else "")
    assert autostart.path(headless).name == agent["Label"] + ".plist"


def test_entitlements_hold_only_what_the_hardened_runtime_needs() -> None:
    with ENTITLEMENTS.open("rb") as file:
        entitlements = plistlib.load(file)
    # ctypes' libffi closures (keyring's Keychain backend, truststore); no sandbox, and no
    # library-validation exception since every library is signed with the app's identity.
    assert entitlements == {"com.apple.security.cs.allow-unsigned-executable-memory": True}


def read_icns(data: bytes) -> list[tuple[str, bytes]]:
    """The elements of an ICNS file, checking each length on the way."""
    assert data[:4] == b"icns"
    assert struct.unpack(">I", data[4:8])[0] == len(data)
    elements, offset = [], 8
    while offset < len(data):
        kind, length = (
            data[offset : offset + 4],
            struct.unpack(">I", data[offset + 4 : offset + 8])[0],
        )
        assert length > 8 and offset + length <= len(data)
        elements.append((kind.decode("ascii"), data[offset + 8 : offset + length]))
        offset += length
    return elements


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, which must come first."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def test_make_icns_renders_the_icon_at_every_size(tmp_path: Path) -> None:
    output = tmp_path / "build" / "remotellm.icns"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    done = subprocess.run(
        [sys.executable, str(MACOS / "make_icns.py"), str(output)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    elements = read_icns(output.read_bytes())
    assert [kind for kind, _ in elements] == list(ICNS_SIZES)
    for kind, png in elements:
        size = ICNS_SIZES[kind]
        assert png_size(png) == (size, size), kind
        image = QImage.fromData(png)
        assert (image.width(), image.height()) == (size, size), kind
        # The SVG's rounded square fills the canvas: clear corners, opaque inside, also near
        # the far edge (so it is drawn at this size, not at its own 64 px in a corner).
        assert image.pixelColor(0, 0).alpha() == 0, kind
        for x, y in (
            (size // 2, size // 2),
            (size * 9 // 10, size // 2),
            (size // 2, size * 9 // 10),
        ):
            assert image.pixelColor(x, y).alpha() == 255, (kind, x, y)


def test_make_icns_names_a_missing_svg(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.svg"
    done = subprocess.run(
        [
            sys.executable,
            str(MACOS / "make_icns.py"),
            str(tmp_path / "x.icns"),
            "--svg",
            str(missing),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"{missing} does not exist" in done.stderr
    assert not (tmp_path / "x.icns").exists()


def run_sign(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the signing script, on `path` instead of PATH if given."""
    bash = shutil.which("bash")
    assert bash, "bash is missing: install the Debian package bash"
    env = {**os.environ, **({"PATH": path} if path is not None else {})}
    return subprocess.run(
        [bash, str(SIGN), *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_sign_script_parses_and_passes_shellcheck() -> None:
    bash = shutil.which("bash")
    assert bash, "bash is missing: install the Debian package bash"
    assert subprocess.run([bash, "-n", str(SIGN)], timeout=60).returncode == 0
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: install the Debian package shellcheck"
    done = subprocess.run([shellcheck, str(SIGN)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout


def test_sign_script_help_names_the_parameters_and_the_entitlements() -> None:
    done = run_sign("--help")
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("Usage: sign_and_notarize.sh --identity IDENTITY")
    for word in ("--identity", "--keychain-profile", "--entitlements", "--output", "APP"):
        assert word in done.stdout
    default = re.search(r"\(default: (\S+entitlements\.plist)\)", done.stdout)
    assert default and Path(default[1]) == ENTITLEMENTS and ENTITLEMENTS.is_file()


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """An app bundle's outline: enough for the script's checks before it signs anything."""
    bundle = tmp_path / "RemoteLLM.app"
    (bundle / "Contents").mkdir(parents=True)
    (bundle / "Contents" / "Info.plist").write_bytes(plistlib.dumps({"CFBundleName": "x"}))
    return bundle


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "missing APP"),
        (["{app}"], "missing --identity"),
        (["--identity", "Developer ID Application: X", "{app}"], "missing --keychain-profile"),
        (["--identity"], "--identity needs a value"),
        (["--deep", "{app}"], "unknown option --deep"),
        (["{app}", "{app}"], "one APP only"),
        (["--identity", "I", "--keychain-profile", "P", "{tmp}"], "is not an app bundle"),
        (
            ["--identity", "I", "--keychain-profile", "P", "--entitlements", "{tmp}/e", "{app}"],
            "entitlements file {tmp}/e does not exist",
        ),
    ],
    ids=[
        "nothing",
        "no-identity",
        "no-profile",
        "no-value",
        "unknown",
        "two-apps",
        "not-app",
        "no-ent",
    ],
)
def test_sign_script_usage_errors_exit_2(app: Path, args: list[str], message: str) -> None:
    fill = {"app": str(app), "tmp": str(app.parent)}
    done = run_sign(*(arg.format(**fill) for arg in args))
    assert done.returncode == 2
    assert done.stdout == ""
    assert message.format(**fill) in done.stderr
    assert "--help" in done.stderr


def test_sign_script_stops_before_signing_without_the_mac_tools(app: Path, tmp_path: Path) -> None:
    # Only what the script needs before its first Mac tool: no codesign on this PATH, also
    # when the tests run on a Mac.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("basename", "dirname"):
        found = shutil.which(tool)
        assert found, f"{tool} is missing: install the Debian package coreutils"
        (bin_dir / tool).symlink_to(found)
    done = run_sign("--identity", "I", "--keychain-profile", "P", str(app), path=str(bin_dir))
    assert done.returncode == 1
    assert "codesign not found: signing needs macOS" in done.stderr
    assert done.stdout == ""


def test_sign_script_signs_inside_out_with_the_hardened_runtime() -> None:
    script = SIGN.read_text()
    sign = re.search(r"^sign\(\) \{ (.*) \}$", script, re.MULTILINE)
    assert sign, "one sign() function signs every piece"
    assert sign[1] == 'codesign --force --timestamp --options runtime --sign "$IDENTITY" "$@";'
    # --deep only verifies; it never signs (Apple: "--deep considered harmful").
    code = [line.strip() for line in script.splitlines() if not line.lstrip().startswith("#")]
    deep_lines = [line for line in code if "--deep" in line]
    assert deep_lines == ['codesign --verify --deep --strict --verbose=2 "$APP"']
    # Nested code first, then the app, with the entitlements on the app alone.
    body = script.split("sign_app() {", 1)[1]
    assert body.index("sign_nested_code") < body.index('sign --entitlements "$ENTITLEMENTS" "$APP"')
    assert script.count('--entitlements "$ENTITLEMENTS"') == 1
    for step in (
        "notarytool submit",
        "--wait",
        "stapler staple",
        "spctl --assess",
        "ditto -c -k --keepParent",
    ):
        assert step in script


INSTALL_GUIDE = ROOT / "docs" / "install.md"


def test_the_install_guide_names_the_paths_the_app_uses(settings: dict[str, Any]) -> None:
    guide = INSTALL_GUIDE.read_text()
    config = MacOS("remotellm").user_config_path.relative_to(Path.home())
    for text in (
        f"~/{config.as_posix()}/",
        f"~/Library/LaunchAgents/{LABEL}.plist",
        f"{LABEL}.headless.plist",
        f"launchctl bootout gui/$(id -u)/{LABEL}",
        f"service `{SERVICE}`",
        f"macOS {settings['MINIMUM_MACOS'].removesuffix('.0')} ",
        settings["executable_path"](),
        "xattr -dr com.apple.quarantine /Applications/RemoteLLM.app",
        "uv run --group packaging python packaging/build_bundle.py",
    ):
        assert text in guide, text
    for name in SECRET_FIELDS:
        assert f"security delete-generic-password -s {SERVICE} -a {name}" in guide
    # Every option the signing script takes is in the guide.
    options = set(re.findall(r"^  (--[a-z-]+)", run_sign("--help").stdout, re.MULTILINE))
    assert options == {"--identity", "--keychain-profile", "--entitlements", "--output"}
    assert all(option in guide for option in options)
