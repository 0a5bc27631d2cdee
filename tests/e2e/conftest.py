"""Fixtures shared by the end-to-end tests that start real processes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.e2e.test_processes import Proc


@pytest.fixture
async def procs() -> AsyncIterator[list[Proc]]:
    """A list to put started processes in; each is killed when the test ends."""
    started: list[Proc] = []
    yield started
    for proc in started:
        await proc.kill()
