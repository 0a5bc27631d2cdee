"""The private Secret Service fixture itself: it stops what it starts, and names what is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.secretservice import running_secret_service


def test_the_bus_and_the_keyring_are_stopped_and_their_files_removed(tmp_path: Path) -> None:
    with running_secret_service(tmp_path) as service:
        assert [p.poll() for p in service.processes] == [None, None]
        runtime = Path(service.env["XDG_RUNTIME_DIR"])
        assert service.address.startswith(f"unix:path={runtime}/")
        assert Path(service.env["XDG_DATA_HOME"]).is_relative_to(tmp_path)
        service.store("probe", "value")
        assert service.lookup("probe") == "value"
        assert (tmp_path / "home/.local/share/keyrings/login.keyring").is_file()
    assert [p.returncode for p in service.processes] == [0, 0]
    assert not runtime.exists()


def test_a_missing_tool_fails_the_test_naming_the_debian_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # none of the tools in it
    with (
        pytest.raises(pytest.fail.Exception, match="dbus-daemon, gnome-keyring, libsecret-tools"),
        running_secret_service(tmp_path),
    ):
        pass
