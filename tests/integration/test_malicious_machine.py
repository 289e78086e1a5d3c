"""A compromised machine cannot reach another machine's sessions, checkpoints, logs or
commands through the controller's cache.

Machine A is a real daemon with a session waiting on a checkpoint and a command
queued for it. Machine B is paired with the same controller and then compromised:
a node driven by our own core (relay auth, Noise_KK responder) that learned A's
ids and answers the controller's sync with events and acks that use them.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import pytest

from starmux.client.agent_client import relay_link_released_async
from starmux.client.sessions import live_controller
from starmux.client.store import ControllerStore
from starmux.codec import Message
from starmux.decisions import Verdict
from starmux.e2e import Kind, unwrap
from starmux.frames import FrameType
from starmux.home import load_node_keys
from starmux.identity import IdentityCard, Role
from starmux.live_channel import LiveChannel, respond
from starmux.messages import (
    APP,
    CheckpointDecided,
    CheckpointRaised,
    CommandAck,
    CostReported,
    EventPage,
    LoggedEvent,
    Output,
    OutputStream,
    SessionCreated,
    SessionStatusChanged,
    SyncRequest,
)
from starmux.session_state import Status

from .cluster import Paired, pair, python
from .conftest import pair_machine
from .daemon_process import DaemonProcess, run_cli, run_json
from .node import RelayNode
from .relay_process import RelayProcess


def agent(title: str) -> list[str]:
    """A session that raises a checkpoint and waits for it."""
    args = ["checkpoint", title, "--timeout", "300"]
    return python(
        "import subprocess, sys\n"
        f"sys.exit(subprocess.run([sys.executable, '-m', 'starmux.cli', *{args!r}]).returncode)\n"
    )


@pytest.fixture
def machine_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)


def _pending_checkpoint(paired: Paired, title: str) -> dict[str, object]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for row in run_json(paired.controller, "approvals"):
            if row["title"] == title:
                return dict(row)
    raise AssertionError(f"checkpoint {title!r} never showed up")


async def _paired_machine_b(paired: Paired) -> tuple[RelayNode, IdentityCard]:
    """Machine B, paired with the same controller (relay grant and controller pin);
    returns it and the controller's card (B needs it to answer Noise_KK)."""
    keys = load_node_keys(paired.controller / "controller.key")
    # The agent (started by earlier commands) stays off the relay meanwhile: one key,
    # one connection (it would stay off for a while after being replaced).
    async with (
        ControllerStore(paired.controller) as store,
        relay_link_released_async(paired.controller),
    ):
        config = await store.config()
        controller = RelayNode(Role.CONTROLLER, config.name, keys=keys)
        await controller.connect(paired.relay.url)
        machine = await pair_machine(paired.relay, controller, config.account, name="evil-box")
        await controller.close()
        await store.add_machine(machine.card)
    return machine, controller.card


@dataclass
class Compromised:
    """What machine B answers: ``replies`` after every SyncRequest, in order."""

    replies: list[Message]
    handshakes: int = 0
    served: threading.Event = field(default_factory=threading.Event)


async def _serve_as_compromised(
    machine: RelayNode, controller: IdentityCard, plan: Compromised
) -> None:
    """Answer the controller's Noise_KK and syncs as a compromised machine would."""
    assert machine.auth is not None
    channel: LiveChannel | None = None
    while True:
        frame = await machine.recv_type(FrameType.DATA, timeout=120)
        kind, payload = unwrap(frame.body)
        if kind is Kind.SESSION_HANDSHAKE:
            plan.handshakes += 1
            relay_key = machine.auth.relay_card.sign_public
            channel, reply = respond(machine.keys, controller, payload, relay_key=relay_key)
            await machine.send(FrameType.DATA, frame.peer, reply)
        elif kind is Kind.SESSION_TRANSPORT and channel is not None:
            if not isinstance(channel.open(payload), SyncRequest):
                continue
            for message in plan.replies:
                await machine.send(FrameType.DATA, frame.peer, channel.seal(message))
            plan.served.set()


def _page(events: list[tuple[str, Message | bytes]], *, first_seq: int = 1) -> EventPage:
    """A sync page; an event given as bytes is a raw body (no checks of ours ran)."""
    logged = tuple(
        LoggedEvent(seq, time.time(), session, e if isinstance(e, bytes) else APP.encode(e))
        for seq, (session, e) in enumerate(events, start=first_seq)
    )
    return EventPage("0123456789abcdef", logged, more=False, live=False)


