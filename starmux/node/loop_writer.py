"""Short write transactions on the event loop's own thread, when the lock is free.

Every aiosqlite call is a trip to the connection's thread and back: a queue put
that wakes that thread, the GIL handed over twice, ``call_soon_threadsafe`` and the
loop's self-pipe. For the two hot writers (the daemon's group commit, the
controller's page apply) that trip cost more than the transaction itself, and
under load far more: with other threads and processes on the cores, the woken
thread and the loop's thread queue for the GIL (issue 20: 0.23 ms per queue put in
a load process of 25 daemons; a commit of a few events is some 0.05 ms).

So such a transaction first runs right here, on a connection of its own whose
busy timeout is zero: ``BEGIN IMMEDIATE`` either takes the write lock at once or
fails at once. It only fails when another connection holds the lock (a CLI
command, or a transaction of this process held across awaits, which would wait
for this very loop); then the transaction goes to the aiosqlite thread as before,
which waits for the lock without stopping the loop. Nothing inside waits on
anything else: the WAL makes a COMMIT a write to the page cache, and checkpoints
(the fsyncs) run in the background (:mod:`starmux.node.checkpointer`).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from .database import run_in_database

log = logging.getLogger(__name__)

T = TypeVar("T")
Body = Callable[[sqlite3.Connection], T]


def in_transaction(conn: sqlite3.Connection, body: Body[T], *, begun: bool = False) -> T:
    """``BEGIN IMMEDIATE`` (unless ``begun``), ``body(conn)``, ``COMMIT``; if anything
    raises, roll back (when SQLite has not already) and raise."""
    try:
        if not begun:
            conn.execute("BEGIN IMMEDIATE")
        result = body(conn)
        conn.execute("COMMIT")
    except BaseException:
        # SQLite rolls back by itself on some errors (I/O, full disk); then there is
        # nothing left to roll back, and a second ROLLBACK would only hide the cause.
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("rollback failed")
        raise
    return result


async def _pragma(db: aiosqlite.Connection, name: str) -> Any:
    rows = await db.execute_fetchall(f"PRAGMA {name}")
    return next(iter(rows))[0]


def _connect(path: Path, autocheckpoint: int) -> sqlite3.Connection:
    fast = sqlite3.connect(path, isolation_level=None, timeout=0.0, check_same_thread=False)
    try:
        # The same durability as every starmux database (database.open_database);
        # these settings belong to the connection, not the file.
        fast.execute("PRAGMA synchronous=NORMAL")
        fast.execute("PRAGMA foreign_keys=ON")
        fast.execute(f"PRAGMA wal_autocheckpoint={autocheckpoint}")
    except BaseException:
        fast.close()
        raise
    return fast


def _busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # (extended codes: BUSY_RECOVERY, …)
    return code is not None and code & 0xFF == sqlite3.SQLITE_BUSY


class LoopWriter:
    """Write transactions for one database: on the loop when the lock is free, else
    on ``db``'s thread. Transactions must be short and not await anything, and this
    writer's transactions must not overlap (each caller has one commit at a time)."""

    def __init__(self, db: aiosqlite.Connection, fast: sqlite3.Connection | None) -> None:
        self._db = db
        self._fast = fast
        #: transactions run on the loop / sent to the database thread (for tests)
        self.on_loop = 0
        self.on_thread = 0

    @classmethod
    async def open(cls, db: aiosqlite.Connection, path: Path) -> LoopWriter:
        """A writer beside ``db`` (opened by :func:`~starmux.node.database.open_database`
        on ``path``, so the file exists, is migrated and in WAL mode)."""
        mode = str(await _pragma(db, "journal_mode")).lower()
        if mode != "wal":
            return cls(db, None)  # a COMMIT here would fsync: keep it off the loop
        autocheckpoint = int(await _pragma(db, "wal_autocheckpoint"))
        try:
            fast = await asyncio.to_thread(_connect, path, autocheckpoint)
        except sqlite3.Error as exc:
            log.debug("no loop writer for %s: %s", path, exc)
            return cls(db, None)
        return cls(db, fast)

    async def transaction(self, body: Body[T]) -> T:
        fast = self._fast
        if fast is not None:
            try:
                fast.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    raise
            else:
                self.on_loop += 1
                return in_transaction(fast, body, begun=True)
        self.on_thread += 1
        return await run_in_database(self._db, lambda conn: in_transaction(conn, body))

    def close(self) -> None:
        if self._fast is not None:
            self._fast.close()
            self._fast = None
