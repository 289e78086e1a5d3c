"""The two registry implementations as test backends: SQLite files and PostgreSQL.

Each PostgreSQL test gets a fresh schema of its own on a real server (dropped
after), so tests never see each other's rows and can run in parallel with other
users of the same database. An unreachable server FAILS the test with how to
start one: a registry suite that silently skips proves nothing.
"""

from __future__ import annotations

import os
import pathlib
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiosqlite
import asyncpg
import pytest

from starmux.relay.pg_registry import PostgresRegistry
from starmux.relay.sqlite_registry import SqliteRegistry

#: Where the PostgreSQL tests connect; the database must exist (CREATE SCHEMA rights).
POSTGRES_URL = os.environ.get("STARMUX_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
HOW_TO_START = (
    "PostgreSQL is needed for the registry and cluster tests and is not reachable at "
    f"{POSTGRES_URL} ({{error}}). Start it (Debian: `service postgresql start`, or "
    "`.ci/run` which starts it), or point STARMUX_TEST_POSTGRES at a server where "
    "this user may CREATE SCHEMA."
)

TABLES = [
    "schema_version", "accounts", "controllers", "machines", "revocations", "tickets",
    "registration_tokens", "audit_log", "device_log", "removed_devices", "push_subscriptions",
]  # fmt: skip

Snapshot = dict[str, list[tuple[Any, ...]]]
Registry = SqliteRegistry | PostgresRegistry


def _numbered(sql: str) -> str:
    """``?`` placeholders (the tests' dialect) as PostgreSQL's ``$1, $2, ...``."""
    counter = iter(range(1, 1000))
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


@dataclass
class SqliteBackend:
    path: pathlib.Path
    name: str = "sqlite"
    abort_error: type[Exception] = aiosqlite.IntegrityError
    abort_audit_sql: tuple[str, ...] = (
        "CREATE TRIGGER fail_audit BEFORE INSERT ON audit_log"
        " BEGIN SELECT RAISE(ABORT, 'disk'); END",
    )
    drop_abort_sql: tuple[str, ...] = ("DROP TRIGGER fail_audit",)

    def make(self, **options: Any) -> Registry:
        return SqliteRegistry(self.path, **options)

    async def snapshot(self) -> Snapshot:
        async with aiosqlite.connect(self.path) as db:
            return {
                t: [
                    tuple(r) for r in await db.execute_fetchall(f"SELECT * FROM {t} ORDER BY rowid")
                ]
                for t in TABLES
            }

    async def raw(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        async with aiosqlite.connect(self.path) as db:
            await db.execute(sql, params)
            await db.commit()


@dataclass
class PostgresBackend:
    schema: str
    name: str = "postgresql"
    abort_error: type[Exception] = asyncpg.exceptions.RaiseError
    abort_audit_sql: tuple[str, ...] = (
        "CREATE FUNCTION fail_audit() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN RAISE EXCEPTION 'disk'; END $$",
        "CREATE TRIGGER fail_audit BEFORE INSERT ON audit_log"
        " FOR EACH ROW EXECUTE FUNCTION fail_audit()",
    )
    drop_abort_sql: tuple[str, ...] = (
        "DROP TRIGGER fail_audit ON audit_log",
        "DROP FUNCTION fail_audit()",
    )

    def make(self, **options: Any) -> Registry:
        return PostgresRegistry(POSTGRES_URL, schema=self.schema, pool_size=4, **options)

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(POSTGRES_URL, server_settings={"search_path": self.schema})

    async def snapshot(self) -> Snapshot:
        conn = await self._connect()
        try:
            return {
                t: [tuple(r) for r in await conn.fetch(f"SELECT * FROM {t} ORDER BY 1")]
                for t in TABLES
            }
        finally:
            await conn.close()

    async def raw(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        conn = await self._connect()
        try:
            await conn.execute(_numbered(sql), *params)
        finally:
            await conn.close()


Backend = SqliteBackend | PostgresBackend


async def admin_connection() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(POSTGRES_URL, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        pytest.fail(HOW_TO_START.format(error=f"{type(exc).__name__}: {exc}"), pytrace=False)


async def fresh_schema() -> AsyncIterator[str]:
    """A new empty schema on the test server; dropped with everything in it after."""
    schema = f"starmux_test_{secrets.token_hex(6)}"
    admin = await admin_connection()
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        yield schema
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()
