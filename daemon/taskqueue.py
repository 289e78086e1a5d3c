"""The machine's durable task queue (issue 18): store once, start by priority then age,
never more at once than the machine's capacity.

A controller's placement assigns a task to this machine; the daemon *accepts* it by
storing it here (the ack the controller waits for is sent only after the commit).
The runtime then asks :meth:`TaskQueue.start_up_to` for what to start and reports
each task's progress with :meth:`TaskQueue.advance`.

Invariants:

- One row per task id (``UNIQUE``): a delivery of an id already stored is a
  duplicate and changes nothing, whatever its content, unless it is a *later*
  attempt and the stored one was given up: ``lost`` (a retry-on-lost coming back
  here) or ``cancelled`` (the controller withdrew the attempt, e.g. after its
  assign-ack ran out, and sent the next one here); then the row is replaced as a
  new arrival. A stored attempt that is live or ended otherwise is never rerun.
- A stored task is ``accepted`` until started. :meth:`start_up_to` runs in one
  ``BEGIN IMMEDIATE`` transaction: it counts the live tasks (``running``,
  ``awaiting_approval``) and moves at most ``capacity - live`` accepted ones to
  ``running``, highest priority first, then oldest arrival. Two callers can
  therefore never start more than the capacity between them, even from two
  processes on the same file.
- Every state change follows :mod:`starmux.task_state`'s table (an illegal one
  raises :class:`~starmux.errors.UsageError` and writes nothing) and is guarded
  by the state it was decided on, so a change that lost a race is refused too.
- A task's environment (it may hold secrets) is handed over by
  :meth:`start_up_to` and emptied from its row in the same transaction.
- Fields of a delivery come from a controller: they are size-checked here and a
  bad one raises :class:`~starmux.errors.MessageError` before anything is stored.

The queue never reads the clock (callers pass ``now``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import msgpack

from starmux.errors import MessageError, UsageError
from starmux.node.database import open_database
from starmux.task_state import FINAL, TaskState, Trigger, transition

__all__ = ["Delivery", "Load", "QueuedTask", "TaskQueue"]

_TASK_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_ARGV_BYTES = 64 * 1024
MAX_CWD = 4096
MAX_TITLE = 200
_NO_ENV = msgpack.packb({})
PRIORITY_RANGE = range(-1000, 1001)
#: What a later attempt may replace (see the module docstring).
_GIVEN_UP = frozenset({TaskState.LOST, TaskState.CANCELLED})
_LIVE = (TaskState.RUNNING.value, TaskState.AWAITING_APPROVAL.value)
_COLUMNS = (
    "SELECT id, attempt, priority, argv, cwd, state, received_at,"
    " started_at, finished_at, exit_code, session, arrival, title, env, pty, start_to_close"
    " FROM tasks"
)


@dataclass(frozen=True, slots=True)
class QueuedTask:
    id: str
    attempt: int
    priority: int
    argv: tuple[str, ...]
    cwd: str
    state: TaskState
    received_at: float
    started_at: float | None
    finished_at: float | None
    exit_code: int | None
    session: str | None
    arrival: int
    title: str = ""
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    pty: bool = False
    start_to_close: float | None = None  # seconds; the runner kills the session after


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a delivery did: ``stored`` False means it was a duplicate; ``task`` is
    the row as it is now (for the ack, which reports the state either way)."""

    stored: bool
    task: QueuedTask


@dataclass(frozen=True, slots=True)
class Load:
    """What the machine reports for placement: live tasks and tasks waiting here."""

    running: int
    queued: int


def _row(row: Any) -> QueuedTask:
    argv = msgpack.unpackb(bytes(row[3]))
    return QueuedTask(
        id=str(row[0]),
        attempt=int(row[1]),
        priority=int(row[2]),
        argv=tuple(str(a) for a in argv),
        cwd=str(row[4]),
        state=TaskState(row[5]),
        received_at=float(row[6]),
        started_at=row[7],
        finished_at=row[8],
        exit_code=row[9],
        session=row[10],
        arrival=int(row[11]),
        title=str(row[12]),
        env={str(k): str(v) for k, v in msgpack.unpackb(bytes(row[13])).items()},
        pty=bool(row[14]),
        start_to_close=row[15],
    )


