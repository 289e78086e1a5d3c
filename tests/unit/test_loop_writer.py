"""Hot write transactions on the loop's thread (starmux/node/loop_writer.py): run
there when the write lock is free, on the database thread when it is not, without
ever blocking the loop on a lock that a coroutine of the same loop holds."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from starmux.node.database import open_database
from starmux.node.loop_writer import LoopWriter

PUT = "INSERT INTO settings (name, value) VALUES (?, ?)"


def put(name: str) -> Callable[[sqlite3.Connection], int]:
    def body(conn: sqlite3.Connection) -> int:
        return conn.execute(PUT, (name, b"v")).rowcount

    return body


async def names(path: Path) -> list[str]:
    db = await open_database(path, "starmux.daemon")
    try:
        return sorted(r[0] for r in await db.execute_fetchall("SELECT name FROM settings"))
    finally:
        await db.close()


async def test_a_free_lock_runs_on_the_loop_and_a_held_one_waits_on_the_thread(
    tmp_path: Path,
) -> None:
    path = tmp_path / "daemon.sqlite3"
    db = await open_database(path, "starmux.daemon")
    writer = await LoopWriter.open(db, path)
    other = await open_database(path, "starmux.daemon")
    try:
        assert await writer.transaction(put("a")) == 1
        assert (writer.on_loop, writer.on_thread) == (1, 0)
        # A transaction held across awaits by a coroutine of this loop (as the task
        # queue does): blocking the loop on its lock would never let it commit.
        await other.execute("BEGIN IMMEDIATE")
        await other.execute(PUT, ("b", b"v"))
        task = asyncio.ensure_future(writer.transaction(put("c")))
        await asyncio.sleep(0)  # the transaction tried the loop and went to the thread
        assert writer.on_thread == 1 and not task.done()
        await other.execute("COMMIT")  # the loop is free to do this
        assert await task == 1
    finally:
        writer.close()
        await other.close()
        await db.close()
    assert await names(path) == ["a", "b", "c"]


async def test_a_failing_body_is_rolled_back_on_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "daemon.sqlite3"
    db = await open_database(path, "starmux.daemon")
    writer = await LoopWriter.open(db, path)

    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute(PUT, ("half", b"v"))
        conn.execute(PUT, ("half", b"v"))  # the primary key refuses the second

    try:
        with pytest.raises(sqlite3.IntegrityError):
            await writer.transaction(half_then_fail)
        assert writer.on_loop == 1
        assert await writer.transaction(put("after")) == 1  # the connection is usable
    finally:
        writer.close()
        await db.close()
    assert await names(path) == ["after"]
