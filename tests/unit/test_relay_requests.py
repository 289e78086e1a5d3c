"""The relay's control-request handlers and its routing rule, without a socket: real
handlers against a real SQLite registry and the real routing table; peers write to
an in-memory socket that records frames and closes (waited for on events)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from starmux.close_codes import CloseCode
from starmux.codec import Message
from starmux.control import (
    CONTROL,
    AccountRegistered,
    CreateTicket,
    GrantMachine,
    ListMachines,
    MachineGranted,
    MachineList,
    MachineRevocation,
    MachineRevoked,
    Notice,
    NoticeEvent,
    OpenTicket,
    Presence,
    RegisterAccount,
    ReportPairingFailure,
    RevokeMachine,
    SessionStatus,
    TicketCreated,
    TicketOpened,
)
from starmux.frames import Frame, FrameType, parse_frame
from starmux.identity import NodeKeys, Role
from starmux.relay.config import Limits, RelayConfig
from starmux.relay.metrics import RelayMetrics
from starmux.relay.peer import Peer
from starmux.relay.ratelimit import FrameLimiter
from starmux.relay.registry import RegistryError
from starmux.relay.requests import HANDLERS, token_hash
from starmux.relay.routing import LocalRoutingTable, may_route
from starmux.relay.sqlite_registry import SqliteRegistry
from starmux.relay.state import RelayState
from starmux.relay_auth import grant_transcript, revoke_transcript

from .deterministic import counter_rng

T0 = 1_700_000_000.0
WAIT = 10.0  # only a broken handler ever waits this long


class MemorySocket:
    """What a Peer writes to: frames and the close, recorded; waiters woken."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.closed: tuple[int, str] | None = None
        self.changed = asyncio.Event()

    async def send_bytes(self, data: bytes) -> None:
        self.frames.append(parse_frame(data))
        self.changed.set()

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)
        self.changed.set()

    async def until(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT):
            while not done():
                self.changed.clear()
                await self.changed.wait()


@dataclasses.dataclass
class Node:
    keys: NodeKeys
    peer: Peer
    socket: MemorySocket

    async def messages(self, count: int) -> list[tuple[FrameType, bytes, Message]]:
        await self.socket.until(lambda: len(self.socket.frames) >= count)
        return [(f.type, f.peer, CONTROL.decode(f.body)) for f in self.socket.frames]


class Relay:
    def __init__(self, state: RelayState) -> None:
        self.state = state
        self.now = T0
        state.clock = lambda: self.now
        self._names = itertools.count()

    def node(self, role: Role, status: SessionStatus, *, account: bytes = b"") -> Node:
        keys = NodeKeys.generate(counter_rng(b"node %d" % next(self._names)))
        socket = MemorySocket()
        peer = Peer(
            socket,  # type: ignore[arg-type]
            key=keys.sign_public,
            card=keys.card(role, f"{role.value}-{keys.fingerprint[:4]}").encode(),
            status=status,
            account=account,
            ip="192.0.2.1",
            max_queue=64,
            max_queue_bytes=1 << 30,
            budget=self.state.send_budget,
            direct=None,
            limiter=FrameLimiter(1e9, 1e9, 1e9, 1e9),
            metrics=self.state.metrics,
            on_close=lambda p: None,
        )
        self.state.table.attach(peer)
        return Node(keys, peer, socket)

    async def ask(self, node: Node, request: Message) -> Message:
        return await HANDLERS[type(request)](self.state, node.peer, request)

    async def controller(self) -> Node:
        node = self.node(Role.CONTROLLER, SessionStatus.UNREGISTERED)
        await self.ask(node, RegisterAccount(1, ""))
        return node

    async def paired(self) -> tuple[Node, Node]:
        """A registered controller and a machine it paired (both connected)."""
        controller = await self.controller()
        machine = self.node(Role.MACHINE, SessionStatus.UNPAIRED)
        ticket = await self.ask(machine, CreateTicket(1))
        assert isinstance(ticket, TicketCreated)
        await self.ask(controller, OpenTicket(2, ticket.ticket))
        granted = await self.ask(controller, grant(controller, machine, ticket.ticket))
        assert granted == MachineGranted(3, machine.peer.key)
        return controller, machine


def grant(
    controller: Node, machine: Node, ticket: bytes, *, by: Node | None = None
) -> GrantMachine:
    card = machine.peer.card
    signer = by or controller
    signature = signer.keys.sign(grant_transcript(controller.peer.account, card, T0))
    return GrantMachine(3, ticket, card, T0, signature)