def _checked(
    task_id: str,
    attempt: int,
    priority: int,
    argv: Sequence[str],
    cwd: str,
    title: str,
    env: Mapping[str, str],
) -> tuple[bytes, bytes]:
    """The delivery's fields checked; its argv and env packed."""
    if not isinstance(task_id, str) or not _TASK_ID.match(task_id):
        raise MessageError("a task id is 1-64 letters, digits, '-' or '_'")
    if not isinstance(attempt, int) or not 1 <= attempt <= 1_000_000:
        raise MessageError("a task's attempt is out of range")
    if not isinstance(priority, int) or priority not in PRIORITY_RANGE:
        raise MessageError(f"a task's priority must be {PRIORITY_RANGE.start}..1000")
    if not argv or not all(isinstance(a, str) and "\0" not in a for a in argv):
        raise MessageError("a task's command must be a non-empty list of strings without NUL")
    if not isinstance(cwd, str) or not cwd or len(cwd) > MAX_CWD or "\0" in cwd:
        raise MessageError("a task's cwd is empty, too long or contains NUL")
    if not isinstance(title, str) or len(title) > MAX_TITLE:
        raise MessageError(f"a task's title is longer than {MAX_TITLE} characters")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise MessageError("a task's environment maps strings to strings")
    packed = msgpack.packb(list(argv))
    packed_env = msgpack.packb(dict(env))
    if len(packed) + len(packed_env) > MAX_ARGV_BYTES:
        raise MessageError(f"a task's command and environment exceed {MAX_ARGV_BYTES} bytes")
    return bytes(packed), bytes(packed_env)


