"""Where the controller keeps its tasks (issue 18): the rows of migration 004 and the
conversions between them and the core's :class:`~starmux.task_state.Task` and
:class:`~starmux.dispatch.Spec`.

Invariants:

- One row per task id; a task's row is rewritten with every change and each
  transition appended to ``task_events``, so what ``starmux tasks`` shows and
  what a restarted agent takes back are the same thing.
- Single statements only: the controller's connection is shared with the cache,
  whose group commit holds a transaction across awaits; a ``BEGIN`` of our own
  would collide with it (a statement joins it instead, and commits with it).
- Loads are keyed by machine: a machine's report changes only its own row.
- The book's placement memory (migration 006) is written with the change that made
  it: a task's avoided and refusing machines with the task's row, the round-robin
  cursor after a placement, a cwd's machine when a task starts there.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import aiosqlite
import msgpack

from starmux.dispatch import Spec
from starmux.messages import LoggedEvent
from starmux.placement import Strategy
from starmux.task_messages import MachineLoad, TaskProgress
from starmux.task_state import Task, TaskEvent, TaskState

__all__ = ["Request", "StoredTask", "TaskStore"]


@dataclass(frozen=True, slots=True)
class Request:
    """What a task runs (sent in its ``assign-task``)."""

    argv: tuple[str, ...]
    cwd: str
    title: str
    env: dict[str, str]
    pty: bool
    start_to_close: float | None


@dataclass(frozen=True, slots=True)
class StoredTask:
    task: Task
    spec: Spec
    request: Request
    assign_command: str | None
    session: str | None
    created_at: float
    avoid: frozenset[str] = frozenset()
    refused: dict[str, str] = dataclasses.field(default_factory=dict)


def _task_json(task: Task) -> str:
    return json.dumps(dataclasses.asdict(task), allow_nan=False)


def _task(text: str) -> Task:
    fields: dict[str, Any] = json.loads(text)
    fields["state"] = TaskState(fields["state"])
    return Task(**fields)


def _spec_json(spec: Spec) -> str:
    return json.dumps(
        {
            "cwd": spec.cwd,
            "target": sorted(spec.target),
            "machine": spec.machine,
            "strategy": spec.strategy.value,
            "group": spec.group,
        }
    )


def _spec(text: str) -> Spec:
    fields = json.loads(text)
    return Spec(
        cwd=fields["cwd"],
        target=frozenset(fields["target"]),
        machine=fields["machine"],
        strategy=Strategy(fields["strategy"]),
        group=fields["group"],
    )


def _request(text: str) -> Request:
    fields = json.loads(text)
    return Request(
        tuple(fields["argv"]),
        fields["cwd"],
        fields["title"],
        dict(fields["env"]),
        bool(fields["pty"]),
        fields["start_to_close"],
    )


#: How an encoded message of each kind begins (the codec writes [kind, version,
#: fields] as a msgpack array of 3), so SQLite can pick them out of a machine's log.
_PREFIXES = tuple(b"\x93" + msgpack.packb(kind) for kind in (TaskProgress.KIND, MachineLoad.KIND))

_COLUMNS = (
    "SELECT task, spec, request, assign_command, session, created_at, avoid, refused FROM tasks"
)
#: Cwds whose last machine is remembered for affinity (the newest; older ones go).
MAX_AFFINITY = 10_000


def _stored(row: Any) -> StoredTask:
    refused = {str(k): str(v) for k, v in json.loads(row[7]).items()}
    return StoredTask(
        _task(row[0]),
        _spec(row[1]),
        _request(row[2]),
        row[3],
        row[4],
        float(row[5]),
        frozenset(json.loads(row[6])),
        refused,
    )


class TaskStore:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    async def add(self, task: Task, spec: Spec, request: Request, *, now: float) -> None:
        await self.db.execute(
            "INSERT INTO tasks (id, task, spec, request, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                task.id,
                _task_json(task),
                _spec_json(spec),
                json.dumps(dataclasses.asdict(request)),
                now,
                now,
            ),
        )

    async def save(
        self,
        task: Task,
        events: tuple[TaskEvent, ...] | list[TaskEvent],
        *,
        now: float,
        avoid: frozenset[str] = frozenset(),
        refused: dict[str, str] | None = None,
    ) -> None:
        await self.db.execute(
            "UPDATE tasks SET task = ?, updated_at = ?, avoid = ?, refused = ? WHERE id = ?",
            (_task_json(task), now, json.dumps(sorted(avoid)), json.dumps(refused or {}), task.id),
        )
        await self.db.executemany(
            "INSERT INTO task_events (task, at, attempt, machine, old, new, trigger, reason) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    e.task,
                    e.at,
                    e.attempt,
                    e.machine,
                    e.old.value,
                    e.new.value,
                    e.trigger.value,
                    e.reason,
                )
                for e in events
            ],
        )

    async def round_robin(self) -> str | None:
        rows = list(await self.db.execute_fetchall("SELECT machine FROM placement_cursor"))
        return str(rows[0][0]) if rows and rows[0][0] is not None else None

    async def set_round_robin(self, machine: str | None) -> None:
        await self.db.execute(
            "INSERT INTO placement_cursor (one, machine) VALUES (1, ?) "
            "ON CONFLICT (one) DO UPDATE SET machine = excluded.machine",
            (machine,),
        )

    async def affinity(self) -> dict[str, str]:
        rows = await self.db.execute_fetchall("SELECT cwd, machine FROM cwd_affinity")
        return {str(r[0]): str(r[1]) for r in rows}

    async def set_affinity(self, cwd: str, machine: str, *, at: float) -> None:
        await self.db.execute(
            "INSERT INTO cwd_affinity (cwd, machine, at) VALUES (?, ?, ?) ON CONFLICT (cwd) "
            "DO UPDATE SET machine = excluded.machine, at = excluded.at",
            (cwd, machine, at),
        )
        await self.db.execute(
            "DELETE FROM cwd_affinity WHERE cwd NOT IN "
            "(SELECT cwd FROM cwd_affinity ORDER BY at DESC LIMIT ?)",
            (MAX_AFFINITY,),
        )

    async def refusals(self, command_ids: list[str]) -> list[tuple[str, bytes, str, str]]:
        """Of these assign commands, the ones their machine acked with a no:
        (command id, machine, error, hint)."""
        if not command_ids:
            return []
        marks = ",".join("?" * len(command_ids))
        rows = await self.db.execute_fetchall(
            f"SELECT command_id, machine, error, hint FROM outbox WHERE command_id IN ({marks})"
            " AND acked_at IS NOT NULL AND ok = 0",
            command_ids,
        )
        return [(str(r[0]), bytes(r[1]), str(r[2] or ""), str(r[3] or "")) for r in rows]

    async def set_assign_command(self, task_id: str, command_id: str | None) -> None:
        await self.db.execute(
            "UPDATE tasks SET assign_command = ? WHERE id = ?", (command_id, task_id)
        )

    async def set_session(self, task_id: str, session: str) -> None:
        await self.db.execute("UPDATE tasks SET session = ? WHERE id = ?", (session, task_id))

    async def get(self, task_id: str) -> StoredTask | None:
        rows = list(await self.db.execute_fetchall(f"{_COLUMNS} WHERE id = ?", (task_id,)))
        return _stored(rows[0]) if rows else None

    async def all(self, *, limit: int = 10_000) -> list[StoredTask]:
        rows = await self.db.execute_fetchall(
            f"{_COLUMNS} ORDER BY created_at, id LIMIT ?", (limit,)
        )
        return [_stored(r) for r in rows]

    async def events(self, task_id: str) -> list[dict[str, Any]]:
        rows = await self.db.execute_fetchall(
            "SELECT at, attempt, machine, old, new, trigger, reason FROM task_events "
            "WHERE task = ? ORDER BY rowid",
            (task_id,),
        )
        keys = ("at", "attempt", "machine", "old", "new", "trigger", "reason")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    async def last_event(self) -> int:
        rows = list(await self.db.execute_fetchall("SELECT max(rowid) FROM task_events"))
        return int(rows[0][0] or 0)

    async def events_after(self, rowid: int, *, limit: int = 1000) -> list[dict[str, Any]]:
        """Every task's transitions stored after ``rowid``, in order, with their rowid."""
        rows = await self.db.execute_fetchall(
            "SELECT rowid, task, at, attempt, machine, old, new, trigger, reason FROM task_events"
            " WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (rowid, limit),
        )
        keys = ("rowid", "task", "at", "attempt", "machine", "old", "new", "trigger", "reason")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    async def set_load(self, machine: bytes, load: MachineLoad, *, at: float) -> None:
        await self.db.execute(
            "INSERT INTO machine_loads (machine, tags, capacity, running, queued, at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (machine) DO UPDATE SET "
            "tags = excluded.tags, capacity = excluded.capacity, running = excluded.running, "
            "queued = excluded.queued, at = excluded.at",
            (machine, ",".join(sorted(load.tags)), load.capacity, load.running, load.queued, at),
        )

    async def loads(self) -> dict[bytes, MachineLoad]:
        rows = await self.db.execute_fetchall(
            "SELECT machine, tags, capacity, running, queued FROM machine_loads"
        )
        return {
            bytes(r[0]): MachineLoad(tuple(t for t in str(r[1]).split(",") if t), *r[2:5])
            for r in rows
        }

    async def cursors(self) -> dict[bytes, int]:
        """Per machine, the last event taken in; 0 where the machine's log in the
        cache no longer reaches it (its log was wiped: seqs began again)."""
        rows = await self.db.execute_fetchall(
            "SELECT c.machine, c.seq, (SELECT max(seq) FROM events e WHERE e.machine = c.machine)"
            " FROM task_cursors c"
        )
        return {bytes(r[0]): int(r[1]) if r[2] is not None and r[1] <= r[2] else 0 for r in rows}

    async def set_cursor(self, machine: bytes, seq: int) -> None:
        await self.db.execute(
            "INSERT INTO task_cursors (machine, seq) VALUES (?, ?) ON CONFLICT (machine) "
            "DO UPDATE SET seq = excluded.seq",
            (machine, seq),
        )

    async def reports_after(self, machine: bytes, seq: int) -> list[LoggedEvent]:
        """The machine's task-progress and machine-load events the cache holds past
        ``seq``, in order (found by their encoded prefix, not by decoding every row)."""
        (first, second) = _PREFIXES
        rows = await self.db.execute_fetchall(
            "SELECT seq, at, session, body FROM events WHERE machine = ? AND seq > ? AND "
            "(substr(body, 1, ?) = ? OR substr(body, 1, ?) = ?) ORDER BY seq",
            (machine, seq, len(first), first, len(second), second),
        )
        return [LoggedEvent(int(r[0]), float(r[1]), str(r[2]), bytes(r[3])) for r in rows]
