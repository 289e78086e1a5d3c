"""Versioned SQLite schemas: numbered migration files applied in order.

A package keeps its schema as files ``NNN_name.sql`` in a folder (``migrations``
by default) shipped as package data; :func:`migrate` brings a database up to the
newest of them and returns the version. The relay registry uses it today; the
daemon's event log and the controller's cache can call it with their own package.

Rules the runner keeps (the way magic-wormhole's mailbox ``database.py`` does):

- One row in ``schema_version`` holds the version, i.e. the number of the last
  file applied. A fresh database is version 0.
- Each file runs in its own ``BEGIN IMMEDIATE`` transaction together with the
  version bump, so a failing migration leaves both schema and version as they
  were. The file must therefore not contain ``BEGIN``/``COMMIT``/``ROLLBACK``/
  ``SAVEPOINT``/``RELEASE`` (refused before anything runs), and ``PRAGMA``s that
  are no-ops inside a transaction (``foreign_keys``, ``journal_mode``) do not
  belong in one.
- The version is re-read inside that transaction, so two processes opening the
  same file at once apply each migration exactly once.
- A database whose version is newer than the newest file is refused: older code
  must not write into a schema it does not know.
- Numbers start at 1 and have no gaps or duplicates; a misnamed ``.sql`` file is
  an error rather than silently skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import os
import re
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast

import aiosqlite

from starmux.errors import StarmuxError
from starmux.home import ensure_private_dir

from .checkpointer import watch_connection

if TYPE_CHECKING:
    from .loop_writer import LoopWriter

__all__ = ["Migration", "SchemaError", "load_migrations", "migrate", "run_in_database"]

T = TypeVar("T")

_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
# Leading whitespace and comments, stripped to find a statement's first keyword.
_LEADING_NOISE = re.compile(r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.DOTALL)
_WAL_SIZE_LIMIT = 8 << 20
_WAL_ATTEMPTS = 50  # about 12 s in all, well past any other opener's migration
_TRANSACTION_CONTROL = frozenset({"BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE"})


class SchemaError(StarmuxError):
    """The database schema cannot be brought to the version this code knows."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str  # file name, for messages
    statements: tuple[str, ...]


def _first_keyword(statement: str) -> str:
    body = _LEADING_NOISE.sub("", statement, count=1)
    match = re.match(r"[A-Za-z]+", body)
    return match.group(0).upper() if match else ""


def split_statements(script: str, *, name: str = "<script>") -> tuple[str, ...]:
    """Split ``script`` into single statements.

    ``sqlite3.complete_statement`` knows about string literals, comments and
    ``CREATE TRIGGER ... END;`` bodies, so cutting at each ``;`` where it says the
    text so far is complete is exact, unlike a naive split on ``;``.
    """
    statements: list[str] = []
    pending = ""
    *pieces, tail = script.split(";")
    for piece in pieces:
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if _first_keyword(pending):
                statements.append(pending.strip())
            pending = ""
    if _first_keyword(pending + tail):
        raise SchemaError(f"{name}: incomplete SQL statement at the end of the file")
    for statement in statements:
        if _first_keyword(statement) in _TRANSACTION_CONTROL:
            raise SchemaError(
                f"{name}: migrations must not control transactions ({_first_keyword(statement)})",
                hint="the runner wraps each migration file in its own transaction",
            )
    return tuple(statements)


def load_migrations(package: str, folder: str = "migrations") -> list[Migration]:
    """Read and check every ``NNN_name.sql`` in ``package``/``folder``, in order."""
    root = importlib.resources.files(package) / folder
    found: dict[int, Migration] = {}
    for entry in root.iterdir():
        if not entry.name.endswith(".sql"):
            continue  # e.g. __pycache__, README
        match = _NAME.match(entry.name)
        if match is None:
            raise SchemaError(f"{package}/{folder}/{entry.name}: name is not NNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise SchemaError(
                f"{package}/{folder}: two migrations numbered {version:03d}"
                f" ({found[version].name}, {entry.name})"
            )
        text = entry.read_text(encoding="utf-8")
        found[version] = Migration(version, entry.name, split_statements(text, name=entry.name))
    expected = list(range(1, len(found) + 1))
    if sorted(found) != expected:
        raise SchemaError(
            f"{package}/{folder}: migrations must be numbered 001, 002, ... without gaps"
            f" (found {', '.join(f'{v:03d}' for v in sorted(found))})"
        )
    return [found[v] for v in expected]


