"""Both commands run on uvloop where it is installed (a dependency off Windows)."""

from __future__ import annotations

import asyncio
import gc
import sys

import pytest

from shared import eventloop


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop is not a dependency on Windows")
def test_uvloop_is_used_where_installed() -> None:
    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert eventloop.run(which()).startswith("uvloop")


def test_the_startup_heap_is_frozen_before_the_main_coroutine_runs() -> None:
    async def frozen() -> int:
        return gc.get_freeze_count()

    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    try:
        assert eventloop.run(frozen()) > 0
    finally:
        gc.unfreeze()
