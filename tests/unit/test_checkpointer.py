"""Background WAL checkpoints (starmux/node/checkpointer.py): the writers' commits no
longer run SQLite's automatic checkpoint, and the files still get checkpointed."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

from starmux.node import checkpointer
from starmux.node.checkpointer import CHECKPOINTER, next_interval
from starmux.node.database import open_database


def test_the_interval_follows_the_write_rate() -> None:
    busy, idle = checkpointer.BUSY_INTERVAL, checkpointer.IDLE_INTERVAL
    assert next_interval(0.5, 200, None) == busy  # could not run: soon again
    assert next_interval(0.5, 200, 200) == idle  # nothing written since
    assert next_interval(0.5, -1, 0) == idle
    # 2,000 pages in 0.5 s: half the wait for the next 1,000
    assert next_interval(0.5, 10, 2000) == 0.25
    assert next_interval(0.5, 10, 10**6) == busy  # never below the floor
    assert next_interval(1.0, 10, 5) == idle  # never above the idle wait


def _rows_in_main_file(path: Path, copy: Path) -> int:
    """Rows visible from the database file alone, as if the WAL were lost."""
    shutil.copyfile(path, copy)
    with sqlite3.connect(copy) as db:
        return int(db.execute("SELECT count(*) FROM events").fetchone()[0])


def test_commits_skip_the_automatic_checkpoint_and_the_background_one_runs(
    tmp_path: Path,
) -> None:
    path = tmp_path / "daemon.sqlite3"

    async def scenario() -> None:
        db = await open_database(path, "starmux.daemon")
        try:
            rows = list(await db.execute_fetchall("PRAGMA wal_autocheckpoint"))
            assert rows[0][0] == 0  # no checkpoint inside a commit
            assert CHECKPOINTER.watching(path)
            body = b"x" * 4000
            for seq in range(1, 1501):  # well past SQLite's 1,000-page threshold
                await db.execute(
                    "INSERT INTO events (seq, session, at, body) VALUES (?, 's-1', 0, ?)",
                    (seq, body),
                )
            # (the background thread may have got there first: either way, only
            # the checkpointer copies pages into the file while the WAL is on)
            await asyncio.to_thread(CHECKPOINTER.run_once, every=True)
            copied = await asyncio.to_thread(_rows_in_main_file, path, tmp_path / "b")
            assert copied == 1500
        finally:
            await db.close()
        CHECKPOINTER.run_once()
        assert not CHECKPOINTER.watching(path)  # closed with the last connection

    asyncio.run(scenario())
