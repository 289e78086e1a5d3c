"""The controller agent's task book adapter (client/fleet.py) on a real controller
store (SQLite, the real migrations and cache), without a relay: the link records
what would be sent, the clock is a parameter.

What the integration suite cannot force on cue: an agent that stopped after the
cache applied a machine's reports but before the book took them in, and the
withdrawal an assign-ack timeout or a lost machine sends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import msgpack
import nacl.utils
import pytest

from starmux.client.cache import Cache
from starmux.client.fleet import Fleet
from starmux.client.live import LiveController, MachineChannel
from starmux.client.sessions import ControllerState
from starmux.client.store import ControllerConfig, ControllerStore
from starmux.client.task_store import TaskStore
from starmux.identity import NodeKeys, Role
from starmux.messages import APP, CommandAck, EventPage, LoggedEvent
from starmux.task_messages import MachineLoad, TaskProgress
from starmux.task_state import TaskState

S = TaskState


class RecordingLink:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes]] = []
        self.writes: list[int] = []  # frames per write

    async def send_data(self, peer: bytes, body: bytes) -> None:
        self.sent.append((peer, body))
        self.writes.append(1)

    async def send_data_many(self, frames: Sequence[tuple[bytes, bytes]]) -> None:
        self.sent += frames
        self.writes.append(len(frames))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Home:
    def __init__(self, store: ControllerStore, machine: MachineChannel) -> None:
        self.store = store
        self.machine = machine
        self.clock = Clock()
        self.seqs: dict[bytes, int] = {}
        self.others: list[MachineChannel] = []

    async def add_machine(self, name: str, *tags: str) -> MachineChannel:
        """Another paired machine, live, that reported ``tags`` (both machines then
        carry their tags: placement by target needs them)."""
        keys = NodeKeys.generate()
        await self.store.add_machine(keys.card(Role.MACHINE, name))
        machine = MachineChannel(keys.sign_public, keys.card(Role.MACHINE, name), online=True)
        machine.live.set()
        self.others.append(machine)
        for channel in (self.machine, machine):
            load = MachineLoad(tags, 1, 0, 0)
            await TaskStore(self.store.db).set_load(channel.key, load, at=self.clock.now)
        return machine

    async def fleet(self) -> Fleet:
        """A fresh agent's view of the same home (as after a restart)."""
        config = ControllerConfig("ws://127.0.0.1:1", nacl.utils.random(32), b"\x01" * 16, "l")
        state = ControllerState(self.store, config, self.store.keys(), Cache(self.store.db))
        controller = LiveController(self.store, config)
        controller.link = RecordingLink()  # type: ignore[assignment]
        controller.machines[self.machine.key] = self.machine
        for other in self.others:
            controller.machines[other.key] = other
        state.controller = controller
        fleet = Fleet(state, clock=self.clock)
        await fleet._load()
        return fleet

    async def applied(
        self, *bodies: TaskProgress | MachineLoad, by: MachineChannel | None = None
    ) -> list[LoggedEvent]:
        """The machine's events, applied to the cache (as the agent's link does)."""
        machine = by or self.machine
        events = []
        for body in bodies:
            seq = self.seqs[machine.key] = self.seqs.get(machine.key, 0) + 1
            events.append(LoggedEvent(seq, self.clock.now, "tasks", APP.encode(body)))
        page = EventPage("e1", tuple(events), more=False, live=True)
        await Cache(self.store.db).apply_pages([(machine.key, page)])
        return events

    async def outbox(self) -> list[tuple[str, dict[str, object]]]:
        rows = await self.store.db.execute_fetchall("SELECT kind, body FROM outbox ORDER BY rowid")
        return [(str(r[0]), msgpack.unpackb(bytes(r[1]))[2]) for r in rows]


@pytest.fixture
async def home(tmp_path: Path) -> AsyncIterator[Home]:
    store = ControllerStore(tmp_path / "home")
    await store.open()
    store.keys(create=True)
    keys = NodeKeys.generate()
    await store.add_machine(keys.card(Role.MACHINE, "box"))
    machine = MachineChannel(keys.sign_public, keys.card(Role.MACHINE, "box"), online=True)
    machine.live.set()
    try:
        yield Home(store, machine)
    finally:
        await store.close()