async def _rollback(db: aiosqlite.Connection) -> None:
    # Some errors (disk full, I/O) make SQLite roll back by itself; a second
    # ROLLBACK would then raise and hide the real error.
    if db.in_transaction:
        await db.execute("ROLLBACK")


async def _version(db: aiosqlite.Connection) -> int:
    rows = list(await db.execute_fetchall("SELECT version FROM schema_version WHERE id = 0"))
    return int(rows[0][0])


async def migrate(db: aiosqlite.Connection, package: str, folder: str = "migrations") -> int:
    """Apply the pending migrations of ``package``/``folder``; return the version.

    ``db`` should be in autocommit mode (``isolation_level=None``) and not inside a
    transaction; each migration gets its own. Raises :class:`SchemaError` if the
    database is newer than the files, or if a migration fails (then the database
    stays at the version before it).
    """
    if db.in_transaction:
        raise SchemaError("migrate() needs a connection that is not inside a transaction")
    migrations = load_migrations(package, folder)
    known = migrations[-1].version if migrations else 0

    await db.execute("BEGIN IMMEDIATE")
    try:
        await db.execute(
            "CREATE TABLE IF NOT EXISTS schema_version"
            " (id INTEGER PRIMARY KEY CHECK (id = 0), version INTEGER NOT NULL)"
        )
        await db.execute("INSERT OR IGNORE INTO schema_version (id, version) VALUES (0, 0)")
        current = await _version(db)
        await db.execute("COMMIT")
    except BaseException:
        await _rollback(db)
        raise
    if current > known:
        raise SchemaError(
            f"database schema version {current} is newer than this starmux knows ({known})",
            hint="upgrade starmux, or point it at another data directory",
        )

    for migration in migrations:
        if migration.version <= current:
            continue
        await db.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have applied it while we waited for the lock.
            current = await _version(db)
            if migration.version <= current:
                await db.execute("COMMIT")
                continue
            for statement in migration.statements:
                await db.execute(statement)
            await db.execute(
                "UPDATE schema_version SET version = ? WHERE id = 0", (migration.version,)
            )
            await db.execute("COMMIT")
        except sqlite3.Error as exc:
            await _rollback(db)
            raise SchemaError(
                f"migration {package}/{folder}/{migration.name} failed: {exc}"
            ) from exc
        except BaseException:
            await _rollback(db)
            raise
        current = migration.version
    return current


_BUSY_TIMEOUT_MS = 5_000


def _make_private(path: Path) -> None:
    """Create the database file 0600 (or tighten an existing one).

    Only the main file needs this: SQLite creates ``-wal`` and ``-shm`` with the
    main file's permission bits, independent of the umask. Files left over from
    an older run are tightened too, in case they were made before this rule.
    """
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{path}{suffix}", 0o600)


async def _enable_wal(db: aiosqlite.Connection) -> bool:
    """Switch to WAL; True if the file is in WAL mode afterwards.

    Switching needs the file to itself for a moment, and SQLite answers "database is
    locked" at once (without its busy handler) while another process opens the same
    new file — cluster nodes or a daemon and a CLI command starting together — so the
    switch is retried briefly rather than failing the start-up.
    """
    for attempt in range(_WAL_ATTEMPTS):
        try:
            rows = list(await db.execute_fetchall("PRAGMA journal_mode=WAL"))
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == _WAL_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.01 * (attempt + 1))
        else:
            return str(rows[0][0]).lower() == "wal"
    raise AssertionError("unreachable")  # pragma: no cover