class TaskQueue:
    """Open with :meth:`open` on the daemon database; see the module docstring."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        # One connection, one transaction at a time from this process.
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> TaskQueue:
        return cls(await open_database(path, "starmux.daemon"))

    async def close(self) -> None:
        await self._db.close()

    async def _one(self, task_id: str) -> QueuedTask | None:
        rows = list(await self._db.execute_fetchall(f"{_COLUMNS} WHERE id = ?", (task_id,)))
        return _row(rows[0]) if rows else None

    async def _transaction(self) -> None:
        await self._db.execute("BEGIN IMMEDIATE")

    async def _rollback(self) -> None:
        if self._db.in_transaction:
            await self._db.execute("ROLLBACK")

    async def get(self, task_id: str) -> QueuedTask | None:
        async with self._lock:
            return await self._one(task_id)

    async def deliver(
        self,
        task_id: str,
        *,
        attempt: int,
        priority: int,
        argv: Sequence[str],
        cwd: str,
        now: float,
        title: str = "",
        env: Mapping[str, str] | None = None,
        pty: bool = False,
        start_to_close: float | None = None,
    ) -> Delivery:
        """Store a task delivered by a controller, once; see the module docstring."""
        packed, packed_env = _checked(task_id, attempt, priority, argv, cwd, title, env or {})
        if start_to_close is not None and not 0 < start_to_close <= 366 * 24 * 3600.0:
            raise MessageError("a task's start-to-close is out of range")
        async with self._lock:
            await self._transaction()
            try:
                existing = await self._one(task_id)
                if existing is not None and not (
                    existing.state in _GIVEN_UP and attempt > existing.attempt
                ):
                    await self._db.execute("COMMIT")
                    return Delivery(False, existing)
                if existing is not None:
                    await self._db.execute("DELETE FROM tasks WHERE id = ?", (task_id,))
                await self._db.execute(
                    "INSERT INTO tasks (id, attempt, priority, argv, cwd, title, env, pty,"
                    " state, received_at, start_to_close) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        task_id,
                        attempt,
                        priority,
                        packed,
                        cwd,
                        title,
                        packed_env,
                        int(pty),
                        TaskState.ACCEPTED.value,
                        now,
                        start_to_close,
                    ),
                )
                stored = await self._one(task_id)
                await self._db.execute("COMMIT")
            except BaseException:
                await self._rollback()
                raise
        assert stored is not None
        return Delivery(True, stored)

    async def start_up_to(self, capacity: int, *, now: float) -> list[QueuedTask]:
        """Move the next accepted tasks to ``running`` until ``capacity`` are live; return them."""
        if capacity < 1:
            raise UsageError("a machine's capacity is at least 1")
        async with self._lock:
            await self._transaction()
            try:
                live = await self._count("state IN (?, ?)", _LIVE)
                free = max(0, capacity - live)
                rows = list(
                    await self._db.execute_fetchall(
                        f"{_COLUMNS} WHERE state = ? ORDER BY priority DESC, arrival LIMIT ?",
                        (TaskState.ACCEPTED.value, free),
                    )
                )
                started = []
                for row in rows:
                    task = _row(row)
                    new = transition(task.state, Trigger.START)
                    # The environment is handed to the session now and not kept.
                    await self._db.execute(
                        "UPDATE tasks SET state = ?, started_at = ?, env = ? WHERE id = ?",
                        (new.value, now, _NO_ENV, task.id),
                    )
                    started.append(task)
                await self._db.execute("COMMIT")
            except BaseException:
                await self._rollback()
                raise
        return [dataclasses.replace(t, state=TaskState.RUNNING, started_at=now) for t in started]

    async def _count(self, where: str, params: Sequence[object]) -> int:
        rows = list(
            await self._db.execute_fetchall(f"SELECT count(*) FROM tasks WHERE {where}", params)
        )
        return int(rows[0][0])

    async def advance(
        self,
        task_id: str,
        trigger: Trigger,
        *,
        now: float,
        exit_code: int | None = None,
        session: str | None = None,
    ) -> QueuedTask:
        """Take ``trigger`` for a stored task (approval, resume, an ending, a cancel).

        Starting goes through :meth:`start_up_to` only: it is what keeps the capacity.
        """
        if trigger is Trigger.START:
            raise UsageError("tasks are started by start_up_to, which keeps the capacity")
        async with self._lock:
            task = await self._one(task_id)
            if task is None:
                raise UsageError(f"no task {task_id} on this machine")
            new = transition(task.state, trigger)
            finished = now if new in FINAL else None
            cursor = await self._db.execute(
                "UPDATE tasks SET state = ?, finished_at = coalesce(?, finished_at),"
                " exit_code = coalesce(?, exit_code), session = coalesce(?, session)"
                " WHERE id = ? AND state = ? AND attempt = ?",
                (new.value, finished, exit_code, session, task_id, task.state.value, task.attempt),
            )
            if cursor.rowcount != 1:
                raise UsageError(f"task {task_id} changed while it was being updated")
            updated = await self._one(task_id)
        assert updated is not None
        return updated

    async def recover(self, *, now: float) -> list[QueuedTask]:
        """After a daemon restart: the tasks that were live are ``lost``, returned.

        The daemon stops its sessions when it exits and finds them gone after a
        crash (see ``SessionManager.recover``), so a task that was running then
        cannot still be running now. Accepted tasks keep their place in the queue.
        """
        async with self._lock:
            await self._transaction()
            try:
                rows = list(
                    await self._db.execute_fetchall(
                        f"{_COLUMNS} WHERE state IN (?, ?) ORDER BY arrival", _LIVE
                    )
                )
                lost = []
                for row in rows:
                    task = _row(row)
                    new = transition(task.state, Trigger.LOSE)
                    await self._db.execute(
                        "UPDATE tasks SET state = ?, finished_at = ? WHERE id = ?",
                        (new.value, now, task.id),
                    )
                    lost.append(dataclasses.replace(task, state=new, finished_at=now))
                await self._db.execute("COMMIT")
            except BaseException:
                await self._rollback()
                raise
        return lost

    async def attach_session(self, task_id: str, session: str) -> QueuedTask:
        """Record the session a started task runs as."""
        async with self._lock:
            await self._db.execute("UPDATE tasks SET session = ? WHERE id = ?", (session, task_id))
            task = await self._one(task_id)
        if task is None:
            raise UsageError(f"no task {task_id} on this machine")
        return task

    async def load(self) -> Load:
        async with self._lock:
            running = await self._count("state IN (?, ?)", _LIVE)
            queued = await self._count("state = ?", (TaskState.ACCEPTED.value,))
        return Load(running, queued)

    async def waiting(self) -> list[QueuedTask]:
        """The accepted tasks in the order they will start."""
        async with self._lock:
            rows = await self._db.execute_fetchall(
                f"{_COLUMNS} WHERE state = ? ORDER BY priority DESC, arrival",
                (TaskState.ACCEPTED.value,),
            )
        return [_row(r) for r in rows]
