"""Every registry test runs once per implementation: a SQLite file and a fresh
schema on a real PostgreSQL server (see :mod:`tests.unit.registry_backends`)."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

import pytest

from starmux.relay.sqlite_registry import SqliteRegistry

from ..registry_backends import Backend, PostgresBackend, SqliteBackend, fresh_schema
from .cases import AnyRegistry


@pytest.fixture
def path(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "relay.db"


@pytest.fixture(params=["sqlite", "postgresql"])
async def backend(request: pytest.FixtureRequest, path: pathlib.Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        yield SqliteBackend(path)
        return
    async for schema in fresh_schema():
        yield PostgresBackend(schema)


@pytest.fixture
async def reg(backend: Backend) -> AsyncIterator[AnyRegistry]:
    registry = backend.make()
    await registry.open()
    yield registry
    await registry.close()


@pytest.fixture
async def sqlite_reg(path: pathlib.Path) -> AsyncIterator[SqliteRegistry]:
    registry = SqliteRegistry(path)
    await registry.open()
    yield registry
    await registry.close()
