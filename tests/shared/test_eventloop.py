"""Both commands run on uvloop where it is installed (a dependency off Windows)."""

from __future__ import annotations

import asyncio
import sys

import pytest

from shared import eventloop


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop is not a dependency on Windows")
def test_uvloop_is_used_where_installed() -> None:
    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert eventloop.run(which()).startswith("uvloop")
