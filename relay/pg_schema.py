"""Versioned PostgreSQL schema for the clustered registry: ``pg_migrations/NNN_*.sql``.

Same rules as the SQLite runner (:mod:`starmux.node.database`): one row in
``schema_version`` holds the number of the last file applied; a database newer
than the files is refused; files are numbered without gaps.

What differs is how two processes agree. Every node of a cluster starts against
the same database, often at the same moment (a compose file, a rolling deploy), so
the whole check-and-apply runs in **one transaction that first takes a
transaction-scoped advisory lock**: the second node blocks on the lock, then reads
the version the first one committed and applies nothing. PostgreSQL DDL is
transactional, so a failing file leaves schema and version as they were.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from starmux.node.database import SchemaError, load_migrations

__all__ = ["MIGRATION_LOCK", "Connection", "migrate", "redact_url"]

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    #: A plain connection or one borrowed from a pool (the stubs keep them apart).
    Connection: TypeAlias = asyncpg.Connection[Any] | PoolConnectionProxy[Any]
else:
    Connection = Any

#: Advisory lock id of the migration runner (b"stmxmigr" as a signed 64-bit int).
MIGRATION_LOCK = int.from_bytes(b"stmxmigr", "big", signed=True)


async def migrate(conn: Connection) -> int:
    """Bring the schema on ``conn``'s search path up to the newest file; return it."""
    migrations = load_migrations("starmux.relay", "pg_migrations")
    known = migrations[-1].version if migrations else 0
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version"
            " (id integer PRIMARY KEY CHECK (id = 0), version integer NOT NULL)"
        )
        await conn.execute(
            "INSERT INTO schema_version (id, version) VALUES (0, 0) ON CONFLICT DO NOTHING"
        )
        current = int(await conn.fetchval("SELECT version FROM schema_version WHERE id = 0"))
        if current > known:
            raise SchemaError(
                f"registry schema version {current} is newer than this starmux knows ({known})",
                hint="upgrade starmux on this node (every node of a cluster runs one version)",
            )
        for migration in migrations[current:]:
            try:
                for statement in migration.statements:
                    await conn.execute(statement)
            except asyncpg.PostgresError as exc:
                raise SchemaError(
                    f"migration starmux.relay/pg_migrations/{migration.name} failed: {exc}"
                ) from exc
            await conn.execute(
                "UPDATE schema_version SET version = $1 WHERE id = 0", migration.version
            )
            current = migration.version
    return current


def redact_url(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))