async def submit(fleet: Fleet, task_id: str, **extra: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "argv": ["true"], "target": "", "machine": "box", "count": 1, "priority": 0,
        "strategy": "least-loaded", "schedule_to_start": None, "start_to_close": None,
        "heartbeat": 5.0, "retry_on_lost": False, "id": task_id, "cwd": "/w", "title": "",
        "env": {}, "pty": False,
    }  # fmt: skip
    fields.update(extra)
    (view,) = (await fleet.submit(**fields))["tasks"]  # type: ignore[arg-type]
    return dict(view)


async def test_reports_applied_while_the_agent_was_away_are_taken_in_once(home: Home) -> None:
    first = await home.fleet()
    assert (await submit(first, "t1"))["state"] == "assigned"
    # The cache applied the machine's reports; the agent stopped before the book saw them.
    events = await home.applied(
        TaskProgress("t1", 1, S.ACCEPTED, None, None),
        TaskProgress("t1", 1, S.RUNNING, "task-x", None),
        TaskProgress("t1", 1, S.AWAITING_APPROVAL, "task-x", None),
    )
    again = await home.fleet()
    await again._step()
    assert again.book.tasks["t1"].state is S.AWAITING_APPROVAL
    # The same events heard live as well (applied before the read, told after): no-ops.
    for event in events:
        again._on_event(home.machine.key, event)
    await again._step()
    history = [(e["old"], e["new"]) for e in await again.store.events("t1")]
    assert history == [
        ("queued", "assigned"),
        ("assigned", "accepted"),
        ("accepted", "running"),
        ("running", "awaiting_approval"),
    ]
    # and a third agent reads nothing twice: the cursor moved past them
    third = await home.fleet()
    await third._step()
    assert len(await third.store.events("t1")) == 4


async def test_a_machine_unheard_for_its_heartbeat_loses_the_task_and_is_told(
    home: Home,
) -> None:
    fleet = await home.fleet()
    await submit(fleet, "t1")
    await home.applied(TaskProgress("t1", 1, S.ACCEPTED, None, None))
    await fleet._step()  # (not heard live: read back only by a new agent, see above)
    fleet = await home.fleet()
    await fleet._step()
    assert fleet.book.tasks["t1"].state is S.ACCEPTED
    home.machine.online = False
    home.clock.now += 4.9
    await fleet._step()
    assert fleet.book.tasks["t1"].state is S.ACCEPTED  # not yet
    home.clock.now += 0.2
    await fleet._step()
    lost = fleet.book.tasks["t1"]
    assert (lost.state, lost.attempt) == (S.LOST, 1)
    kinds = await home.outbox()
    assert kinds[-1] == ("cancel-task", {"task": "t1", "attempt": 1})  # when it comes back


async def test_an_unacknowledged_assignment_goes_again_as_the_next_attempt(home: Home) -> None:
    fleet = await home.fleet()
    await submit(fleet, "t1")
    home.clock.now += 30.0  # the default assign-ack
    await fleet._step()
    task = fleet.book.tasks["t1"]
    assert task.state is S.ASSIGNED and task.attempt == 2  # the only machine, again
    kinds = [(kind, body.get("attempt")) for kind, body in await home.outbox()]
    assert kinds == [("assign-task", 1), ("cancel-task", 1), ("assign-task", 2)]


async def test_placement_reads_the_reported_tags(home: Home) -> None:
    fleet = await home.fleet()
    (view,) = (
        await fleet.submit(
            argv=["true"], target="gpu", machine="", count=1, priority=0,
            strategy="least-loaded", schedule_to_start=None, start_to_close=None,
            heartbeat=None, retry_on_lost=False, id="t1", cwd="/w", title="", env={}, pty=False,
        )
    )["tasks"]  # fmt: skip
    assert view["state"] == "queued"  # no report yet: no tags known
    for event in await home.applied(MachineLoad(("gpu",), 2, 0, 0)):
        fleet._on_event(home.machine.key, event)
    await fleet._step()
    assert fleet.book.tasks["t1"].state is S.ASSIGNED
    assert fleet.machine_fields(home.machine.key)["tags"] == ["gpu"]


async def test_cancelling_a_running_task_waits_for_its_machine(home: Home) -> None:
    fleet = await home.fleet()
    await submit(fleet, "t1")
    await submit(fleet, "t2")
    for event in await home.applied(
        TaskProgress("t1", 1, S.ACCEPTED, None, None),
        TaskProgress("t1", 1, S.RUNNING, "task-x", None),
    ):
        fleet._on_event(home.machine.key, event)
    await fleet._step()
    reply = await fleet.cancel("t1")
    assert reply["cancelling"] is True and fleet.book.tasks["t1"].state is S.RUNNING
    assert (await home.outbox())[-1] == ("cancel-task", {"task": "t1", "attempt": 1})
    for event in await home.applied(TaskProgress("t1", 1, S.CANCELLED, "task-x", None)):
        fleet._on_event(home.machine.key, event)
    await fleet._step()
    assert fleet.book.tasks["t1"].state.value == "cancelled"  # done when the machine says so
    # One not running yet is withdrawn at once.
    withdrawn = await fleet.cancel("t2")
    assert withdrawn["cancelling"] is False and withdrawn["task"]["state"] == "cancelled"


