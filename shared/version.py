"""The installed package's version, the one `--version` prints."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "remotellm"


def package_version() -> str:
    """The version of the installed `remotellm` distribution.

    pyproject.toml is the one source of truth: it is read at run time from the installed
    metadata, so no second copy of the number can drift. A frozen app (PyInstaller) has no
    installed metadata unless its build copies the `.dist-info` folder in (`copy_metadata`
    in the spec); without it this falls back to "unknown" rather than failing.
    """
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"
