"""Runs the machine's task queue as ordinary sessions (issue 18), up to its capacity.

The adapter between :class:`~starmux.daemon.taskqueue.TaskQueue` (what to run, in
which order, how many at once) and :class:`~starmux.daemon.sessions.SessionManager`
(running a command as a session). A task's session is an ordinary session, so
``watch``, ``logs`` and checkpoints work on it.

Invariants:

- :meth:`TaskRunner.assign` stores the task before it answers: the ack the
  controller receives means the task is in the durable queue.
- Each state the task reaches here is logged as a ``task-progress`` event on the
  task's session (``accepted`` on the task's own stream, since no session exists
  yet), so controllers learn it by the ordinary event feed and resync; a
  ``machine-load`` event follows on the task stream (also logged at start).
- Sessions are started only by :meth:`pump`, one pump at a time, through
  :meth:`TaskQueue.start_up_to`: the capacity is never exceeded. A session's end
  (seen as its logged status change) advances its task and pumps again.
- The session id of a task attempt is derived from (task id, attempt): the same
  attempt can never start a second session.
- Start-to-close is enforced here, where the process runs: when a started task's
  limit runs out it is recorded ``timed_out`` *first*, then its session is
  cancelled; the session's end then changes nothing more (the task is final).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable

from starmux.errors import MessageError, RemoteProtocolError, StarmuxError, UsageError
from starmux.messages import APP, SessionStatusChanged, StartSession
from starmux.session_state import TERMINAL, Status
from starmux.task_messages import AssignTask, CancelTask, MachineLoad, TaskProgress
from starmux.task_state import FINAL, TaskState, Trigger

from .agent_process import resolve_session_cwd
from .eventlog import EventLog, StoredEvent
from .sessions import SessionManager
from .taskqueue import QueuedTask, TaskQueue

__all__ = ["TASK_STREAM", "TaskRunner", "session_for"]

log = logging.getLogger("starmux.daemon")

#: The log stream of task events that happen before a task has a session.
TASK_STREAM = "tasks"

_TRIGGER_OF_STATUS = {
    Status.WAITING_APPROVAL: Trigger.AWAIT_APPROVAL,
    Status.SUCCEEDED: Trigger.SUCCEED,
    Status.FAILED: Trigger.FAIL,
    Status.CANCELLED: Trigger.CANCEL,
    Status.LOST: Trigger.LOSE,
}


def session_for(task_id: str, attempt: int) -> str:
    """The session id of one attempt of a task (fits the session id pattern)."""
    digest = hashlib.blake2b(f"{task_id}/{attempt}".encode(), digest_size=12).hexdigest()
    return f"task-{digest}"


class TaskRunner:
    def __init__(
        self,
        queue: TaskQueue,
        sessions: SessionManager,
        event_log: EventLog,
        *,
        capacity: int,
        tags: frozenset[str] = frozenset(),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.queue = queue
        self.tags = tags
        self.sessions = sessions
        self.log = event_log
        self.capacity = capacity
        self.clock = clock
        self._pumping = asyncio.Lock()
        self._tasks_of_sessions: dict[str, tuple[str, int]] = {}
        self._background: set[asyncio.Task[None]] = set()
        #: (task id, attempt) → the timer that enforces its start-to-close
        self._deadlines: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._unsubscribe = event_log.subscribe(self._on_commit)

    async def _progress(self, task: QueuedTask, stream: str) -> None:
        body = TaskProgress(task.id, task.attempt, task.state, task.session, task.exit_code)
        await self.log.append(stream, APP.encode(body), at=self.clock())
        await self.report_load()

    async def report_load(self) -> None:
        """Log the machine's tags, capacity and load (what placement reads); after
        every task change, so the newest ``machine-load`` event is always current."""
        load = await self.queue.load()
        body = MachineLoad(tuple(sorted(self.tags)), self.capacity, load.running, load.queued)
        await self.log.append(TASK_STREAM, APP.encode(body), at=self.clock())

    async def assign(self, command: AssignTask) -> str:
        """Store an assigned task (once) and start what fits; the ack's result.

        A task this machine cannot run where it asks (a cwd outside the allowed
        roots, or none such) is refused here, in the ack, rather than accepted and
        failed at start: a refusal lets the controller place it on another machine.
        A task already stored is not checked again (a redelivery acks where it is).
        """
        if await self.queue.get(command.task) is None:
            resolve_session_cwd(command.cwd, self.sessions.allowed_roots)  # UsageError: no
        try:
            delivery = await self.queue.deliver(
                command.task,
                attempt=command.attempt,
                priority=command.priority,
                argv=command.argv,
                cwd=command.cwd,
                title=command.title,
                env=command.env,
                pty=command.pty,
                start_to_close=command.start_to_close,
                now=self.clock(),
            )
        except MessageError as exc:
            raise StarmuxError(f"task refused: {exc.message}") from exc
        if not delivery.stored:
            return delivery.task.state.value
        await self._progress(delivery.task, TASK_STREAM)
        await self.pump()
        now = await self.queue.get(command.task)
        return (now or delivery.task).state.value

    async def pump(self) -> None:
        """Start queued tasks as sessions while the capacity allows."""
        async with self._pumping:
            for task in await self.queue.start_up_to(self.capacity, now=self.clock()):
                session = session_for(task.id, task.attempt)
                self._tasks_of_sessions[session] = (task.id, task.attempt)
                request = StartSession(session, task.argv, task.cwd, task.title, task.env, task.pty)
                try:
                    await self.sessions.start(session, request)
                except StarmuxError as exc:
                    # e.g. a cwd outside the allowed roots: the task failed to start.
                    log.warning("task %s could not start: %s", task.id, exc)
                    failed = await self.queue.advance(task.id, Trigger.FAIL, now=self.clock())
                    await self._progress(failed, TASK_STREAM)
                    continue
                await self._progress(await self.queue.attach_session(task.id, session), session)
                if task.start_to_close is not None:
                    timer = asyncio.get_running_loop().create_task(
                        self._enforce_deadline(task, session, task.start_to_close)
                    )
                    self._deadlines[(task.id, task.attempt)] = timer

    async def _enforce_deadline(self, task: QueuedTask, session: str, limit: float) -> None:
        await asyncio.sleep(limit)
        async with self._pumping:
            current = await self.queue.get(task.id)
            if current is None or current.attempt != task.attempt or current.state in FINAL:
                return
            try:
                after = await self.queue.advance(task.id, Trigger.TIME_OUT, now=self.clock())
            except StarmuxError:
                log.exception("task %s: start-to-close could not be recorded", task.id)
                return
            self._deadlines.pop((task.id, task.attempt), None)
            await self._progress(after, session)
            log.info("task %s ran out of its start-to-close (%.1fs); stopping it", task.id, limit)
            with contextlib.suppress(StarmuxError):
                await self.sessions.cancel(session)

    async def report_lost(self, task: QueuedTask) -> None:
        """A task that was live when the daemon stopped (see ``TaskQueue.recover``):
        its controller learns at once, not after a heartbeat timeout."""
        await self._progress(task, task.session or TASK_STREAM)

    async def set_tags(self, tags: frozenset[str]) -> None:
        """New tags (stored by the caller) are in force and reported at once."""
        self.tags = tags
        await self.report_load()

    async def cancel(self, command: CancelTask) -> str:
        """Withdraw a waiting task, or cancel its session as sessions are cancelled
        (its end then finishes the task); the ack's result."""
        async with self._pumping:
            task = await self.queue.get(command.task)
            if task is None or task.attempt != command.attempt:
                raise UsageError(f"task {command.task} (attempt {command.attempt}) is not here")
            if task.state is TaskState.ACCEPTED:
                withdrawn = await self.queue.advance(task.id, Trigger.CANCEL, now=self.clock())
                await self._progress(withdrawn, TASK_STREAM)
                return withdrawn.state.value
            if task.state in FINAL or task.session is None:
                return task.state.value
            await self.sessions.cancel(task.session)
            return "cancelling"

    def _on_commit(self, events: list[StoredEvent]) -> None:
        for event in events:
            owner = self._tasks_of_sessions.get(event.session)
            if owner is None:
                continue
            try:
                body = APP.decode(event.body)
            except RemoteProtocolError:
                continue
            if isinstance(body, SessionStatusChanged):
                job = asyncio.get_running_loop().create_task(
                    self._session_changed(event.session, owner, Status(body.status), body)
                )
                self._background.add(job)
                job.add_done_callback(self._background.discard)

    async def _session_changed(
        self, session: str, owner: tuple[str, int], status: Status, body: SessionStatusChanged
    ) -> None:
        task_id, attempt = owner
        # Under the pump's lock: a session that ends at once is recorded after the
        # pump has logged that it started, never before.
        async with self._pumping:
            current = await self.queue.get(task_id)
            if current is None or current.attempt != attempt:
                return
            if current.state in FINAL:
                # Timed out here: its session's end adds nothing to the task, but
                # once its process is gone its slot is free.
                if status not in TERMINAL:
                    return
                after = current
            else:
                if status is Status.RUNNING and current.state is TaskState.AWAITING_APPROVAL:
                    trigger: Trigger | None = Trigger.RESUME
                else:
                    trigger = _TRIGGER_OF_STATUS.get(status)
                if trigger is None:
                    return
                try:
                    after = await self.queue.advance(
                        task_id, trigger, now=self.clock(), exit_code=body.exit_code
                    )
                except StarmuxError:
                    log.exception("task %s: session %s went %s", task_id, session, status.value)
                    return
                if after.state in FINAL:  # before it is told: ended means no timer left
                    self._stop_timer(task_id, attempt)
                await self._progress(after, session)
            if after.state not in FINAL:
                return
            self._tasks_of_sessions.pop(session, None)
            self._stop_timer(task_id, attempt)
        await self.pump()

    def _stop_timer(self, task_id: str, attempt: int) -> None:
        timer = self._deadlines.pop((task_id, attempt), None)
        if timer is not None:
            timer.cancel()

    async def close(self) -> None:
        self._unsubscribe()
        for timer in self._deadlines.values():
            timer.cancel()
        for job in list(self._background):
            await job