async def open_database(
    path: Path, package: str, folder: str = "migrations"
) -> aiosqlite.Connection:
    """Open (creating 0600) an SQLite file in autocommit mode, WAL, migrated.

    Used by the relay registry, the daemon's event log and the controller's cache:
    one place decides durability settings for every database starmux writes.
    """
    await asyncio.to_thread(_make_private, path)
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        wal = await _enable_wal(db)
        # WAL + NORMAL: a committed transaction survives a crash of the process;
        # only an OS crash or power loss can lose the last commits, never corrupt
        # the file. Without WAL (a filesystem that cannot do it) NORMAL is not safe
        # against power loss, so fall back to FULL.
        await db.execute(f"PRAGMA synchronous={'NORMAL' if wal else 'FULL'}")
        await db.execute("PRAGMA foreign_keys=ON")
        if wal and await asyncio.to_thread(watch_connection, path, db, _is_open):
            # Checkpoints run in the background (see checkpointer.py), not inside
            # the commit that crosses 1,000 pages; a WAL grown by a burst is cut
            # back to this size when it starts over.
            await db.execute("PRAGMA wal_autocheckpoint=0")
            await db.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
        # Another process (e.g. a CLI command next to the daemon) may hold the write
        # lock briefly; wait for it instead of failing at once.
        await db.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        await migrate(db, package, folder)
    except BaseException:
        await db.close()
        raise
    return db


def _is_open(db: object) -> bool:
    # aiosqlite has no public "closed?"; ``_running`` turns False in close()/stop().
    return bool(getattr(db, "_running", False))


async def run_in_database(db: aiosqlite.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    """``work(connection)`` on the connection's own thread, in one round trip.

    Every aiosqlite call is a round trip to that thread (a queue put, a thread
    wake-up, a ``call_soon_threadsafe`` back to the loop, a GIL hand-over each way):
    a transaction of five statements costs five, which dominates a hot path that
    commits small batches (the controller with many machines, each streaming a
    little). Such a path passes its whole transaction here as one function. It runs
    while the loop goes on: it must only touch the connection and its arguments.

    aiosqlite's public calls are this same private ``_execute`` around one
    ``sqlite3`` method; it has no public form that takes a function."""
    execute = cast(Callable[..., Awaitable[T]], db._execute)
    return await execute(work, db._conn)


async def read_setting(db: aiosqlite.Connection, name: str) -> bytes | None:
    """A value from the ``settings (name, value)`` table every node database has."""
    rows = list(await db.execute_fetchall("SELECT value FROM settings WHERE name = ?", (name,)))
    return bytes(rows[0][0]) if rows else None


async def write_setting(db: aiosqlite.Connection, name: str, value: bytes) -> None:
    await db.execute(
        "INSERT INTO settings (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (name, value),
    )


class HomeDatabase:
    """A node's SQLite file in its private home: open (migrated) / close / ``db``.

    The daemon's and the controller's stores build on this, so both open, migrate
    and guard their connection the same way.
    """

    FILE: str = ""
    PACKAGE: str = ""

    def __init__(self, home: Path) -> None:
        self.home = home
        self._db: aiosqlite.Connection | None = None
        self._loop_writer: LoopWriter | None = None

    async def open(self) -> None:
        ensure_private_dir(self.home)
        self._db = await open_database(self.home / self.FILE, self.PACKAGE)

    async def loop_writer(self) -> LoopWriter:
        """Where this file's hot write transactions run (see loop_writer.py); opened
        on first use, since most commands never need one."""
        from .loop_writer import LoopWriter

        if self._loop_writer is None:
            self._loop_writer = await LoopWriter.open(self.db, self.home / self.FILE)
        return self._loop_writer

    async def close(self) -> None:
        if self._loop_writer is not None:
            self._loop_writer.close()
            self._loop_writer = None
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StarmuxError(f"{self.FILE} is not open")
        return self._db
