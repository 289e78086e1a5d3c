"""The daemon's durable task queue on a real SQLite file: a task stored once, started by
priority then age up to the capacity (also with two connections racing), its states
following the core table, and hostile deliveries refused before anything is stored."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from starmux.daemon.taskqueue import Load, TaskQueue
from starmux.errors import MessageError, UsageError
from starmux.task_state import TaskState, Trigger

S, T = TaskState, Trigger


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "daemon.sqlite3"


@pytest.fixture
async def queue(path: Path) -> AsyncIterator[TaskQueue]:
    opened = await TaskQueue.open(path)
    yield opened
    await opened.close()


async def deliver(
    queue: TaskQueue, task_id: str, *, priority: int = 0, attempt: int = 1, now: float = 1.0
) -> bool:
    delivery = await queue.deliver(
        task_id, attempt=attempt, priority=priority, argv=["echo", task_id], cwd="/w", now=now
    )
    return delivery.stored


def rows_env(path: Path) -> list[bytes]:
    with sqlite3.connect(path) as db:
        return [bytes(env) for (env,) in db.execute("SELECT env FROM tasks")]


def rows(path: Path) -> list[tuple[str, int, str]]:
    with sqlite3.connect(path) as db:
        return list(db.execute("SELECT id, attempt, state FROM tasks ORDER BY arrival"))


async def test_a_task_delivered_twice_is_stored_and_started_once(
    queue: TaskQueue, path: Path
) -> None:
    assert await deliver(queue, "t1")
    second = await queue.deliver(
        "t1", attempt=1, priority=9, argv=["rm", "-rf", "/"], cwd="/", now=2.0
    )
    assert not second.stored
    assert second.task.argv == ("echo", "t1") and second.task.state is S.ACCEPTED
    assert [t.id for t in await queue.start_up_to(4, now=3.0)] == ["t1"]
    assert not await deliver(queue, "t1", now=4.0)  # also once it runs
    assert await queue.start_up_to(4, now=5.0) == []
    assert rows(path) == [("t1", 1, "running")]


async def test_priority_first_then_age(queue: TaskQueue) -> None:
    for task_id, priority in [("old-low", 0), ("new-low", 0), ("new-high", 5), ("neg", -3)]:
        await deliver(queue, task_id, priority=priority)
    assert [t.id for t in await queue.waiting()] == ["new-high", "old-low", "new-low", "neg"]
    order = []
    for now in (10.0, 11.0, 12.0, 13.0):
        (started,) = await queue.start_up_to(1, now=now)
        assert started.state is S.RUNNING and started.started_at == now
        order.append(started.id)
        await queue.advance(started.id, T.SUCCEED, now=now + 0.5, exit_code=0)
    assert order == ["new-high", "old-low", "new-low", "neg"]


async def test_a_later_higher_priority_task_overtakes_on_a_busy_machine(queue: TaskQueue) -> None:
    await deliver(queue, "busy")
    await queue.start_up_to(1, now=1.0)
    await deliver(queue, "early", priority=0, now=2.0)
    await deliver(queue, "late-urgent", priority=10, now=3.0)
    assert await queue.start_up_to(1, now=4.0) == []  # full
    await queue.advance("busy", T.FAIL, now=5.0, exit_code=1)
    assert [t.id for t in await queue.start_up_to(1, now=6.0)] == ["late-urgent"]


async def test_never_more_than_the_capacity_is_live(queue: TaskQueue) -> None:
    for i in range(5):
        await deliver(queue, f"t{i}")
    assert len(await queue.start_up_to(2, now=1.0)) == 2
    assert await queue.start_up_to(2, now=2.0) == []
    assert await queue.load() == Load(running=2, queued=3)
    # Waiting for approval still holds a slot.
    await queue.advance("t0", T.AWAIT_APPROVAL, now=3.0)
    assert await queue.start_up_to(2, now=4.0) == []
    await queue.advance("t1", T.SUCCEED, now=5.0, exit_code=0, session="s1")
    assert [t.id for t in await queue.start_up_to(2, now=6.0)] == ["t2"]
    # A smaller capacity (changed by the user) starts nothing until below it.
    assert await queue.start_up_to(1, now=7.0) == []
    assert await queue.load() == Load(running=2, queued=2)


async def test_two_connections_racing_never_exceed_the_capacity(path: Path) -> None:
    first, second = await TaskQueue.open(path), await TaskQueue.open(path)
    try:
        for i in range(6):
            await deliver(first, f"t{i}")
        results = await asyncio.gather(
            *(q.start_up_to(3, now=1.0) for q in (first, second, first, second))
        )
        started = [t.id for batch in results for t in batch]
        assert sorted(started) == ["t0", "t1", "t2"]
    finally:
        await first.close()
        await second.close()


async def test_the_queue_survives_a_restart(path: Path) -> None:
    queue = await TaskQueue.open(path)
    await deliver(queue, "a", priority=1)
    await deliver(queue, "b", priority=2)
    await queue.start_up_to(1, now=1.0)
    await queue.close()
    queue = await TaskQueue.open(path)
    try:
        assert (await queue.get("b")) is not None
        assert [t.id for t in await queue.waiting()] == ["a"]
        assert not await deliver(queue, "b")  # still a duplicate after the restart
    finally:
        await queue.close()


async def test_a_later_attempt_replaces_only_a_lost_row(queue: TaskQueue, path: Path) -> None:
    await deliver(queue, "t1", now=1.0)
    assert not await deliver(queue, "t1", attempt=2)  # the first attempt is still live here
    await queue.start_up_to(1, now=2.0)
    await queue.advance("t1", T.LOSE, now=3.0)
    assert not await deliver(queue, "t1", attempt=1)  # the same attempt, replayed
    await deliver(queue, "other", now=4.0)
    assert await deliver(queue, "t1", attempt=2, now=5.0)
    assert rows(path) == [("other", 1, "accepted"), ("t1", 2, "accepted")]  # a new arrival


async def test_a_later_attempt_replaces_a_withdrawn_row_but_never_a_finished_one(
    queue: TaskQueue, path: Path
) -> None:
    await deliver(queue, "w", now=1.0)
    await queue.advance("w", T.CANCEL, now=2.0)  # the controller withdrew attempt 1
    assert await deliver(queue, "w", attempt=2, now=3.0)
    await deliver(queue, "done", now=4.0)
    await queue.start_up_to(5, now=5.0)
    await queue.advance("done", T.SUCCEED, now=6.0, exit_code=0)
    assert not await deliver(queue, "done", attempt=2)  # it ran: never twice
    assert ("done", 1, "succeeded") in rows(path)


async def test_illegal_changes_raise_and_write_nothing(queue: TaskQueue, path: Path) -> None:
    await deliver(queue, "t1")
    with pytest.raises(UsageError, match="cannot succeed when accepted"):
        await queue.advance("t1", T.SUCCEED, now=2.0)
    with pytest.raises(UsageError, match="start_up_to"):
        await queue.advance("t1", T.START, now=2.0)
    with pytest.raises(UsageError, match="no task"):
        await queue.advance("nope", T.CANCEL, now=2.0)
    assert rows(path) == [("t1", 1, "accepted")]
    cancelled = await queue.advance("t1", T.CANCEL, now=3.0)
    assert cancelled.state is S.CANCELLED and cancelled.finished_at == 3.0
    with pytest.raises(UsageError):
        await queue.advance("t1", T.CANCEL, now=4.0)  # final stays final


@pytest.mark.parametrize(
    "fields",
    [
        {"task_id": ""},
        {"task_id": "x" * 65},
        {"task_id": "../etc"},
        {"task_id": "t\x1b[2J"},
        {"attempt": 0},
        {"priority": 10**6},
        {"argv": []},
        {"argv": ["a\0b"]},
        {"argv": ["x" * 70_000]},
        {"argv": [b"bytes"]},
        {"cwd": ""},
        {"cwd": "/" * 5000},
        {"title": "t" * 300},
        {"env": {"A": 1}},
        {"env": {"A": "x" * 70_000}},
    ],
)
async def test_hostile_deliveries_are_refused(
    queue: TaskQueue, path: Path, fields: dict[str, object]
) -> None:
    delivery: dict[str, object] = {
        "task_id": "t1",
        "attempt": 1,
        "priority": 0,
        "argv": ["true"],
        "cwd": "/w",
        **fields,
    }
    task_id = delivery.pop("task_id")
    with pytest.raises(MessageError):
        await queue.deliver(task_id, now=1.0, **delivery)  # type: ignore[arg-type]
    assert rows(path) == []


async def test_capacity_below_one_is_a_bug(queue: TaskQueue) -> None:
    with pytest.raises(UsageError):
        await queue.start_up_to(0, now=1.0)


async def test_after_a_restart_live_tasks_are_lost_and_waiting_ones_keep_their_turn(
    path: Path,
) -> None:
    queue = await TaskQueue.open(path)
    for task_id in ("run", "wait-approval", "queued-1", "queued-2"):
        await deliver(queue, task_id)
    await queue.start_up_to(2, now=1.0)
    await queue.advance("wait-approval", T.AWAIT_APPROVAL, now=2.0)
    await queue.close()
    queue = await TaskQueue.open(path)  # the daemon's next start
    try:
        lost = await queue.recover(now=10.0)
        assert [(t.id, t.state, t.finished_at) for t in lost] == [
            ("run", S.LOST, 10.0),
            ("wait-approval", S.LOST, 10.0),
        ]
        assert await queue.recover(now=11.0) == []  # once
        assert [t.id for t in await queue.start_up_to(2, now=12.0)] == ["queued-1", "queued-2"]
    finally:
        await queue.close()


async def test_the_environment_is_handed_over_at_start_and_not_kept(
    queue: TaskQueue, path: Path
) -> None:
    secret = {"API_TOKEN": "s3cret"}
    await queue.deliver(
        "t1", attempt=1, priority=0, argv=["true"], cwd="/w", now=1.0, title="t", env=secret
    )
    assert (await queue.waiting())[0].env == secret
    (started,) = await queue.start_up_to(1, now=2.0)
    assert started.env == secret and started.title == "t"
    # The row no longer holds it (old page bytes may linger in the 0600 file until
    # SQLite reuses them; the row is what any reader of the queue sees).
    assert rows_env(path) == [b"\x80"]
    stored = await queue.get("t1")
    assert stored is not None and stored.env == {}