def revoke(controller: Node, machine_key: bytes, *, by: Node | None = None) -> RevokeMachine:
    signer = by or controller
    signature = signer.keys.sign(revoke_transcript(controller.peer.account, machine_key, T0))
    return RevokeMachine(4, machine_key, T0, signature)


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[Relay]:
    registry = SqliteRegistry(tmp_path / "relay.db")
    await registry.open()
    keys = NodeKeys.generate(counter_rng(b"relay"))
    config = RelayConfig(
        data_dir=tmp_path, open_registration=True, limits=Limits(pairing_requests_per_minute=5)
    )
    state = RelayState(
        config=config,
        registry=registry,
        table=LocalRoutingTable(),
        keys=keys,
        card=keys.card(Role.RELAY, "relay"),
        probe_keys=NodeKeys.generate(counter_rng(b"probe")),
        metrics=RelayMetrics(),
    )
    try:
        yield Relay(state)
    finally:
        await registry.close()


async def refused(relay: Relay, node: Node, request: Message) -> str:
    with pytest.raises(RegistryError) as caught:
        await relay.ask(node, request)
    return caught.value.code


# --- registration -----------------------------------------------------------------------


async def test_open_registration_makes_an_account_of_one_controller(relay: Relay) -> None:
    node = relay.node(Role.CONTROLLER, SessionStatus.UNREGISTERED)
    reply = await relay.ask(node, RegisterAccount(7, ""))
    assert isinstance(reply, AccountRegistered) and reply.request_id == 7
    assert node.peer.status is SessionStatus.CONTROLLER and node.peer.account == reply.account
    assert relay.state.table.account_controllers(reply.account) == [node.peer]
    assert await refused(relay, node, RegisterAccount(8, "")) == "forbidden"


async def test_a_closed_relay_needs_a_valid_unused_token(relay: Relay) -> None:
    relay.state.config = dataclasses.replace(relay.state.config, open_registration=False)
    good, wrong = "g" * 24, "w" * 24  # the shape new_registration_token makes
    await relay.state.registry.add_registration_token(token_hash(good), now=T0)
    first = relay.node(Role.CONTROLLER, SessionStatus.UNREGISTERED)
    assert await refused(relay, first, RegisterAccount(1, "")) == "bad-token"
    assert await refused(relay, first, RegisterAccount(2, wrong)) == "bad-token"
    # Not even the shape of a token: refused before the registry is asked.
    assert await refused(relay, first, RegisterAccount(2, "good")) == "bad-token"
    assert relay.state.metrics.refused["malformed-token"] == 1
    assert isinstance(await relay.ask(first, RegisterAccount(3, good)), AccountRegistered)
    second = relay.node(Role.CONTROLLER, SessionStatus.UNREGISTERED)
    assert await refused(relay, second, RegisterAccount(4, good)) == "bad-token"
    assert second.peer.status is SessionStatus.UNREGISTERED


# --- tickets ----------------------------------------------------------------------------


async def test_only_an_unpaired_machine_gets_tickets_and_not_too_many(relay: Relay) -> None:
    controller = await relay.controller()
    assert await refused(relay, controller, CreateTicket(1)) == "forbidden"
    machine = relay.node(Role.MACHINE, SessionStatus.UNPAIRED)
    for request_id in range(5):
        reply = await relay.ask(machine, CreateTicket(request_id))
        assert isinstance(reply, TicketCreated)
        assert reply.expires_at == T0 + relay.state.config.limits.ticket_ttl
    assert await refused(relay, machine, CreateTicket(9)) == "rate-limited"
    relay.now += 60.0  # a new window
    assert isinstance(await relay.ask(machine, CreateTicket(10)), TicketCreated)


async def test_opening_a_ticket_links_exactly_that_controller_and_machine(relay: Relay) -> None:
    controller = await relay.controller()
    machine = relay.node(Role.MACHINE, SessionStatus.UNPAIRED)
    ticket = await relay.ask(machine, CreateTicket(1))
    assert isinstance(ticket, TicketCreated)
    assert await refused(relay, machine, OpenTicket(2, ticket.ticket)) == "forbidden"
    assert not may_route(controller.peer, machine.peer)
    opened = await relay.ask(controller, OpenTicket(3, ticket.ticket))
    assert opened == TicketOpened(3, machine.peer.key)
    assert may_route(controller.peer, machine.peer) and may_route(machine.peer, controller.peer)
    other = await relay.controller()
    assert await refused(relay, other, OpenTicket(4, ticket.ticket)) == "taken"
    assert not may_route(other.peer, machine.peer)


