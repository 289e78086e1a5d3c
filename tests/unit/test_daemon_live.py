"""The machine's live service as an adapter: a real event log (SQLite file), a real
KK handshake with an in-test controller, and the relay replaced by a list of sent
bodies. It must only pump: answer sync requests from the log, go live, push
commits, reset a channel that fails, re-ack repeated commands."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from starmux.codec import Message
from starmux.daemon.checkpoints import Checkpoints
from starmux.daemon.eventlog import EventLog
from starmux.daemon.live import LiveService
from starmux.daemon.sessions import SessionManager
from starmux.daemon.store import DATABASE_FILE, DaemonStore, PairedController
from starmux.e2e import Kind, unwrap, wrap
from starmux.errors import ConnectionLost
from starmux.identity import NodeKeys, Role
from starmux.live_channel import LiveChannel, finish, initiate
from starmux.messages import (
    APP,
    CancelSession,
    CommandAck,
    CommandEnvelope,
    EventPage,
    SyncRequest,
)
from starmux.resync import PAGE_BYTES

from .deterministic import counter_rng

WAIT = 10.0
RELAY = NodeKeys.generate(counter_rng(b"relay")).sign_public
MACHINE = NodeKeys.generate(counter_rng(b"machine"))
CONTROLLER = NodeKeys.generate(counter_rng(b"controller"))


@dataclass
class Relay:
    """Stands in for the relay link: what the service sent, and to whom."""

    sent: list[tuple[bytes, bytes]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, peer: bytes, body: bytes) -> None:
        self.sent.append((peer, body))
        self.changed.set()

    async def next(self) -> tuple[Kind, bytes]:
        async with asyncio.timeout(WAIT):
            while not self.sent:
                self.changed.clear()
                await self.changed.wait()
        peer, body = self.sent.pop(0)
        assert peer == CONTROLLER.sign_public
        return unwrap(body)


@dataclass
class Machine:
    log: EventLog
    live: LiveService
    relay: Relay
    channel: LiveChannel | None = None

    async def connect(self) -> None:
        hs, first = initiate(CONTROLLER, MACHINE.card(Role.MACHINE, "box"), relay_key=RELAY)
        await self.live.on_data(CONTROLLER.sign_public, first)
        kind, reply = await self.relay.next()
        assert kind is Kind.SESSION_HANDSHAKE
        self.channel = finish(hs, reply)

    async def send(self, message: Message) -> None:
        assert self.channel is not None
        await self.live.on_data(CONTROLLER.sign_public, self.channel.seal(message))

    async def receive(self) -> Message:
        kind, payload = await self.relay.next()
        assert kind is Kind.SESSION_TRANSPORT and self.channel is not None
        return self.channel.open(payload)

    async def page(self) -> EventPage:
        message = await self.receive()
        assert isinstance(message, EventPage)
        return message

    async def append(self, count: int, *, size: int = 100) -> None:
        for n in range(count):
            await self.log.append("s-1", bytes([n % 256]) * size, at=float(n))


@pytest.fixture
async def machine(tmp_path: Path) -> AsyncIterator[Machine]:
    store = DaemonStore(tmp_path)
    await store.open()
    log = await EventLog.open(tmp_path / DATABASE_FILE)
    card = CONTROLLER.card(Role.CONTROLLER, "laptop")
    await store.add_controller(PairedController(CONTROLLER.sign_public, card, b"a" * 16, b"", 0, 0))
    sessions = SessionManager(log, allowed_roots=[tmp_path], api_socket=tmp_path / "api.sock")
    checkpoints = Checkpoints(log, sessions, store, machine_key=MACHINE.sign_public)
    live = LiveService(
        keys=MACHINE,
        card=MACHINE.card(Role.MACHINE, "box"),
        store=store,
        log=log,
        sessions=sessions,
        checkpoints=checkpoints,
    )
    relay = Relay()
    live.attach(relay.send, RELAY)
    try:
        yield Machine(log, live, relay)
    finally:
        live.close()
        await log.close()
        await store.close()


async def test_sync_pages_from_the_cursor_then_pushes_commits(machine: Machine) -> None:
    await machine.append(3, size=PAGE_BYTES // 2 - 100)  # two fit one page, three do not
    await machine.connect()
    await machine.send(SyncRequest("", 0, 1000))
    first = await machine.page()
    assert [e.seq for e in first.events] == [1, 2] and first.more and not first.live
    await machine.append(1)  # committed while syncing: not pushed, paged
    assert not machine.relay.sent
    await machine.send(SyncRequest(first.epoch, 2, 1000))
    last = await machine.page()
    assert [e.seq for e in last.events] == [3, 4] and not last.more
    await machine.append(2)  # two commits: pushed (as one page if both were queued)
    pushed = [await machine.page()]
    while pushed[-1].events[-1].seq < 6:
        pushed.append(await machine.page())
    assert all(p.live for p in pushed)
    assert [e.seq for p in pushed for e in p.events] == [5, 6]


async def test_a_wiped_log_answers_from_the_start_of_its_epoch(machine: Machine) -> None:
    await machine.append(2)
    await machine.connect()
    await machine.send(SyncRequest("ffffffffffffffff", 7, 1000))
    page = await machine.page()
    assert page.epoch == machine.log.epoch and [e.seq for e in page.events] == [1, 2]


async def test_a_message_that_fails_to_decrypt_resets_the_channel(machine: Machine) -> None:
    await machine.connect()
    await machine.live.on_data(CONTROLLER.sign_public, wrap(Kind.SESSION_TRANSPORT, b"x" * 40))
    assert await machine.relay.next() == (Kind.SESSION_RESET, b"")
    assert CONTROLLER.sign_public not in machine.live.peers
    # Anything more on the dead channel is answered with a reset, not acted on.
    await machine.send(SyncRequest("", 0, 10))
    assert await machine.relay.next() == (Kind.SESSION_RESET, b"")


async def test_a_stranger_gets_no_channel(machine: Machine) -> None:
    stranger = NodeKeys.generate(counter_rng(b"stranger"))
    _, first = initiate(stranger, MACHINE.card(Role.MACHINE, "box"), relay_key=RELAY)
    await machine.live.on_data(stranger.sign_public, first)
    assert not machine.relay.sent and not machine.live.peers
    audit = await machine.live.store.audit_log()
    assert [a[1] for a in audit] == ["handshake.refused"]


async def test_a_repeated_command_is_acked_with_its_first_result(machine: Machine) -> None:
    await machine.connect()
    envelope = CommandEnvelope("k-1", APP.encode(CancelSession("s-none")))
    await machine.send(envelope)
    first = await machine.receive()
    assert isinstance(first, CommandAck) and not first.ok and "not running" in first.error
    await machine.send(envelope)
    assert await machine.receive() == first


async def test_a_connection_lost_while_answering_a_handshake_is_not_fatal(
    machine: Machine,
) -> None:
    """The relay connection can die between a controller's handshake arriving and the
    answer going out (a link that came back as the keepalive gave up on it). The
    daemon's event loop must then see the connection's Closed event and reconnect; an
    exception out of on_data would end the daemon instead."""

    async def dead(peer: bytes, body: bytes) -> None:
        raise ConnectionLost("the relay connection closed")

    machine.live.attach(dead, RELAY)
    _, first = initiate(CONTROLLER, MACHINE.card(Role.MACHINE, "box"), relay_key=RELAY)
    await machine.live.on_data(CONTROLLER.sign_public, first)
    assert machine.live.peers == {}  # no channel stands on a connection that is gone
