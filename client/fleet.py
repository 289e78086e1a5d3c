"""Fleet dispatch inside the controller agent (issue 18): the service that places
tasks on machines, follows what they report and enforces the controller's timeouts.

The core decides (:class:`~starmux.dispatch.TaskBook`: placement, the state table,
timeouts); this adapter feeds it and carries out what it decides::

    submit ──▶ TaskStore row + TaskBook ──▶ place ──▶ assign-task in the command outbox
    machine-load / task-progress events (applied by the cache) ──▶ report / loads
    every tick: heartbeats of online machines, timeouts, placement of what waits

Invariants:

- A task is stored (:class:`~.task_store.TaskStore`) before anything is sent for
  it, and every change the book makes is stored with its events: a task waiting
  for an eligible machine survives an agent restart and is placed when one appears.
- One step at a time (``_lock``): submissions, cancels and ticks never interleave
  their reads and writes of the book.
- A machine is a placement candidate only while its channel is live (synced), so
  its last ``machine-load`` is current and an assignment can go out at once.
  Its load is what it reported, raised by the tasks this controller has on it
  that the report does not show yet (a report lags an assignment).
- Heartbeat: a machine is heard from while the relay says it is online; one that
  went away stops being heard, and its tasks become ``lost`` after their heartbeat
  timeout (rerun elsewhere only if marked ``--retry-on-lost``). After an agent
  restart every task is heard from at load: the agent's own absence is not the
  machine's.
- When the book takes a task away from a machine (assign-ack timeout, lost,
  expired, cancelled), that machine is told: its assignment is withdrawn from the
  outbox if it was never sent, else a ``cancel-task`` for that attempt follows, so
  a machine that comes back does not run an attempt that was given up.
- Cancelling a task whose process runs asks its machine (``cancel-task``) and
  waits for its report; one that is not running yet is withdrawn at once.
- Start-to-close is the machine's to enforce (it travels in ``assign-task``); the
  machine reports ``timed_out``.
- A machine that acks an ``assign-task`` with a no (a role it does not grant this
  device, a task its queue will not store) has refused that attempt: the book sends
  the task elsewhere or fails it with the machine's words. Refusals are read from
  the command outbox, where the link records every ack, so one that arrived while
  the agent was stopping is still taken in after a restart.
- The book's placement memory (round-robin cursor, affinity, avoided and refusing
  machines) is stored with every change that makes it (migration 006) and read
  back at load.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from starmux.codec import Message
from starmux.dispatch import Spec, TaskBook
from starmux.errors import StarmuxError, UsageError
from starmux.messages import APP, LoggedEvent, check_id
from starmux.placement import Machine, Strategy, parse_target
from starmux.task_messages import (
    AssignTask,
    CancelTask,
    MachineLoad,
    SetTags,
    TaskProgress,
    trigger_for,
)
from starmux.task_state import Task, TaskEvent, TaskState, Trigger

from .sessions import ControllerState, OperationFailed
from .store import KnownMachine
from .task_store import Request, StoredTask, TaskStore

__all__ = ["HELD", "TICK", "Fleet"]

log = logging.getLogger("starmux.controller.fleet")

#: How often heartbeats, timeouts and waiting tasks are looked at (at most).
TICK = 0.25
MAX_COUNT = 1000
#: How long a submission waits for online machines to finish syncing before placing.
SYNC_WAIT = 3.0
S = TaskState
#: States in which a task is on a machine (so the machine holds or may hold it).
HELD = frozenset({S.ASSIGNED, S.ACCEPTED, S.RUNNING, S.AWAITING_APPROVAL})
#: States in which a task's process runs on its machine.
_LIVE = frozenset({S.RUNNING, S.AWAITING_APPROVAL})
#: States a task leaves its machine for, taken by the controller's decision.
_LEFT = frozenset({S.QUEUED, S.LOST, S.EXPIRED, S.CANCELLED})


class Fleet:
    def __init__(self, state: ControllerState, *, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.clock = clock
        self.store = TaskStore(state.store.db)
        self.book = TaskBook()
        self.rows: dict[str, StoredTask] = {}
        self.loads: dict[bytes, MachineLoad] = {}
        self._inbox: list[tuple[bytes, LoggedEvent, Message]] = []
        #: events read back from the cache at load: skipped when also heard live (a
        #: report taken twice could flip awaiting_approval ⇄ running once more)
        self._read_back: set[tuple[bytes, int]] = set()
        self._read_back_count = 0
        #: the assign-task command of each assigned task's current attempt
        self._assign_commands: dict[str, str] = {}
        self._wake = asyncio.Event()
        #: one event per ``tasks --watch`` (:mod:`.task_watch`): set at every stored step
        self.followers: set[asyncio.Event] = set()
        self._lock = asyncio.Lock()
        self.loaded = asyncio.Event()
        state.event_hooks.append(self._on_event)

    # --- the service ----------------------------------------------------------------

    def _on_event(self, machine: bytes, event: LoggedEvent) -> None:
        """Called for every event the cache applied, in order (no I/O here)."""
        try:
            body = APP.decode(event.body)
        except StarmuxError:
            return
        if isinstance(body, TaskProgress | MachineLoad):
            self._inbox.append((machine, event, body))
            self._wake.set()

    async def run(self) -> None:
        await self._load()
        while True:
            try:
                async with self._lock:
                    await self._step()
            except (StarmuxError, OSError) as exc:  # the next tick tries again
                log.warning("fleet step failed: %s", exc)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK):
                    await self._wake.wait()

    async def _load(self) -> None:
        now = self.clock()
        self.loads = await self.store.loads()
        for stored in await self.store.all():
            task = stored.task
            if task.state in HELD and task.heard_at is not None:
                # Heard from at load: the agent's own absence is not the machine's.
                task = dataclasses.replace(task, heard_at=max(task.heard_at, now))
            self.book.restore(task, stored.spec, avoid=stored.avoid, refused=stored.refused)
            self.rows[task.id] = stored
            if task.state is S.ASSIGNED and stored.assign_command is not None:
                self._assign_commands[task.id] = stored.assign_command
        self.book.cursor = await self.store.round_robin()
        self.book.last_for_cwd = await self.store.affinity()
        # What the cache applied after the book last took something in (the agent
        # stopped in between): taken in first, before anything newer.
        cursors = await self.store.cursors()
        missed: list[tuple[bytes, LoggedEvent, Message]] = []
        for known in await self.state.store.machines():
            for event in await self.store.reports_after(known.key, cursors.get(known.key, 0)):
                with contextlib.suppress(StarmuxError):
                    missed.append((known.key, event, APP.decode(event.body)))
                    self._read_back.add((known.key, event.seq))
        self._inbox[:0] = missed
        self._read_back_count = len(missed)  # the first step takes these in, once
        self.loaded.set()

    async def _step(self) -> None:
        now = self.clock()
        inbox, self._inbox = self._inbox, []
        for index, (machine, event, body) in enumerate(inbox):
            if (machine, event.seq) in self._read_back and index >= self._read_back_count:
                continue  # read back at load, then heard live as well
            if isinstance(body, MachineLoad):
                self.loads[machine] = body
                await self.store.set_load(machine, body, at=event.at)
            elif isinstance(body, TaskProgress):
                await self._progress(machine, body, now=now)
            await self.store.set_cursor(machine, event.seq)
        self._read_back_count = 0
        await self._refusals(now=now)
        controller = self.state.controller
        if controller is not None:
            for key, channel in controller.machines.items():
                if channel.online:
                    self.book.heard_from(key.hex(), now=now)
        expired = self.book.expire(now=now)
        await self._save_and_withdraw(expired, now=now)
        await self._place(now=now)

    async def _progress(self, machine: bytes, body: TaskProgress, *, now: float) -> None:
        task = self.book.tasks.get(body.task)
        if task is None:
            return
        trigger = trigger_for(task.state, body.state)
        if trigger is None:
            return
        events = self.book.report(
            machine.hex(), body.task, body.attempt, trigger, now=now, exit_code=body.exit_code
        )
        if events is None:  # another machine's, an older attempt's, or not allowed
            return
        await self._save(body.task, events, now=now)
        if events[0].new is S.ACCEPTED:
            self._assign_commands.pop(body.task, None)  # answered: nothing to refuse now
        if events[0].new is S.RUNNING and events[0].old is S.ACCEPTED:
            cwd = self.book.specs[body.task].cwd
            await self.store.set_affinity(cwd, machine.hex(), at=now)
        if body.session is not None:
            await self.store.set_session(body.task, body.session)

    async def _save(self, task_id: str, events: Iterable[TaskEvent], *, now: float) -> None:
        """The task's row, its placement memory and the step's events."""
        await self.store.save(
            self.book.tasks[task_id],
            list(events),
            now=now,
            avoid=self.book.avoid.get(task_id, frozenset()),
            refused=self.book.refused.get(task_id),
        )
        for follower in self.followers:
            follower.set()

    async def _refusals(self, *, now: float) -> None:
        """Assignments their machine acked with a no: each a refusal for the book."""
        waiting = {
            command: task_id
            for task_id, command in self._assign_commands.items()
            if self.book.tasks[task_id].state is S.ASSIGNED
        }
        self._assign_commands = {t: c for c, t in waiting.items()}
        found = await self.store.refusals(list(waiting))
        if not found:
            return
        machines = await self._machines()
        for command, machine, error, hint in found:
            task_id = waiting[command]
            task = self.book.tasks[task_id]
            reason = f"{error}; {hint}" if hint else error
            events = self.book.refuse(
                machine.hex(), task_id, task.attempt, reason, machines=machines, now=now
            )
            self._assign_commands.pop(task_id, None)
            if events is None:
                continue
            log.info("task %s refused by %s: %s", task_id, machine.hex()[:8], reason[:80])
            await self.store.set_assign_command(task_id, None)
            await self._save_and_withdraw(events, now=now)

    async def _save_and_withdraw(self, events: Iterable[TaskEvent], *, now: float) -> None:
        by_task: dict[str, list[TaskEvent]] = {}
        for event in events:
            by_task.setdefault(event.task, []).append(event)
        for task_id, step in by_task.items():
            await self._save(task_id, step, now=now)
            for event in step:
                if event.trigger is Trigger.REFUSE:
                    continue  # the machine said no: it holds nothing to take back
                # An ack timeout takes the attempt back whether it requeues or gives up.
                left = event.new in _LEFT or event.trigger is Trigger.ACK_TIMEOUT
                if event.old in HELD and left and event.machine is not None:
                    await self._withdraw(task_id, event.attempt, bytes.fromhex(event.machine))

    async def _withdraw(self, task_id: str, attempt: int, machine: bytes) -> None:
        """Take an attempt back from its machine: unsent, it leaves the outbox; sent,
        the machine is told to cancel it (when it is next reachable)."""
        stored = await self.store.get(task_id)
        command_id = stored.assign_command if stored else None
        if command_id is not None:
            cursor = await self.state.store.db.execute(
                "DELETE FROM outbox WHERE command_id = ? AND machine = ? AND sent_at IS NULL",
                (command_id, machine),
            )
            await self.store.set_assign_command(task_id, None)
            if cursor.rowcount == 1:
                return
        await self._send(machine, CancelTask(task_id, attempt))

    async def _machines(self) -> list[Machine]:
        controller = self.state.controller
        active = Counter(t.machine for t in self.book.tasks.values() if t.state in HELD)
        machines = []
        for known in await self.state.store.machines():
            channel = controller.machines.get(known.key) if controller else None
            load = self.loads.get(known.key) or MachineLoad((), 1, 0, 0)
            ours = active[known.key.hex()]
            machines.append(
                Machine(
                    known.key.hex(),
                    frozenset(load.tags),
                    load.capacity,
                    load.running,
                    max(load.queued, ours - load.running),
                    online=bool(channel is not None and channel.live.is_set()),
                )
            )
        return machines

    async def _place(self, *, now: float) -> None:
        if not any(t.state is S.QUEUED for t in self.book.tasks.values()):
            return
        cursor = self.book.cursor
        assignments, events = self.book.place(await self._machines(), now=now)
        await self._save_and_withdraw(events, now=now)
        if self.book.cursor != cursor:
            await self.store.set_round_robin(self.book.cursor)
        for assignment in assignments:
            stored = self.rows[assignment.task]
            task = self.book.tasks[assignment.task]
            request = stored.request
            command = AssignTask(
                task.id,
                assignment.attempt,
                task.priority,
                request.argv,
                request.cwd,
                request.title,
                request.env,
                request.pty,
                request.start_to_close,
            )
            command_id = await self._send(bytes.fromhex(assignment.machine), command)
            await self.store.set_assign_command(task.id, command_id)
            self._assign_commands[task.id] = command_id

    async def _send(self, machine: bytes, command: Message) -> str:
        """Into the durable command outbox; out at once if the machine is live."""
        command_id = "k-" + secrets.token_hex(8)
        await self.state.cache.enqueue(command_id, machine, command.KIND, APP.encode(command))
        controller = self.state.controller
        channel = controller.machines.get(machine) if controller else None
        if controller is not None and channel is not None and channel.live.is_set():
            await controller.flush_outbox(channel)
        return command_id

    # --- operations (the agent's protocol) ------------------------------------------

    async def submit(
        self,
        *,
        argv: list[str],
        target: str,
        machine: str,
        count: int,
        priority: int,
        strategy: str,
        schedule_to_start: float | None,
        start_to_close: float | None,
        heartbeat: float | None,
        assign_ack: float | None = 30.0,
        retry_on_lost: bool,
        id: str,
        cwd: str,
        title: str,
        env: dict[str, str],
        pty: bool,
    ) -> dict[str, Any]:
        """Store ``count`` tasks (or find them, if their ids were submitted before),
        place what can be placed now, and say where each is."""
        await self.loaded.wait()
        if bool(target) == bool(machine):
            raise OperationFailed("bad-request", "a task goes --to TAGS or to one --machine")
        if not 1 <= count <= MAX_COUNT:
            raise OperationFailed("bad-request", f"--count must be 1..{MAX_COUNT}")
        base = id or "t-" + secrets.token_hex(5)
        ids = [base] if count == 1 else [f"{base}-{n}" for n in range(1, count + 1)]
        try:
            for task_id in ids:
                check_id(task_id, "task id")
            tags = parse_target(target) if target else frozenset()
            chosen = Strategy(strategy)
        except (UsageError, ValueError) as exc:
            message = exc.message if isinstance(exc, UsageError) else str(exc)
            raise OperationFailed("bad-request", message) from exc
        key = (await self.state.store.find_machine(machine)).key.hex() if machine else None
        controller = self.state.controller
        if controller is not None:
            # Machines online but still syncing (e.g. just after a reconnect) are
            # worth a short wait: the reply can then say where the task went.
            with contextlib.suppress(StarmuxError):
                await controller.wait_live(within=SYNC_WAIT)
        async with self._lock:
            now = self.clock()
            known = [i for i in ids if i in self.book.tasks]
            if known:
                # Idempotent: the same ids again are the same tasks, never new runs.
                return {"duplicate": True, "tasks": await self._views(known)}
            title = title or " ".join(argv)[:80]
            request = Request(tuple(argv), cwd, title, env, pty, start_to_close)
            group = base if count > 1 else ""
            try:
                for task_id in ids:
                    task = Task(
                        task_id,
                        scheduled_at=now,
                        priority=priority,
                        retry_on_lost=retry_on_lost,
                        schedule_to_start=schedule_to_start,
                        start_to_close=None,  # enforced by the machine
                        heartbeat=heartbeat,
                        assign_ack=assign_ack,
                    )
                    spec = Spec(cwd=cwd, target=tags, machine=key, strategy=chosen, group=group)
                    await self.store.add(task, spec, request, now=now)
                    self.book.submit(task, spec)
                    self.rows[task_id] = StoredTask(task, spec, request, None, None, now)
            except UsageError as exc:
                raise OperationFailed("bad-request", exc.message, exc.hint or "") from exc
            await self._step()
            if any(self.book.tasks[i].state is S.QUEUED for i in ids):
                log.info(
                    "submitted %s: waiting; machines now %s",
                    base,
                    [(m.id[:8], sorted(m.tags), m.online) for m in await self._machines()],
                )
            return {"duplicate": False, "tasks": await self._views(ids)}

    async def tasks(self, *, state: str = "") -> dict[str, Any]:
        await self.loaded.wait()
        async with self._lock:
            ids = [i for i, t in self.book.tasks.items() if not state or t.state.value == state]
            return {"tasks": await self._views(ids)}

    async def show(self, task_id: str) -> dict[str, Any]:
        await self.loaded.wait()
        if task_id not in self.book.tasks:
            raise OperationFailed("not-found", f"no task {task_id!r} here", "see `starmux tasks`")
        (view,) = await self._views([task_id])
        return {"task": view, "events": await self._named_events(task_id)}

    def knows(self, task_id: str) -> bool:
        return task_id in self.book.tasks

    async def cancel(self, task_id: str) -> dict[str, Any]:
        async with self._lock:
            task = self.book.tasks.get(task_id)
            if task is None:
                raise OperationFailed("not-found", f"no task {task_id!r}", "see `starmux tasks`")
            if task.final:
                raise OperationFailed("too-late", f"task {task_id} already ended ({task.state})")
            if task.state in _LIVE and task.machine is not None:
                # Its process runs: the machine stops it as sessions are stopped and
                # reports `cancelled` (done is what the machine says, not what we sent).
                await self._send(bytes.fromhex(task.machine), CancelTask(task_id, task.attempt))
                (view,) = await self._views([task_id])
                return {"task": view, "cancelling": True}
            now = self.clock()
            events = self.book.cancel(task_id, now=now)
            await self._save_and_withdraw(events, now=now)
            (view,) = await self._views([task_id])
            return {"task": view, "cancelling": False}

    async def tag(self, machine: str, add: list[str], remove: list[str]) -> dict[str, Any]:
        target = await self.state.store.find_machine(machine)
        try:
            command = SetTags(tuple(add), tuple(remove))
        except UsageError as exc:
            raise OperationFailed("bad-request", exc.message, exc.hint or "") from exc
        return await self.state.issue(target, command)

    def machine_fields(self, key: bytes) -> dict[str, Any]:
        """Tags, capacity and load as the machine last reported (for ``machines``)."""
        load = self.loads.get(key)
        if load is None:
            return {"tags": None, "capacity": None, "running": None, "queued": None}
        return {
            "tags": sorted(load.tags),
            "capacity": load.capacity,
            "running": load.running,
            "queued": load.queued,
        }

    # --- views ----------------------------------------------------------------------

    async def _names(self) -> dict[str, KnownMachine]:
        return {m.key.hex(): m for m in await self.state.store.machines()}

    async def named(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Events with each machine's name in place of its key (as ``tasks show``)."""
        names = await self._names()
        for event in events:
            known = names.get(event["machine"] or "")
            event["machine"] = known.name if known else event["machine"]
        return events

    async def _named_events(self, task_id: str) -> list[dict[str, Any]]:
        names = await self._names()
        events = await self.store.events(task_id)
        for event in events:
            known = names.get(event["machine"] or "")
            event["machine"] = known.name if known else event["machine"]
        return events

    async def views(self, ids: Iterable[str]) -> list[dict[str, Any]]:
        """What ``starmux tasks`` shows of each task."""
        return await self._views(ids)

    async def _views(self, ids: Iterable[str]) -> list[dict[str, Any]]:
        names = await self._names()
        views = []
        for task_id in ids:
            task, stored = self.book.tasks[task_id], await self.store.get(task_id)
            spec = self.book.specs[task_id]
            assert stored is not None
            where = names.get(task.machine or "")
            if spec.machine is not None:
                named = names.get(spec.machine)
                target = "machine:" + (named.name if named else spec.machine[:16])
            else:
                target = ",".join(sorted(spec.target))
            views.append(
                {
                    "id": task.id,
                    "target": target,
                    "machine": where.name if where else task.machine,
                    "state": task.state.value,
                    "attempt": task.attempt,
                    "priority": task.priority,
                    "retry_on_lost": task.retry_on_lost,
                    "session": stored.session,
                    "queued_at": stored.created_at,
                    "assigned_at": task.assigned_at,
                    "started_at": task.started_at,
                    "finished_at": task.finished_at,
                    "exit_code": task.exit_code,
                    "reason": task.reason,
                    "argv": list(stored.request.argv),
                }
            )
        return views
