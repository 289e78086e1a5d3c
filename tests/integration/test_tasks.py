"""Tasks on a real daemon through a real relay (issue 18, the daemon side): a paired
controller assigns tasks over the encrypted channel; the machine stores each once,
runs them as ordinary sessions up to its capacity (1), and a replayed assignment
runs nothing twice. Placement by the controller is not wired yet."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from starmux.client.sessions import live_controller
from starmux.daemon.taskrunner import session_for
from starmux.messages import APP, LoggedEvent, SessionStatusChanged
from starmux.task_messages import AssignTask

from .cluster import Paired, pair, python
from .daemon_process import DaemonProcess
from .relay_process import RelayProcess


@pytest.fixture
def paired(tmp_path: Path, relay: RelayProcess, daemons: list[DaemonProcess]) -> Paired:
    return pair(tmp_path, relay, daemons)


def waiting_for(gate: Path) -> tuple[str, ...]:
    return tuple(
        python(f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.02)")
    )


def test_assigned_tasks_run_once_each_up_to_the_capacity(paired: Paired, tmp_path: Path) -> None:
    gates = {name: tmp_path / f"go-{name}" for name in ("a", "b")}
    tasks = {
        name: AssignTask(name, 1, 0, waiting_for(gate), str(paired.workdir), name, {}, False, None)
        for name, gate in gates.items()
    }

    ended: dict[str, str] = {}
    both_ended = asyncio.Event()
    names = {session_for(name, 1): name for name in tasks}

    def on_event(machine: bytes, event: LoggedEvent) -> None:
        message = APP.decode(event.body)
        final = ("succeeded", "failed", "cancelled", "lost")
        if (
            isinstance(message, SessionStatusChanged)
            and event.session in names
            and message.status in final
        ):
            ended[names[event.session]] = message.status
            if len(ended) == len(tasks):
                both_ended.set()

    async def assign_and_wait() -> list[str]:
        async with live_controller(paired.controller, on_event=on_event) as (store, controller):
            assert controller is not None
            (machine,) = await store.machines()
            await controller.wait_live([machine.key])
            results = []
            for command in (tasks["a"], tasks["b"], tasks["a"]):  # "a" twice
                ack = await controller.submit(machine.key, command)
                assert ack is not None and ack.ok, ack
                results.append(ack.result)
            for gate in gates.values():
                gate.touch()
            await asyncio.wait_for(both_ended.wait(), 60)
            return results

    assert asyncio.run(assign_and_wait()) == ["running", "accepted", "running"]
    assert ended == {"a": "succeeded", "b": "succeeded"}

    with sqlite3.connect(paired.daemon.home / "daemon.sqlite3") as db:
        rows = {
            row[0]: row[1:]
            for row in db.execute("SELECT id, state, attempt, started_at, finished_at FROM tasks")
        }
        sessions = db.execute("SELECT title, count(*) FROM sessions GROUP BY title").fetchall()
    assert {k: v[:2] for k, v in rows.items()} == {"a": ("succeeded", 1), "b": ("succeeded", 1)}
    assert rows["b"][2] >= rows["a"][3]  # capacity 1: b started once a had finished
    assert dict(sessions) == {"a": 1, "b": 1}  # the replayed assignment ran nothing
