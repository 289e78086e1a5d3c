"""Experiments of the end-to-end benchmark: proposed product changes, applied only in
the benchmark's own processes and only when asked (``bench/e2e.py --patch NAME``).

Both attack the cost the profiles show: every aiosqlite call is a round trip to the
connection's thread (a queue put, a thread wake-up, a ``call_soon_threadsafe`` back),
about 0.1 ms of CPU each on this machine, and a transaction is several of them.

- ``controller-one-call``: :meth:`client.cache.Cache.apply_page` runs a page's whole
  transaction (cursor read, the events in one ``executemany``, cursor upsert, commit)
  as one call on the database thread, instead of BEGIN, SELECT, one INSERT per event,
  UPSERT and COMMIT each a round trip. Pages holding anything but ``Output`` events
  (which have a projection) take the shipped path.
- ``daemon-one-call``: :meth:`daemon.eventlog.EventLog._commit` likewise (BEGIN,
  ``executemany``, high-water read, COMMIT in one call) for batches without ``also``
  statements; other batches take the shipped path.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import aiosqlite

import daemon.eventlog as eventlog
from client.cache import Applied, Cache
from starmux.messages import APP, EventPage, LoggedEvent, Output

NAMES = ("controller-one-call", "daemon-one-call")
_OUTPUT = APP.encode(Output("stdout", b""))[:8]  # msgpack [ "output", ... ] prefix
_SHIPPED_APPLY = Cache.apply_page
_SHIPPED_COMMIT = eventlog.EventLog._commit


async def _in_thread(db: aiosqlite.Connection, fn: Any, *args: Any) -> Any:
    return await db._execute(fn, db._conn, *args)  # type: ignore[no-untyped-call]


# --- controller ----------------------------------------------------------------------------


def _apply_sync(conn: sqlite3.Connection, machine: bytes, page: EventPage) -> Applied:
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute(
            "SELECT epoch, seq FROM cursors WHERE machine = ?", (machine,)
        ).fetchone()
        epoch, seq = (str(row[0]), int(row[1])) if row else ("", 0)
        if page.epoch != epoch:
            if epoch:
                for table in ("events", "sessions", "checkpoints"):
                    conn.execute(f"DELETE FROM {table} WHERE machine = ?", (machine,))
            seq = 0
        applied: list[LoggedEvent] = []
        gap = False
        for event in page.events:
            if event.seq <= seq:
                continue
            if event.seq != seq + 1:
                gap = True
                break
            applied.append(event)
            seq = event.seq
        conn.executemany(
            "INSERT INTO events (machine, seq, session, at, body) VALUES (?,?,?,?,?)",
            [(machine, e.seq, e.session, e.at, e.body) for e in applied],
        )
        conn.execute(
            "INSERT INTO cursors (machine, epoch, seq) VALUES (?, ?, ?) "
            "ON CONFLICT (machine) DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq",
            (machine, page.epoch, seq),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return Applied(applied, gap)


async def _apply_page(self: Cache, machine: bytes, page: EventPage) -> Applied:
    if not all(event.body.startswith(_OUTPUT) for event in page.events):
        return await _SHIPPED_APPLY(self, machine, page)
    applied: Applied = await _in_thread(self.db, _apply_sync, machine, page)
    return applied


# --- daemon --------------------------------------------------------------------------------


def _commit_sync(conn: sqlite3.Connection, events: list[tuple[float, str, bytes]]) -> int:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(eventlog._INSERT, events)
        last_seq = int(conn.execute(eventlog._HIGH_WATER).fetchone()[0])
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return last_seq


async def _commit(self: eventlog.EventLog, batch: list[eventlog._Write]) -> None:
    events = [w.event for w in batch if w.event is not None and not w.statements]
    if len(events) != len(batch):
        return await _SHIPPED_COMMIT(self, batch)
    try:
        last_seq: int = await _in_thread(self._writer, _commit_sync, events)
    except Exception as exc:
        failure = eventlog.EventLogError(f"event log commit failed: {exc}")
        failure.__cause__ = exc
        for write in batch:
            eventlog._fail(write.future, failure)
        return None
    except BaseException:
        for write in batch:
            write.future.cancel()
        raise
    self.commits += 1
    self.last_seq = last_seq
    seq = last_seq - len(events) + 1
    committed = []
    for write, event in zip(batch, events, strict=True):
        committed.append(eventlog.StoredEvent(seq, *event))
        eventlog._resolve(write.future, seq)
        seq += 1
    self._publish(committed)
    return None


def apply(names: tuple[str, ...]) -> None:
    """Apply the named experiments in this process."""
    if unknown := set(names) - set(NAMES):
        raise ValueError(f"unknown patches: {', '.join(sorted(unknown))}")
    if "controller-one-call" in names:
        Cache.apply_page = _apply_page  # type: ignore[method-assign]
    if "daemon-one-call" in names:
        eventlog.EventLog._commit = _commit  # type: ignore[method-assign]
