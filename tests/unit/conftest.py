"""Fixtures of the local API tests (tests/unit/test_local_api*.py, test_agent_commands.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from .local_api_support import Api, private_dir, serving


@pytest.fixture
def home() -> Iterator[Path]:
    with private_dir() as directory:
        yield directory


@pytest.fixture
async def api(home: Path) -> AsyncIterator[Api]:
    async with serving(home) as running:
        yield running