# --- refusals and placement memory (issue 18 gaps) -------------------------------------


async def refuse_last_assignment(home: Home, machine: bytes, error: str, hint: str = "") -> None:
    """The machine's ack of the newest assign-task says no (as the link records it)."""
    rows = await home.store.db.execute_fetchall(
        "SELECT command_id FROM outbox WHERE kind = 'assign-task' AND machine = ? "
        "ORDER BY rowid DESC LIMIT 1",
        (machine,),
    )
    (command_id,) = [str(r[0]) for r in rows]
    await Cache(home.store.db).record_ack(machine, CommandAck(command_id, False, error, hint, ""))


async def test_a_refused_assignment_fails_at_once_with_the_machines_words(home: Home) -> None:
    """Old code: a refusal was no answer; the task waited out the ack timeout and
    went round again, with the reason nowhere."""
    fleet = await home.fleet()
    await submit(fleet, "t1")  # --machine box: no other machine may take it
    await refuse_last_assignment(home, home.machine.key, "viewer may not run", "ask an owner")
    await fleet._step()  # no clock moved: not a timeout
    task = fleet.book.tasks["t1"]
    assert (task.state, task.attempt) == (S.FAILED, 1)
    (view,) = (await fleet.tasks())["tasks"]
    assert view["reason"] == "viewer may not run; ask an owner (no other machine can take it)"
    events = (await fleet.show("t1"))["events"]
    assert [(e["trigger"], e["new"]) for e in events][-1] == ("refuse", "failed")
    assert [kind for kind, _ in await home.outbox()] == ["assign-task"]  # nothing to cancel


async def test_placement_memory_survives_an_agent_restart(home: Home) -> None:
    """Old code kept cursor, affinity and avoid/refused sets in memory only."""
    other = await home.add_machine("box2", "gpu")
    names = {home.machine.key.hex(): home.machine, other.key.hex(): other}
    first, second = sorted(names)  # ties go to the lower id
    fleet = await home.fleet()
    # round-robin: the rotation goes on after a restart rather than starting over
    view = await submit(fleet, "rr1", machine="", target="gpu", strategy="round-robin")
    assert (await home.fleet()).book.tasks["rr1"].machine == first
    fleet = await home.fleet()
    await submit(fleet, "rr2", machine="", target="gpu", strategy="round-robin")
    assert fleet.book.tasks["rr2"].machine == second, view
    # affinity: the cwd's machine is remembered (here the one a tie would not pick)
    for event in await home.applied(
        TaskProgress("rr2", 1, S.ACCEPTED, None, None),
        TaskProgress("rr2", 1, S.RUNNING, "task-x", None),
        by=names[second],
    ):
        fleet._on_event(names[second].key, event)
    await fleet._step()
    fleet = await home.fleet()
    assert fleet.book.last_for_cwd == {"/w": second}
    await submit(fleet, "af", machine="", target="gpu", strategy="affinity")
    assert fleet.book.tasks["af"].machine == second
    # refused and avoided machines: the next attempt does not go back after a restart
    await submit(fleet, "r1", machine="", target="gpu", cwd="/r")
    refuser = bytes.fromhex(fleet.book.tasks["r1"].machine or "")
    names[refuser.hex()].live.clear()  # (only so it stays queued: nothing else live)
    other_one = next(m for k, m in names.items() if k != refuser.hex())
    other_one.live.clear()
    await refuse_last_assignment(home, refuser, "no")
    await fleet._step()
    assert fleet.book.tasks["r1"].state is S.QUEUED
    fleet = await home.fleet()
    assert fleet.book.refused["r1"] == {refuser.hex(): "no"}
    assert fleet.book.avoid["r1"] == frozenset({refuser.hex()})
    names[refuser.hex()].live.set()
    await fleet._step()
    assert fleet.book.tasks["r1"].state is S.QUEUED  # the refuser is never offered it again
    other_one.live.set()
    await fleet._step()
    assert fleet.book.tasks["r1"].machine == other_one.key.hex()
