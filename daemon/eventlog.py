"""The daemon's append-only event log: durable, gapless, group-committed.

Every daemon write goes through one writer task on the log's own connection to
``daemon.sqlite3``. Appends queue up while a commit is in flight; the writer then
takes everything queued (up to ``max_batch``) and commits it in one ``BEGIN
IMMEDIATE`` transaction. Idle, an append commits at once; under load one commit
carries many events. Reads use a second, read-only connection, so a reader never
sees a transaction the writer has not committed (WAL lets both run at once); reads
of the newest events are answered from memory instead (:mod:`.recent_events`: a
controller paging behind a busy machine costs no query).

Invariants:

- An append's future resolves with its seq only after the transaction holding the
  event has committed; if the commit fails, every write of that batch gets the
  error and nothing of the batch is in the file.
- Seqs follow the order of the calls to :meth:`EventLog.append` /
  :meth:`EventLog.append_nowait`, increase by exactly 1 from one committed event
  to the next, and are never reused: a write that fails takes no seq, and the
  ``AUTOINCREMENT`` high-water mark survives pruning old events.
- An append's ``also`` statements commit in the same transaction as its event, or
  neither does. Each write's statements run under their own ``SAVEPOINT``: a failing
  statement (constraint, bad SQL) drops only that write, which fails with
  :class:`StatementError`; the rest of the batch commits. The statements run before
  the batch's events are inserted, in call order, so they see the events of earlier
  commits, not those of their own batch.
- A write with a ``guard`` commits only if its guard statement (run first, under
  the write's savepoint) changed exactly one row; otherwise nothing of the write
  (guard, ``also``, event) is committed and it fails with :class:`GuardFailed`.
  This is how "first writer wins" is decided by the database, not by an earlier
  read that may be stale by the time the write runs.
- Subscribers are called after each commit, once, with that commit's events in seq
  order. Futures are resolved first (their awaiters resume afterwards).
- The epoch names one continuous history of seqs. It is created with the log and
  replaced only when the log was wiped: the ``epoch`` setting and the events'
  high-water mark (their row in ``sqlite_sequence``, created with the epoch) must
  exist together; if either is missing, or the setting is malformed, a new epoch
  starts. Deleting old events is not a wipe: seqs go on from the high-water mark.

The log never reads the clock (callers pass ``at``) and never interprets bodies.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from starmux.errors import StarmuxError, UsageError
from starmux.node.database import open_database, read_setting, run_in_database, write_setting
from starmux.node.loop_writer import LoopWriter
from starmux.resync import first_page

from .recent_events import RecentEvents

__all__ = [
    "EventLog",
    "EventLogError",
    "GuardFailed",
    "Statement",
    "StatementError",
    "StoredEvent",
]

log = logging.getLogger("starmux.daemon")

#: One SQL statement and its parameters.
Statement = tuple[str, Sequence[object]]

EPOCH_SETTING = "epoch"
_EPOCH = re.compile(r"^[0-9a-f]{16}$")
_COLUMNS = "SELECT seq, at, session, body FROM events"
_INSERT = "INSERT INTO events (at, session, body) VALUES (?, ?, ?)"
_HIGH_WATER = "SELECT seq FROM sqlite_sequence WHERE name = 'events'"
#: The newest events kept in memory to answer sync requests (:mod:`.recent_events`):
#: a controller a few thousand lines behind reads them without a query.
RECENT_BYTES = 2 * 1024 * 1024


class EventLogError(StarmuxError):
    """A write to the event log failed; none of it was committed."""


class StatementError(EventLogError):
    """One write's statement failed; only that write was dropped from its batch.

    ``statement`` is the SQL text; the SQLite error is the ``__cause__``.
    """

    def __init__(self, message: str, *, statement: str) -> None:
        super().__init__(message)
        self.statement = statement


class GuardFailed(EventLogError):
    """A write's guard changed no row (or several): the write was dropped, not an error
    of the log. The caller lost a race and should re-read what won."""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    at: float
    session: str
    body: bytes


Subscriber = Callable[[list[StoredEvent]], None]


@dataclass(slots=True)
class _Write:
    """A queued write: an event (none for :meth:`EventLog.execute_write`) and statements."""

    event: tuple[float, str, bytes] | None
    statements: tuple[Statement, ...]
    future: asyncio.Future[int]
    guard: Statement | None = None


def _stored(row: Any) -> StoredEvent:
    return StoredEvent(int(row[0]), float(row[1]), str(row[2]), bytes(row[3]))


async def _scalar(db: aiosqlite.Connection, sql: str) -> Any:
    rows = list(await db.execute_fetchall(sql))
    return rows[0][0] if rows else None


async def _rollback(db: aiosqlite.Connection) -> None:
    # SQLite rolls back by itself on some errors (I/O, full disk); then there is
    # nothing left to roll back, and a second ROLLBACK would only hide the cause.
    if db.in_transaction:
        try:
            await db.execute("ROLLBACK")
        except sqlite3.Error:
            log.exception("event log: rollback failed")


async def _settle_epoch(db: aiosqlite.Connection, rng: Callable[[int], bytes]) -> tuple[str, int]:
    """Read (or start) the epoch and the last seq, in one transaction."""
    await db.execute("BEGIN IMMEDIATE")
    try:
        stored = await read_setting(db, EPOCH_SETTING)
        epoch = stored.decode("ascii", "replace") if stored is not None else None
        high_water = await _scalar(db, _HIGH_WATER)
        newest = await _scalar(db, "SELECT max(seq) FROM events")
        last_seq = max(int(high_water or 0), int(newest or 0))
        if epoch is None or not _EPOCH.match(epoch) or high_water is None:
            epoch = rng(8).hex()
            await write_setting(db, EPOCH_SETTING, epoch.encode("ascii"))
            if high_water is None:
                await db.execute(
                    "INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?)", (last_seq,)
                )
            log.info("event log: new epoch %s (after seq %d)", epoch, last_seq)
        await db.execute("COMMIT")
    except BaseException:
        await _rollback(db)
        raise
    return epoch, last_seq


def _run_statements(
    conn: sqlite3.Connection, statements: tuple[Statement, ...], guard: Statement | None
) -> EventLogError | None:
    """Run one write's guard and statements under a savepoint; on failure (or a guard
    that did not change exactly one row) undo just them."""
    conn.execute("SAVEPOINT write")
    if guard is not None:
        sql, params = guard
        try:
            changed = conn.execute(sql, params).rowcount
        except sqlite3.Error as exc:
            if not conn.in_transaction:
                raise
            return _undo_write(conn, exc, sql)
        if changed != 1:
            conn.execute("ROLLBACK TO write")
            conn.execute("RELEASE write")
            return GuardFailed(f"the write's guard changed {changed} rows, not 1")
    for sql, params in statements:
        try:
            conn.execute(sql, params)
        except sqlite3.Error as exc:
            if not conn.in_transaction:
                raise  # SQLite gave up the whole transaction: the batch fails
            return _undo_write(conn, exc, sql)
    conn.execute("RELEASE write")
    return None


def _undo_write(conn: sqlite3.Connection, exc: sqlite3.Error, sql: str) -> StatementError:
    conn.execute("ROLLBACK TO write")
    conn.execute("RELEASE write")
    error = StatementError(f"event log statement failed: {exc}", statement=sql)
    error.__cause__ = exc
    return error


def _write_batch(
    conn: sqlite3.Connection, batch: list[_Write], last_seq: int
) -> tuple[dict[int, EventLogError], list[tuple[float, str, bytes]], int]:
    """One commit's statements, inside the transaction :class:`LoopWriter` opened:
    the writes dropped (by index), the events written, the new last seq. Raises if
    the whole batch failed (then it is rolled back)."""
    dropped: dict[int, EventLogError] = {}
    for index, write in enumerate(batch):
        if write.statements or write.guard is not None:
            error = _run_statements(conn, write.statements, write.guard)
            if error is not None:
                dropped[index] = error
    events = [w.event for i, w in enumerate(batch) if w.event is not None and i not in dropped]
    if events:
        conn.executemany(_INSERT, events)
        # AUTOINCREMENT under the write lock numbers one statement's rows
        # consecutively, so the high-water mark gives every seq of the batch.
        row = conn.execute(_HIGH_WATER).fetchone()
        last_seq = int(row[0])
    return dropped, events, last_seq


def _resolve(future: asyncio.Future[int], seq: int) -> None:
    if not future.done():  # the caller may have stopped waiting (cancelled)
        future.set_result(seq)


def _fail(future: asyncio.Future[int], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class EventLog:
    """Open with :meth:`open`; see the module docstring for the guarantees."""

    def __init__(
        self,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        commits: LoopWriter,
        *,
        epoch: str,
        last_seq: int,
        max_batch: int,
        recent_bytes: int = RECENT_BYTES,
    ) -> None:
        self._writer = writer
        self._reader = reader
        self._commits = commits
        self._max_batch = max_batch
        self.epoch = epoch
        #: The seq of the last committed event (0 for a log that never had one).
        self.last_seq = last_seq
        #: Transactions committed so far (each carries one batch).
        self.commits = 0
        self._recent = RecentEvents[StoredEvent](last_seq=last_seq, max_bytes=recent_bytes)
        self._pending: collections.deque[_Write] = collections.deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._subscribers: list[Subscriber] = []
        self._task = asyncio.get_running_loop().create_task(self._run(), name="eventlog-writer")

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        max_batch: int = 512,
        recent_bytes: int = RECENT_BYTES,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> EventLog:
        """Open (creating and migrating) the log in the daemon database at ``path``;
        ``recent_bytes``: how much of the newest events :meth:`read_after` keeps in
        memory."""
        if max_batch < 1:
            raise UsageError("max_batch must be at least 1")
        writer = await open_database(path, "starmux.daemon")
        try:
            epoch, last_seq = await _settle_epoch(writer, rng)
            reader = await open_database(path, "starmux.daemon")
        except BaseException:
            await writer.close()
            raise
        try:
            # Reads must not become writes that bypass the writer's ordering.
            await reader.execute("PRAGMA query_only = ON")
            commits = await LoopWriter.open(writer, path)
        except BaseException:
            await reader.close()
            await writer.close()
            raise
        return cls(
            writer,
            reader,
            commits,
            epoch=epoch,
            last_seq=last_seq,
            max_batch=max_batch,
            recent_bytes=recent_bytes,
        )

    async def close(self) -> None:
        """Commit what is pending, then close. Appending afterwards is an error."""
        self._closing = True
        self._wake.set()
        try:
            await self._task
        finally:
            self._commits.close()
            await self._writer.close()
            await self._reader.close()

    # --- writing --------------------------------------------------------------------

    def append_nowait(
        self, session: str, body: bytes, *, at: float, also: Sequence[Statement] = ()
    ) -> asyncio.Future[int]:
        """Queue an event; the future resolves with its seq once it is durable.

        Cancelling the future only stops waiting: the event is still committed.
        """
        return self._enqueue((at, session, body), tuple(also))

    async def append(
        self,
        session: str,
        body: bytes,
        *,
        at: float,
        also: Sequence[Statement] = (),
        guard: Statement | None = None,
    ) -> int:
        """Append an event (and ``also`` statements, atomically); return its durable seq.

        With ``guard``: only if the guard statement changes exactly one row, else
        nothing is written and :class:`GuardFailed` is raised.
        """
        return await self._enqueue((at, session, body), tuple(also), guard)

    async def execute_write(self, statements: Sequence[Statement]) -> None:
        """Run ``statements`` atomically, ordered with the appends, without an event."""
        if statements:
            await self._enqueue(None, tuple(statements))

    def _enqueue(
        self,
        event: tuple[float, str, bytes] | None,
        statements: tuple[Statement, ...],
        guard: Statement | None = None,
    ) -> asyncio.Future[int]:
        if self._closing:
            raise UsageError("the event log is closed")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append(_Write(event, statements, future, guard))
        self._wake.set()
        return future

    async def _run(self) -> None:
        try:
            while True:
                if not self._pending:
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                count = min(len(self._pending), self._max_batch)
                await self._commit([self._pending.popleft() for _ in range(count)])
        finally:
            # Only reached with writes pending if the writer was cancelled.
            self._closing = True
            while self._pending:
                self._pending.popleft().future.cancel()

    async def _commit(self, batch: list[_Write]) -> None:
        try:
            dropped, events, last_seq = await self._commits.transaction(
                lambda conn: _write_batch(conn, batch, self.last_seq)
            )
        except Exception as exc:
            failure = EventLogError(f"event log commit failed: {exc}")
            failure.__cause__ = exc
            for write in batch:
                _fail(write.future, failure)
            return
        except BaseException:
            # Cancelled while the transaction ran on the database thread: whether it
            # committed is unknown here (the file is consistent either way); the
            # waiters learn nothing better.
            for write in batch:
                write.future.cancel()
            raise
        self.commits += 1
        self.last_seq = last_seq
        seq = last_seq - len(events) + 1
        committed: list[StoredEvent] = []
        for index, write in enumerate(batch):
            if index in dropped:
                _fail(write.future, dropped[index])
            elif write.event is None:
                _resolve(write.future, 0)
            else:
                committed.append(StoredEvent(seq, *write.event))
                _resolve(write.future, seq)
                seq += 1
        if committed:
            self._recent.add(committed)
            self._publish(committed)

    # --- subscribers ----------------------------------------------------------------

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(events)`` after every commit; returns the unsubscribe."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def _publish(self, events: list[StoredEvent]) -> None:
        for callback in tuple(self._subscribers):
            try:
                callback(list(events))
            except Exception:
                # One broken consumer must not stop the log or starve the others.
                log.exception("event log subscriber %r failed", callback)

    # --- reading --------------------------------------------------------------------

    async def read_after(
        self, seq: int, *, limit: int, max_bytes: int | None = None
    ) -> list[StoredEvent]:
        """Up to ``limit`` committed events with a seq above ``seq``, in seq order; with
        ``max_bytes``, only those one page of it holds (:func:`~starmux.resync.first_page`):
        rows are read one by one and no further, so a small page never costs a read of
        ``limit`` events. The newest events are answered from memory."""
        limit = _check_limit(limit)
        recent = self._recent.after(seq, limit=limit, max_bytes=max_bytes)
        if recent is not None:
            return recent
        query = (f"{_COLUMNS} WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))

        def read(conn: sqlite3.Connection) -> list[StoredEvent]:
            rows = conn.execute(*query)
            try:
                events = map(_stored, rows)
                return list(events) if max_bytes is None else first_page(events, max_bytes)
            finally:
                rows.close()  # ends the read: a statement left open holds the WAL back

        return await run_in_database(self._reader, read)

    async def read_session(self, session: str, *, after: int = 0, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` of one session's events with a seq above ``after``."""
        rows = await self._reader.execute_fetchall(
            f"{_COLUMNS} WHERE session = ? AND seq > ? ORDER BY seq LIMIT ?",
            (session, after, _check_limit(limit)),
        )
        return [_stored(row) for row in rows]

    async def execute_read(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query on committed state (writes are refused)."""
        rows = await self._reader.execute_fetchall(sql, params)
        return [tuple(row) for row in rows]


def _check_limit(limit: int) -> int:
    if limit < 0:  # SQLite would read a negative LIMIT as "no limit"
        raise UsageError("limit must not be negative")
    return limit