def test_a_compromised_machine_changes_nothing_of_another_machines(
    tmp_path: Path,
    relay: RelayProcess,
    daemons: list[DaemonProcess],
    machine_loop: asyncio.AbstractEventLoop,
) -> None:
    paired = pair(tmp_path, relay, daemons)
    session = paired.run(*agent("Deploy to prod?"))
    checkpoint = str(_pending_checkpoint(paired, "Deploy to prod?")["id"])
    # A goes offline with a command queued for it.
    paired.daemon.stop()
    queued = run_json(paired.controller, "cancel", session)
    assert queued["queued"] is True
    command_id = str(queued["command_id"])

    machine_b, controller_card = asyncio.run_coroutine_threadsafe(
        _paired_machine_b(paired), machine_loop
    ).result(timeout=30)
    hostile = _page(
        [
            (session, SessionStatusChanged(Status.SUCCEEDED, 0, "")),
            (session, CostReported(10**9, 10**9, 1e9, "")),
            (session, Output(OutputStream.STDOUT, b"INJECTED by evil-box\n")),
            (session, CheckpointRaised(checkpoint, "Approve me instead?", "", 4e9, True)),
            (session, CheckpointDecided(checkpoint, Verdict.APPROVED, b"", "", time.time())),
        ]
    )
    plan = Compromised([CommandAck(command_id, True, "", "", "cancelled"), hostile])
    serving = asyncio.run_coroutine_threadsafe(
        _serve_as_compromised(machine_b, controller_card, plan), machine_loop
    )
    try:
        rows = run_json(paired.controller, "sessions")
        assert plan.served.wait(10), "the controller never synced machine B"
    finally:
        serving.cancel()
        asyncio.run_coroutine_threadsafe(machine_b.close(), machine_loop).result(timeout=10)

    # A's session: unchanged (status, cost); B holds no session under A's id.
    mine = [r for r in rows if r["id"] == session]
    assert [(r["machine"], r["status"], r["cost"]["usd"]) for r in mine] == [
        ("gpu-box", "waiting_approval", 0.0)
    ]
    # A's checkpoint: still pending, on A.
    pending = run_json(paired.controller, "approvals")
    assert [(r["id"], r["machine"]) for r in pending if r["id"] == checkpoint] == [
        (checkpoint, "gpu-box")
    ]
    # A's log has none of B's output.
    logs = run_cli(paired.controller, "logs", session)
    assert "INJECTED" not in logs.stdout
    # A's queued command was not acked by B.
    with sqlite3.connect(paired.controller / "controller.sqlite3") as db:
        acked = db.execute(
            "SELECT acked_at FROM outbox WHERE command_id = ?", (command_id,)
        ).fetchone()
    assert acked == (None,)


def test_a_compromised_machines_hostile_times_and_ids_break_nothing(
    tmp_path: Path,
    relay: RelayProcess,
    daemons: list[DaemonProcess],
    machine_loop: asyncio.AbstractEventLoop,
) -> None:
    paired = pair(tmp_path, relay, daemons)
    session = paired.run(*agent("Deploy to prod?"))
    _pending_checkpoint(paired, "Deploy to prod?")
    machine_b, controller_card = asyncio.run_coroutine_threadsafe(
        _paired_machine_b(paired), machine_loop
    ).result(timeout=30)
    raised = {"title": "x", "body": "", "default_approve": True, "preview": None}
    # Valid pages whose events are not: refused one by one when applied.
    hostile = _page(
        [
            ("s-evil0001", SessionCreated(("x",), "/", "evil", False, "k-evil")),
            (
                "s-evil0001",
                msgpack.packb(
                    [
                        "session-status",
                        1,
                        {"status": "running\x1b[2K", "exit_code": None, "detail": ""},
                    ]
                ),
            ),
            (
                "s-evil0001",
                msgpack.packb(
                    [
                        "checkpoint-raised",
                        2,
                        {**raised, "checkpoint": "c-1e300", "expires_at": 1e300},
                    ]
                ),
            ),
            (
                "s-evil0001",
                msgpack.packb(
                    [
                        "checkpoint-raised",
                        2,
                        {**raised, "checkpoint": "c-\x1b]52;c;aGk=\x07", "expires_at": 4e9},
                    ]
                ),
            ),
        ]
    )
    plan = Compromised([hostile])
    serving = asyncio.run_coroutine_threadsafe(
        _serve_as_compromised(machine_b, controller_card, plan), machine_loop
    )
    try:
        # Every later call still works, for every machine.
        approvals = run_cli(paired.controller, "approvals")
        assert approvals.returncode == 0, approvals.stderr
        assert plan.served.wait(10), "the controller never synced machine B"
        assert "Deploy to prod?" in approvals.stdout and "\x1b" not in approvals.stdout
        sessions = run_cli(paired.controller, "sessions")
        assert sessions.returncode == 0, sessions.stderr
        assert session in sessions.stdout and "\x1b" not in sessions.stdout
        rows = run_json(paired.controller, "approvals")
        assert [r["title"] for r in rows] == ["Deploy to prod?"]
        evil = [r for r in run_json(paired.controller, "sessions") if r["id"] == "s-evil0001"]
        assert [r["status"] for r in evil] == ["queued"]  # its hostile status was refused

        # A page that does not decode (an infinite time) ends B's channel for this run,
        # without a new handshake and resync that would get the same page, in a loop.
        poisoned = _page([("s-evil0001", Output(OutputStream.STDOUT, b"x"))], first_seq=5)
        object.__setattr__(poisoned.events[0], "at", float("inf"))
        plan.replies = [poisoned]
        plan.served.clear()
        before = plan.handshakes

        async def sync_once() -> tuple[set[bytes], int]:
            # (counted before the agent, off the relay meanwhile, reconnects after)
            async with live_controller(paired.controller) as (_, controller):
                assert controller is not None
                await asyncio.to_thread(plan.served.wait, 20.0)
                live = await controller.wait_live([machine_b.key], within=3.0)
                return live, plan.handshakes

        live, handshakes = asyncio.run(sync_once())
        assert live == set()
        assert handshakes == before + 1
    finally:
        serving.cancel()
        asyncio.run_coroutine_threadsafe(machine_b.close(), machine_loop).result(timeout=10)