async def test_a_ticket_of_a_machine_that_went_away_is_offline(relay: Relay) -> None:
    controller = await relay.controller()
    machine = relay.node(Role.MACHINE, SessionStatus.UNPAIRED)
    ticket = await relay.ask(machine, CreateTicket(1))
    assert isinstance(ticket, TicketCreated)
    relay.state.table.detach(machine.peer)
    assert await refused(relay, controller, OpenTicket(2, ticket.ticket)) == "offline"
    assert controller.peer.ticket_peer is None


async def test_enough_failures_burn_the_ticket_and_cut_the_link(relay: Relay) -> None:
    controller = await relay.controller()
    assert await refused(relay, controller, ReportPairingFailure(1, b"t" * 16)) == "forbidden"
    machine = relay.node(Role.MACHINE, SessionStatus.UNPAIRED)
    ticket = await relay.ask(machine, CreateTicket(1))
    assert isinstance(ticket, TicketCreated)
    await relay.ask(controller, OpenTicket(2, ticket.ticket))
    for request_id in range(relay.state.config.limits.ticket_max_failures - 1):
        assert may_route(controller.peer, machine.peer)
        await relay.ask(controller, ReportPairingFailure(request_id, ticket.ticket))
        # A failure ends its attempt: the link is cut, and the other end's report of
        # the same failure is refused (each failure counts once).
        assert not may_route(controller.peer, machine.peer)
        report = ReportPairingFailure(request_id, ticket.ticket)
        assert await refused(relay, machine, report) == "forbidden"
        await relay.ask(controller, OpenTicket(20 + request_id, ticket.ticket))
    await relay.ask(machine, ReportPairingFailure(9, ticket.ticket))
    assert controller.peer.ticket_peer is None and machine.peer.ticket_peer is None
    assert not may_route(controller.peer, machine.peer)
    assert await refused(relay, controller, OpenTicket(10, ticket.ticket)) == "burnt"
    # The machine is told its code is dead, so it can show a fresh one at once.
    [(kind, _, notice)] = await machine.messages(1)
    assert kind is FrameType.NOTICE
    assert notice == Notice(NoticeEvent.TICKET_BURNT, ticket.ticket, b"", 0.0)


# --- grants and revocation --------------------------------------------------------------


async def test_a_grant_pairs_the_machine_and_announces_it(relay: Relay) -> None:
    controller, machine = await relay.paired()
    assert machine.peer.status is SessionStatus.MACHINE
    assert machine.peer.account == controller.peer.account
    assert machine.peer.ticket_peer is None and controller.peer.ticket_peer is None
    assert may_route(controller.peer, machine.peer)
    [(kind, _, notice)] = await machine.messages(1)
    assert kind is FrameType.NOTICE and isinstance(notice, Notice)
    assert (notice.event, notice.subject) == (NoticeEvent.PAIRED, controller.peer.key)
    [(kind, about, presence)] = await controller.messages(1)
    assert kind is FrameType.PRESENCE and about == machine.peer.key
    assert isinstance(presence, Presence) and presence.online
    listing = await relay.ask(controller, ListMachines(5))
    assert isinstance(listing, MachineList)
    assert [(m.machine_key, m.online) for m in listing.machines] == [(machine.peer.key, True)]


async def test_a_grant_that_does_not_verify_is_refused(relay: Relay) -> None:
    controller = await relay.controller()
    machine = relay.node(Role.MACHINE, SessionStatus.UNPAIRED)
    ticket = await relay.ask(machine, CreateTicket(1))
    assert isinstance(ticket, TicketCreated)
    await relay.ask(controller, OpenTicket(2, ticket.ticket))
    stranger = relay.node(Role.CONTROLLER, SessionStatus.UNREGISTERED)
    forged = grant(controller, machine, ticket.ticket, by=stranger)
    assert await refused(relay, controller, forged) == "bad-grant"
    not_a_machine = dataclasses.replace(
        grant(controller, machine, ticket.ticket), machine_card=controller.peer.card
    )
    assert await refused(relay, controller, not_a_machine) == "bad-grant"
    assert await refused(relay, machine, grant(controller, machine, ticket.ticket)) == "forbidden"
    assert machine.peer.status is SessionStatus.UNPAIRED
    assert await relay.state.registry.machine(machine.peer.key) is None


