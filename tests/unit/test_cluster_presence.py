"""ClusterRoutingTable's presence bookkeeping after a bus outage, without Redis: the
interleaving the cluster test meets only by chance (both nodes back on an empty Redis
at once, each snapshot taken before the other node wrote its own)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

from starmux.control import CONTROL, Presence, SessionStatus
from starmux.frames import FrameType, parse_frame
from starmux.relay.bus import FRAME, PeerEntry
from starmux.relay.cluster_table import ClusterRoutingTable
from starmux.relay.metrics import RelayMetrics

ACCOUNT = b"a" * 16
OWNER, RETURNS, STAYS = b"o" * 32, b"r" * 32, b"s" * 32


@dataclass
class LocalController:
    """What the table reads of a local connection, and the frames it is sent."""

    key: bytes = OWNER
    account: bytes = ACCOUNT
    status: SessionStatus = SessionStatus.CONTROLLER
    heard: list[tuple[bytes, bool]] = field(default_factory=list)

    def deliver(self, data: bytes, _received_at: float) -> bool:
        frame = parse_frame(data)
        assert frame.type is FrameType.PRESENCE
        message = CONTROL.decode(frame.body)
        assert isinstance(message, Presence)
        self.heard.append((frame.peer, message.online))
        return True


def node_a() -> tuple[ClusterRoutingTable, LocalController]:
    table = ClusterRoutingTable(cast(Any, object()), cast(Any, None))
    table._state = cast(Any, SimpleNamespace(clock=lambda: 1.0, metrics=RelayMetrics()))
    owner = LocalController()
    table._local.attach(cast(Any, owner))
    return table, owner


def machine(key: bytes, node: str = "b") -> PeerEntry:
    return PeerEntry(key, node, ACCOUNT, SessionStatus.MACHINE)


def test_a_peer_first_heard_from_a_node_the_snapshot_missed_is_told() -> None:
    table, owner = node_a()
    table.on_snapshot([], [])  # node B had not written its peers yet
    table.on_presence(machine(RETURNS), True)  # B re-announces: came during the outage
    assert owner.heard == [(RETURNS, True)]


def test_a_known_nodes_announcement_is_not_said_twice() -> None:
    table, owner = node_a()
    table.on_snapshot([machine(STAYS)], ["b"])
    assert owner.heard == [(STAYS, True)]  # new since the last snapshot
    owner.heard.clear()
    # In normal operation node B tells our controllers itself (over the bus); the
    # directory update must not make them hear "online" a second time.
    table.on_presence(machine(RETURNS), True)
    assert owner.heard == []


@dataclass
class Sent:
    """The bus, as far as a remote peer's ``deliver`` uses it."""

    messages: list[tuple[bytes, bytes]] = field(default_factory=list)

    def send(self, key: bytes, message: bytes) -> bool:
        self.messages.append((key, message))
        return True


def test_our_reannouncement_reaches_a_controller_whose_node_shows_up_later() -> None:
    bus = Sent()
    table = ClusterRoutingTable(cast(Any, bus), cast(Any, None))
    table._state = cast(Any, SimpleNamespace(clock=lambda: 1.0, metrics=RelayMetrics()))
    came = LocalController(RETURNS, status=SessionStatus.MACHINE)
    table._local.attach(cast(Any, came))
    table._unsent = {RETURNS: (ACCOUNT, SessionStatus.MACHINE)}  # came during the outage
    table.on_snapshot([], [])  # the owner's node had not written its peers yet
    table._reannounce()  # nobody to tell yet
    assert bus.messages == []
    owner = PeerEntry(OWNER, "a", ACCOUNT, SessionStatus.CONTROLLER)
    table.on_presence(owner, True)  # its node shows up: the owner hears it now
    [(to, message)] = bus.messages
    assert to == OWNER
    assert message.startswith(FRAME)
    frame = parse_frame(message[len(FRAME) :])
    assert frame.peer == RETURNS and CONTROL.decode(frame.body) == Presence(True, 1.0)
