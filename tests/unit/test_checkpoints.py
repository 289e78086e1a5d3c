"""The daemon's checkpoints against a real event log and store (real SQLite files).

The race "a controller's decision vs the expiry timer" is forced deterministically:
the test wraps the log's reads so that both sides read the still-pending row, then
lets one side's write commit (awaited through the log's commit subscription) before
the other side writes with what it read. No sleeps: every wait is on an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from starmux.daemon.checkpoints import Checkpoints, TooLate
from starmux.daemon.eventlog import EventLog, StoredEvent
from starmux.daemon.sessions import LiveSession, SessionManager
from starmux.daemon.store import DATABASE_FILE, DaemonStore, PairedController
from starmux.decisions import decision_transcript
from starmux.errors import UsageError
from starmux.identity import NodeKeys, Role
from starmux.local_api import CheckpointOutcome
from starmux.messages import APP, CheckpointDecided, CheckpointRaised, DecideCheckpoint
from starmux.session_state import Status

from .deterministic import counter_rng

SESSION = "s-race-1"
WAIT = 30.0  # only a broken implementation ever waits this long


@dataclass
class Machine:
    log: EventLog
    store: DaemonStore
    sessions: SessionManager
    checkpoints: Checkpoints
    machine: NodeKeys
    controller: NodeKeys
    session: LiveSession

    def decision(self, checkpoint: str, *, approve: bool, reason: str = "ok") -> DecideCheckpoint:
        at = time.time()
        signature = self.controller.sign(
            decision_transcript(self.machine.sign_public, checkpoint, approve, reason, at)
        )
        return DecideCheckpoint(checkpoint, approve, reason, at, signature)

    async def decided_events(self, checkpoint: str) -> list[CheckpointDecided]:
        found = []
        for event in await self.log.read_after(0, limit=100_000):
            message = APP.decode(event.body)
            if isinstance(message, CheckpointDecided) and message.checkpoint == checkpoint:
                found.append(message)
        return found

    async def row(self, checkpoint: str) -> str | None:
        rows = await self.log.execute_read(
            "SELECT decision FROM checkpoints WHERE id = ?", (checkpoint,)
        )
        return str(rows[0][0]) if rows[0][0] is not None else None

    async def raise_checkpoint(
        self, *, timeout: float = 3600.0, default_approve: bool = False
    ) -> tuple[str, asyncio.Task[CheckpointOutcome]]:
        """Start an agent's checkpoint call; returns its id once it is in the log."""
        raised: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def on_commit(events: list[StoredEvent]) -> None:
            for event in events:
                message = APP.decode(event.body)
                if isinstance(message, CheckpointRaised) and not raised.done():
                    raised.set_result(message.checkpoint)

        unsubscribe = self.log.subscribe(on_commit)
        try:
            agent = asyncio.ensure_future(
                self.checkpoints.checkpoint(
                    session=self.session.id,
                    title="Deploy?",
                    body="",
                    timeout=timeout,
                    default_approve=default_approve,
                    key=None,
                )
            )
            async with asyncio.timeout(WAIT):
                return await raised, agent
        finally:
            unsubscribe()


@pytest.fixture
async def machine(tmp_path: Path) -> AsyncIterator[Machine]:
    store = DaemonStore(tmp_path)
    await store.open()
    log = await EventLog.open(tmp_path / DATABASE_FILE)
    sessions = SessionManager(log, allowed_roots=[tmp_path], api_socket=tmp_path / "api.sock")
    keys = NodeKeys.generate(counter_rng(b"machine"))
    controller = NodeKeys.generate(counter_rng(b"controller"))
    card = controller.card(Role.CONTROLLER, "laptop")
    await store.add_controller(PairedController(controller.sign_public, card, b"a" * 32, b"", 0, 0))
    now = time.time()
    await log.execute_write(
        [
            (
                "INSERT INTO sessions (id, status, argv, cwd, title, created_at, updated_at)"
                " VALUES (?, 'running', x'90', '/', 't', ?, ?)",
                (SESSION, now, now),
            )
        ]
    )
    live = LiveSession(SESSION, Status.RUNNING)
    sessions.sessions[SESSION] = live
    checkpoints = Checkpoints(log, sessions, store, machine_key=keys.sign_public)
    try:
        yield Machine(log, store, sessions, checkpoints, keys, controller, live)
    finally:
        await log.close()
        await store.close()


def status(machine: Machine) -> Status:
    return machine.session.status


# --- the forced interleaving ------------------------------------------------------------

Read = Callable[[str, Sequence[object]], Awaitable[list[tuple[Any, ...]]]]