async def test_revocation_tells_the_machine_and_every_controller_then_closes_it(
    relay: Relay,
) -> None:
    controller, machine = await relay.paired()
    await machine.messages(1)
    await controller.messages(1)
    # A second controller of the same account, connected.
    other = relay.node(Role.CONTROLLER, SessionStatus.CONTROLLER, account=controller.peer.account)
    forged = revoke(controller, machine.peer.key, by=other)
    assert await refused(relay, controller, forged) == "bad-revocation"
    assert await refused(relay, controller, revoke(controller, b"x" * 32)) == "unknown-machine"
    reply = await relay.ask(controller, revoke(controller, machine.peer.key))
    assert reply == MachineRevoked(4, machine.peer.key)
    # Unroutable at once, before its notice is even written.
    assert relay.state.table.get(machine.peer.key) is None
    assert not may_route(controller.peer, machine.peer)
    # Controllers see it go offline (it left the table first), then why.
    for node, count in ((machine, 3), (controller, 3), (other, 2)):
        messages = await node.messages(count)
        if node is machine:
            # After the notice, the controller's signed revoke, forwarded as is (11.8).
            proof = messages.pop()[2]
            assert isinstance(proof, MachineRevocation)
            assert (proof.machine_key, proof.revoked_by) == (
                machine.peer.key,
                controller.peer.key,
            )
        notice = messages[-1][2]
        assert isinstance(notice, Notice) and notice.event is NoticeEvent.REVOKED
        assert notice.subject == machine.peer.key
        if node is not machine:
            assert messages[-2][2] == Presence(False, T0)
    await machine.socket.until(lambda: machine.socket.closed is not None)
    assert machine.socket.closed == (CloseCode.REVOKED, "revoked")
    assert await relay.state.registry.is_revoked(machine.peer.key)


async def test_only_controllers_list_machines_and_offline_ones_say_so(relay: Relay) -> None:
    controller, machine = await relay.paired()
    assert await refused(relay, machine, ListMachines(1)) == "forbidden"
    relay.state.table.detach(machine.peer)
    listing = await relay.ask(controller, ListMachines(2))
    assert isinstance(listing, MachineList)
    assert [m.online for m in listing.machines] == [False]


# --- may_route --------------------------------------------------------------------------

ACCOUNT, OTHER = b"A" * 16, b"B" * 16
S = SessionStatus


@pytest.mark.parametrize(
    ("a", "b", "allowed"),
    [
        ((S.CONTROLLER, ACCOUNT), (S.MACHINE, ACCOUNT), True),
        ((S.MACHINE, ACCOUNT), (S.CONTROLLER, ACCOUNT), True),
        ((S.CONTROLLER, ACCOUNT), (S.CONTROLLER, ACCOUNT), False),
        ((S.MACHINE, ACCOUNT), (S.MACHINE, ACCOUNT), False),
        ((S.CONTROLLER, ACCOUNT), (S.MACHINE, OTHER), False),
        ((S.CONTROLLER, b""), (S.MACHINE, b""), False),
        ((S.CONTROLLER, ACCOUNT), (S.UNPAIRED, b""), False),
        ((S.UNREGISTERED, b""), (S.UNPAIRED, b""), False),
        ((S.UNPAIRED, ACCOUNT), (S.CONTROLLER, ACCOUNT), False),
    ],
)
async def test_may_route_by_account_and_role(
    relay: Relay,
    a: tuple[SessionStatus, bytes],
    b: tuple[SessionStatus, bytes],
    allowed: bool,
) -> None:
    source = relay.node(Role.CONTROLLER, a[0], account=a[1]).peer
    destination = relay.node(Role.MACHINE, b[0], account=b[1]).peer
    assert may_route(source, destination) is allowed


async def test_may_route_through_a_ticket_only_both_ways_and_to_oneself(relay: Relay) -> None:
    controller = relay.node(Role.CONTROLLER, S.CONTROLLER, account=ACCOUNT).peer
    machine = relay.node(Role.MACHINE, S.UNPAIRED).peer
    third = relay.node(Role.MACHINE, S.UNPAIRED).peer
    controller.ticket_peer = machine.key
    assert not may_route(controller, machine)  # one side alone is not a link
    machine.ticket_peer = controller.key
    assert may_route(controller, machine) and may_route(machine, controller)
    assert not may_route(third, machine) and not may_route(machine, third)
    assert may_route(third, third)  # an echo
