"""Every macOS setting of the RemoteLLM.app bundle, in one place.

The PyInstaller spec loads this file with `runpy.run_path` when it builds on a Mac (packaging/
is a folder of scripts, never a package: it would shadow the `packaging` library), and the
tests on Linux load it the same way, so the Info.plist they check is the one a build writes.
Standard library only: the spec runs it inside PyInstaller's interpreter.

Choices, and why:
- `LSUIElement`: the app lives in the menu bar (the tray icon) with no Dock icon or main menu.
  `LSBackgroundOnly` is set to False because PyInstaller writes True for a console EXE, and a
  background-only app may not show any UI at all, not even a menu bar item. (The EXE may
  stay a console one, as on Linux, so `--version` and `autostart` print in a terminal.)
- `LSMinimumSystemVersion` 13.0: the PySide6-Essentials 6.11 wheels are tagged
  `macosx_13_0_universal2`, and Qt 6.11 supports macOS 13 or later.
- `NSLocalNetworkUsageDescription`: since macOS 15 the system asks before an app reaches a
  host on the local network, which is where the LLM server usually runs; the text is the
  reason shown in that prompt.
- Signing: PyInstaller takes the identity, the entitlements and the architecture on EXE (and
  COLLECT and BUNDLE inherit them), not on BUNDLE; see `codesign_kwargs`. The entitlements
  (entitlements.plist) hold only `com.apple.security.cs.allow-unsigned-executable-memory`:
  ctypes (used by keyring's Keychain backend and by truststore) allocates libffi closures in
  writable-then-executable memory, which the hardened runtime forbids without it; when that
  allocation fails libffi maps temporary files instead, which library validation rejects.
  No `disable-library-validation`, since sign_and_notarize.sh signs every nested library with
  the app's own identity, and no App Sandbox entitlements (such as `network.client`), since
  the app is not sandboxed.
"""

from __future__ import annotations

from typing import Any

APP_NAME = "RemoteLLM"
BUNDLE_ID = "org.remotellm.connector"
"""Also the LaunchAgent's label (connector_app/core/autostart.py LABEL); a test keeps them equal."""
EXECUTABLE = "remotellm-connector"
"""The EXE name in the spec, hence Contents/MacOS/<EXECUTABLE> inside the app."""
MINIMUM_MACOS = "13.0"
CATEGORY = "public.app-category.developer-tools"
COPYRIGHT = "Copyright © RemoteLLM contributors. MIT licence."
LOCAL_NETWORK_REASON = (
    "RemoteLLM connects to the LLM server on your local network to share it through your broker."
)


def executable_path(applications: str = "/Applications") -> str:
    """Where the app's executable is once the app is in `applications`: what launchd starts."""
    return f"{applications}/{APP_NAME}.app/Contents/MacOS/{EXECUTABLE}"


def info_plist(version: str) -> dict[str, Any]:
    """The Info.plist entries PyInstaller's BUNDLE merges over its own (`info_plist=`)."""
    return {
        "CFBundleName": APP_NAME,
        "CFBundleDisplayName": APP_NAME,
        "CFBundleIdentifier": BUNDLE_ID,
        "CFBundleExecutable": EXECUTABLE,
        "CFBundlePackageType": "APPL",
        "CFBundleShortVersionString": version,
        "CFBundleVersion": version,
        "LSMinimumSystemVersion": MINIMUM_MACOS,
        "LSUIElement": True,
        "LSBackgroundOnly": False,
        "LSApplicationCategoryType": CATEGORY,
        "NSHighResolutionCapable": True,
        "NSRequiresAquaSystemAppearance": False,
        "NSHumanReadableCopyright": COPYRIGHT,
        "NSLocalNetworkUsageDescription": LOCAL_NETWORK_REASON,
    }


def bundle_kwargs(version: str, icon: str) -> dict[str, Any]:
    """Keyword arguments for PyInstaller's `BUNDLE(coll, **bundle_kwargs(...))`.

    `icon` is the path of the .icns that make_icns.py writes.
    """
    return {
        "name": f"{APP_NAME}.app",
        "icon": icon,
        "bundle_identifier": BUNDLE_ID,
        "version": version,
        "info_plist": info_plist(version),
    }


def codesign_kwargs(
    identity: str | None, entitlements: str, target_arch: str | None = None
) -> dict[str, Any]:
    """Keyword arguments for PyInstaller's `EXE(...)` on macOS (COLLECT and BUNDLE inherit them).

    Without an identity PyInstaller signs ad hoc (arm64 Macs run no unsigned code) and the
    hardened runtime is off, so the entitlements are left out; sign_and_notarize.sh then
    signs the finished app for distribution. `target_arch` None builds for the running
    machine; "universal2" needs a universal2 Python as well as the universal2 Qt wheels.
    """
    return {
        "codesign_identity": identity,
        "entitlements_file": entitlements if identity else None,
        "target_arch": target_arch,
    }