class BothReadFirst:
    """Wraps ``EventLog.execute_read``: the first read of the checkpoint row by each
    side (``decide`` is the task named "decide", anything else is the expiry) is held
    until both sides have read it; then ``first`` goes on, and ``second`` only after a
    ``CheckpointDecided`` has committed."""

    def __init__(self, log: EventLog, *, first: str) -> None:
        self.real: Read = log.execute_read
        self.first = first
        self.arrived: dict[str, asyncio.Event] = {
            "decide": asyncio.Event(),
            "expire": asyncio.Event(),
        }
        self.decided = asyncio.Event()
        log.subscribe(self._on_commit)

    def _on_commit(self, events: list[StoredEvent]) -> None:
        if any(isinstance(APP.decode(e.body), CheckpointDecided) for e in events):
            self.decided.set()

    async def __call__(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        rows = await self.real(sql, params)
        task = asyncio.current_task()
        side = "decide" if task is not None and task.get_name() == "decide" else "expire"
        if "FROM checkpoints WHERE id = ?" not in sql or self.arrived[side].is_set():
            return rows
        self.arrived[side].set()
        async with asyncio.timeout(WAIT):
            for event in self.arrived.values():
                await event.wait()
            if side != self.first:
                await self.decided.wait()
        return rows


@pytest.mark.parametrize("first", ["decide", "expire"])
async def test_decision_and_expiry_that_read_together_decide_once(
    machine: Machine, first: str
) -> None:
    machine.log.execute_read = BothReadFirst(machine.log, first=first)  # type: ignore[method-assign]
    # The real expiry timer fires while the decision waits at the gate.
    checkpoint, agent = await machine.raise_checkpoint(timeout=0.05)
    decide = asyncio.create_task(
        machine.checkpoints.decide(
            "k-1",
            machine.decision(checkpoint, approve=True),
            controller_key=machine.controller.sign_public,
        ),
        name="decide",
    )
    told: str
    try:
        async with asyncio.timeout(WAIT):
            told = await decide
    except TooLate as exc:
        told = f"too late: {exc}"
    async with asyncio.timeout(WAIT):
        outcome = await agent

    events = await machine.decided_events(checkpoint)
    row = await machine.row(checkpoint)
    assert len(events) == 1, [e.decision for e in events]
    assert events[0].decision == row == outcome.decision
    if first == "decide":
        assert told == "approved" and row == "approved"
    else:
        assert told.startswith("too late") and "expired" in told and row == "expired"


async def test_decision_against_expiry_many_times_decides_each_once(machine: Machine) -> None:
    for attempt in range(50):
        checkpoint, agent = await machine.raise_checkpoint()
        decision = machine.decision(checkpoint, approve=attempt % 2 == 0)
        results = await asyncio.gather(
            machine.checkpoints.decide(
                f"k-{attempt}", decision, controller_key=machine.controller.sign_public
            ),
            machine.checkpoints.expire(checkpoint),
            return_exceptions=True,
        )
        async with asyncio.timeout(WAIT):
            outcome = await agent
        events = await machine.decided_events(checkpoint)
        row = await machine.row(checkpoint)
        assert len(events) == 1, (attempt, [e.decision for e in events])
        assert events[0].decision == row == outcome.decision
        told = results[0]
        if isinstance(told, TooLate):
            assert row == "expired"
        else:
            assert told == row
        assert status(machine) is Status.RUNNING


# --- the ordinary paths -------------------------------------------------------------------


async def test_a_decision_resolves_the_agent_and_resumes_the_session(machine: Machine) -> None:
    checkpoint, agent = await machine.raise_checkpoint()
    assert status(machine) is Status.WAITING_APPROVAL
    key = machine.controller.sign_public
    assert (
        await machine.checkpoints.decide(
            "k-1", machine.decision(checkpoint, approve=False, reason="no"), controller_key=key
        )
        == "denied"
    )
    outcome = await agent
    assert (outcome.decision, outcome.reason) == ("denied", "no")
    assert outcome.decided_by == machine.controller.fingerprint
    assert status(machine) is Status.RUNNING
    with pytest.raises(TooLate, match="already denied by"):
        await machine.checkpoints.decide(
            "k-2", machine.decision(checkpoint, approve=True), controller_key=key
        )
    assert [e.decision for e in await machine.decided_events(checkpoint)] == ["denied"]


async def test_expiry_applies_the_default_and_a_later_answer_is_too_late(machine: Machine) -> None:
    checkpoint, agent = await machine.raise_checkpoint(default_approve=True)
    await machine.checkpoints.expire(checkpoint)
    outcome = await agent
    assert outcome.decision == "expired" and "default applied: approve" in outcome.reason
    await machine.checkpoints.expire(checkpoint)  # a second timer is a no-op
    with pytest.raises(TooLate, match="its default on expiry"):
        await machine.checkpoints.decide(
            "k-1",
            machine.decision(checkpoint, approve=True),
            controller_key=machine.controller.sign_public,
        )
    assert len(await machine.decided_events(checkpoint)) == 1


async def test_a_bad_signature_is_refused_and_audited(machine: Machine) -> None:
    checkpoint, agent = await machine.raise_checkpoint()
    forged = machine.decision(checkpoint, approve=True)
    forged = DecideCheckpoint(checkpoint, True, "changed", forged.decided_at, forged.signature)
    with pytest.raises(UsageError, match="does not verify"):
        await machine.checkpoints.decide(
            "k-1", forged, controller_key=machine.controller.sign_public
        )
    stranger = NodeKeys.generate(counter_rng(b"stranger"))
    with pytest.raises(UsageError, match="does not verify"):
        await machine.checkpoints.decide(
            "k-2", machine.decision(checkpoint, approve=True), controller_key=stranger.sign_public
        )
    assert [a[1] for a in await machine.store.audit_log()] == ["decision.rejected"] * 2
    assert await machine.row(checkpoint) is None
    agent.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await agent


async def test_an_unknown_checkpoint_is_refused(machine: Machine) -> None:
    with pytest.raises(UsageError, match="no checkpoint c-nothing"):
        await machine.checkpoints.decide(
            "k-1",
            machine.decision("c-nothing", approve=True),
            controller_key=machine.controller.sign_public,
        )


async def test_two_checkpoints_keep_the_session_waiting_until_both_are_answered(
    machine: Machine,
) -> None:
    first, first_agent = await machine.raise_checkpoint()
    second, second_agent = await machine.raise_checkpoint()
    key = machine.controller.sign_public
    await machine.checkpoints.decide(
        "k-1", machine.decision(first, approve=True), controller_key=key
    )
    await first_agent
    assert status(machine) is Status.WAITING_APPROVAL
    await machine.checkpoints.expire(second)
    await second_agent
    assert status(machine) is Status.RUNNING
