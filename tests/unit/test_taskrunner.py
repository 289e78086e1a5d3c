"""The task runner with a real event log, real sessions (real processes) and the real
queue: tasks start up to the capacity, by priority, as ordinary sessions, and each
state they reach is a logged ``task-progress`` event."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from starmux.daemon.eventlog import EventLog, StoredEvent
from starmux.daemon.sessions import SessionManager
from starmux.daemon.taskqueue import TaskQueue
from starmux.daemon.taskrunner import TASK_STREAM, TaskRunner, session_for
from starmux.errors import UsageError
from starmux.messages import APP
from starmux.task_messages import AssignTask, CancelTask, MachineLoad, TaskProgress
from starmux.task_state import FINAL, TaskState

S = TaskState
TIMEOUT = 30.0  # generous: only a broken runner waits this long
# The task's process waits for the test to create its file (the process polls; the
# test never sleeps: it awaits the logged progress).
WAIT_FOR = "import pathlib, time\nwhile not pathlib.Path({name!r}).exists(): time.sleep(0.02)"


@dataclass
class Machine:
    runner: TaskRunner
    work: Path
    progress: list[tuple[str, TaskProgress]] = field(default_factory=list)
    loads: list[MachineLoad] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, events: list[StoredEvent]) -> None:
        for event in events:
            body = APP.decode(event.body)
            if isinstance(body, TaskProgress):
                self.progress.append((event.session, body))
                self.changed.set()
            elif isinstance(body, MachineLoad):
                assert event.session == TASK_STREAM
                self.loads.append(body)
                self.changed.set()

    def states(self, task: str) -> list[TaskState]:
        return [p.state for _, p in self.progress if p.task == task]

    async def until(self, done: int, *, loads: int = 0) -> None:
        """Wait until ``done`` tasks reached a final state (and ``loads`` were logged)."""
        async with asyncio.timeout(TIMEOUT):
            while sum(p.state in FINAL for _, p in self.progress) < done or len(self.loads) < loads:
                self.changed.clear()
                await self.changed.wait()

    def assign(self, task: str, *, priority: int = 0, code: str = "") -> AssignTask:
        script = code or WAIT_FOR.format(name=f"go-{task}")
        argv = (sys.executable, "-c", script)
        return AssignTask(task, 1, priority, argv, str(self.work), task, {"X": "1"}, False, None)


@pytest.fixture
async def machine(tmp_path: Path) -> AsyncIterator[Machine]:
    log = await EventLog.open(tmp_path / "daemon.sqlite3")
    queue = await TaskQueue.open(tmp_path / "daemon.sqlite3")
    sessions = SessionManager(log, allowed_roots=[tmp_path], api_socket=tmp_path / "api.sock")
    runner = TaskRunner(queue, sessions, log, capacity=1, tags=frozenset({"os=linux", "gpu"}))
    work = tmp_path / "work"
    work.mkdir()
    running = Machine(runner, work)
    log.subscribe(running.record)
    try:
        yield running
    finally:
        for task in ("a", "b", "c", "d"):
            (work / f"go-{task}").touch()
        await sessions.close()
        await runner.close()
        await queue.close()
        await log.close()


async def test_capacity_then_priority_then_age(machine: Machine) -> None:
    assert await machine.runner.assign(machine.assign("a")) == "running"
    assert await machine.runner.assign(machine.assign("b")) == "accepted"
    assert await machine.runner.assign(machine.assign("c", priority=5)) == "accepted"
    assert machine.states("b") == [S.ACCEPTED]  # capacity 1: waiting
    for task in ("a", "c", "b"):
        (machine.work / f"go-{task}").touch()
    await machine.until(3)
    finished = [p.task for _, p in machine.progress if p.state is S.SUCCEEDED]
    assert finished == ["a", "c", "b"]  # the later, higher-priority c overtook b
    assert machine.states("a") == [S.ACCEPTED, S.RUNNING, S.SUCCEEDED]
    # Never two at once: each start comes after the previous task's end.
    order = [(p.task, p.state) for _, p in machine.progress if p.state in (S.RUNNING, S.SUCCEEDED)]
    assert order == [
        ("a", S.RUNNING), ("a", S.SUCCEEDED),
        ("c", S.RUNNING), ("c", S.SUCCEEDED),
        ("b", S.RUNNING), ("b", S.SUCCEEDED),
    ]  # fmt: skip


async def test_a_task_is_an_ordinary_session_on_its_own_stream(machine: Machine) -> None:
    await machine.runner.assign(machine.assign("a", code="import sys; sys.exit(3)"))
    await machine.until(1)
    session = session_for("a", 1)
    assert [(s, p.state) for s, p in machine.progress] == [
        (TASK_STREAM, S.ACCEPTED),
        (session, S.RUNNING),
        (session, S.FAILED),
    ]
    assert machine.progress[-1][1].exit_code == 3
    assert machine.progress[-1][1].session == session
    created = await machine.runner.log.execute_read(
        "SELECT argv, cwd, title FROM sessions WHERE id = ?", (session,)
    )
    assert created and created[0][2] == "a"


async def test_the_same_task_assigned_twice_runs_once(machine: Machine) -> None:
    first = machine.assign("a", code="pass")
    assert await machine.runner.assign(first) == "running"
    await machine.until(1)
    assert await machine.runner.assign(first) == "succeeded"  # the ack names where it is
    starts = await machine.runner.log.execute_read(
        "SELECT count(*) FROM sessions WHERE title = 'a'", ()
    )
    assert starts[0][0] == 1
    assert machine.states("a") == [S.ACCEPTED, S.RUNNING, S.SUCCEEDED]


async def test_a_task_outside_the_allowed_roots_is_refused_not_accepted(machine: Machine) -> None:
    """Refused in the ack (so the controller may place it elsewhere): nothing stored."""
    outside = AssignTask("a", 1, 0, ("true",), "/", "a", {}, False, None)
    with pytest.raises(UsageError, match="allowed roots"):
        await machine.runner.assign(outside)
    assert await machine.runner.queue.get("a") is None
    await machine.runner.assign(machine.assign("b", code="pass"))
    await machine.until(1)
    assert machine.states("a") == []
    assert machine.states("b") == [S.ACCEPTED, S.RUNNING, S.SUCCEEDED]


def test_session_ids_of_attempts_differ_and_fit() -> None:
    ids = {session_for("t" * 64, n) for n in range(1, 100)}
    assert len(ids) == 99 and all(4 <= len(i) <= 40 for i in ids)


async def test_cancel_withdraws_a_waiting_task_and_stops_a_running_one(machine: Machine) -> None:
    await machine.runner.assign(machine.assign("a"))
    await machine.runner.assign(machine.assign("b"))
    assert await machine.runner.cancel(CancelTask("b", 1)) == "cancelled"  # never started
    with pytest.raises(UsageError):
        await machine.runner.cancel(CancelTask("a", 2))  # not this attempt
    assert await machine.runner.cancel(CancelTask("a", 1)) == "cancelling"
    await machine.until(2)
    assert machine.states("b") == [S.ACCEPTED, S.CANCELLED]
    assert machine.states("a") == [S.ACCEPTED, S.RUNNING, S.CANCELLED]
    assert await machine.runner.cancel(CancelTask("a", 1)) == "cancelled"  # repeat: no-op


async def test_each_change_is_followed_by_the_machine_load(machine: Machine) -> None:
    await machine.runner.assign(machine.assign("a"))
    await machine.runner.assign(machine.assign("b"))
    (machine.work / "go-a").touch()
    (machine.work / "go-b").touch()
    await machine.until(2, loads=6)
    assert len(machine.loads) == len(machine.progress) == 6
    assert {(m.tags, m.capacity) for m in machine.loads} == {(("gpu", "os=linux"), 1)}
    # a accepted, a running, b accepted, a done, b running, b done:
    assert [(m.running, m.queued) for m in machine.loads] == [
        (0, 1), (1, 0), (1, 1), (0, 1), (1, 0), (0, 0),
    ]  # fmt: skip


async def test_start_to_close_times_out_then_stops_the_session_and_frees_the_slot(
    machine: Machine,
) -> None:
    slow = AssignTask(
        "a", 1, 0, (sys.executable, "-c", WAIT_FOR.format(name="go-never")),
        str(machine.work), "a", {}, False, 0.2,
    )  # fmt: skip
    assert await machine.runner.assign(slow) == "running"
    await machine.runner.assign(machine.assign("b", code="pass"))
    await machine.until(2)
    # Recorded timed_out first; the session's end (cancelled) changes nothing more.
    assert machine.states("a") == [S.ACCEPTED, S.RUNNING, S.TIMED_OUT]
    assert machine.states("b") == [S.ACCEPTED, S.RUNNING, S.SUCCEEDED]  # the slot came free
    row = await machine.runner.queue.get("a")
    assert row is not None and row.state is S.TIMED_OUT and row.start_to_close == 0.2
    status = await machine.runner.log.execute_read(
        "SELECT status FROM sessions WHERE id = ?", (session_for("a", 1),)
    )
    assert status[0][0] == "cancelled"


async def test_a_task_within_its_start_to_close_is_not_touched(machine: Machine) -> None:
    quick = AssignTask("a", 1, 0, ("true",), str(machine.work), "a", {}, False, 30.0)
    await machine.runner.assign(quick)
    await machine.until(1)
    assert machine.states("a") == [S.ACCEPTED, S.RUNNING, S.SUCCEEDED]
    assert not machine.runner._deadlines  # its timer went with it


async def test_new_tags_are_reported_at_once(machine: Machine) -> None:
    await machine.runner.set_tags(frozenset({"gpu", "repo=api"}))
    await machine.until(0, loads=1)
    assert machine.loads[-1].tags == ("gpu", "repo=api")
