"""The cluster bus: what relay nodes tell each other, behind one small interface.

A node holds the WebSocket connections of some peers; the bus carries, between
nodes (DESIGN.md section 12):

- **Peer messages**, over a channel per peer key, to whichever node holds that
  key: frames to deliver (``b"F"`` + the frame as the peer will receive it) and
  commands to the holding node (``b"C"`` + msgpack: close, set a pairing link,
  join an account). One publish per frame; no registry query. At most once:
  end-to-end sequence numbers and resync make a lost frame harmless.
- **Presence**: every node announces which keys it holds (:class:`PeerEntry`) on
  connect, change and disconnect, keeps them in a per-node snapshot, and refreshes
  a heartbeat with a short TTL; a node whose heartbeat expired is reported gone
  and its peers offline.
- **Revocations and device removals**: appended to one stream each node reads
  from its last id (an entry's ``kind`` says which: :data:`MACHINE_REVOKED`, or
  :data:`DEVICE_REMOVED` for a controller device removed from its account's log).
  A revocation carries the controller's signed statement (``proof``, an encoded
  ``MachineRevocation``, at most :data:`MAX_PROOF` bytes), so whichever node cuts
  the machine off forwards it and the machine forgets its keys.
  The registry (PostgreSQL) is written first and stays the truth; after the bus
  comes back a node re-reads it, so a bus restart loses neither.

:class:`ClusterBus` is the interface (Redis implements it in
:mod:`relay.redis_bus`; NATS could); :class:`BusListener` is what a node does
with what arrives. The message codec below is pure: bytes in, values out.

Ordering: everything one node sends (presence, frames, commands) leaves in the
order it was asked for, and a node subscribes to a peer's channel *before* it
announces the peer. So when another node first hears of a peer, frames addressed
to it already reach its holder, and a frame from a new peer never arrives before
the peer's presence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack

from starmux.control import SessionStatus
from starmux.errors import RemoteProtocolError

FRAME = b"F"
COMMAND = b"C"

# Command kinds (first element of the msgpack array after b"C").
CLOSE = "close"  # [CLOSE, node, code, reason, after_flush, quietly]
TICKET = "ticket"  # [TICKET, partner or b""]: the pairing link of the held key
MOVE = "move"  # [MOVE, account, status]: the held key joined an account
CUT = "cut"  # [CUT, final frame, code, reason, then]: unroutable now (revoked), then closed

# Kinds of revocation-stream entries. An entry without a kind is a machine
# revocation (what nodes before device removal wrote).
MACHINE_REVOKED = b"machine"
DEVICE_REMOVED = b"device"
#: A MachineRevocation is two keys, an account, a float and a signature (~200
#: bytes); anything longer read from the stream is not one.
MAX_PROOF = 1024


@dataclass(frozen=True)
class PeerEntry:
    """One authenticated connection as other nodes see it."""

    key: bytes
    node: str
    account: bytes
    status: SessionStatus

    def encode(self) -> bytes:
        return msgpack.packb([self.key, self.node, self.account, self.status.value])

    @classmethod
    def decode(cls, data: bytes) -> PeerEntry:
        try:
            key, node, account, status = msgpack.unpackb(data)
            entry = cls(bytes(key), str(node), bytes(account), SessionStatus(status))
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise RemoteProtocolError("malformed presence entry on the cluster bus") from exc
        return entry


def frame_message(frame: bytes) -> bytes:
    return FRAME + frame


def close_command(node: str, code: int, reason: str, *, after_flush: bool, quietly: bool) -> bytes:
    """Close the holder's connection. ``node``: only that holder obeys (the key may
    have reconnected elsewhere since). ``quietly``: no offline presence (it was
    replaced by a newer connection of the same key)."""
    return COMMAND + msgpack.packb([CLOSE, node, code, reason, after_flush, quietly])


def ticket_command(partner: bytes | None) -> bytes:
    return COMMAND + msgpack.packb([TICKET, partner or b""])


def move_command(account: bytes, status: SessionStatus) -> bytes:
    return COMMAND + msgpack.packb([MOVE, account, status.value])


def cut_command(final: bytes, code: int, reason: str, then: bytes = b"") -> bytes:
    """Whichever node holds the key takes it out of routing at once, sends ``final``
    (and ``then``, if any: a revoked machine gets the REVOKED notice, then the signed
    revocation, as on one node) and closes (a revocation or a device removal: not
    addressed to one node, unlike :func:`close_command`)."""
    return COMMAND + msgpack.packb([CUT, final, code, reason, then])


def decode_command(message: bytes) -> list[Any]:
    """The command in a peer message that starts with :data:`COMMAND`."""
    try:
        command = msgpack.unpackb(message[1:])
    except (ValueError, msgpack.UnpackException) as exc:
        raise RemoteProtocolError("malformed command on the cluster bus") from exc
    if not isinstance(command, list) or not command or command[0] not in (CLOSE, TICKET, MOVE, CUT):
        raise RemoteProtocolError("unknown command on the cluster bus")
    return command


class BusListener(Protocol):
    """What a node does with what the bus brings. Called on the event loop, in order."""

    def on_peer_message(self, key: bytes, message: bytes) -> None:
        """A message for ``key``, which this node holds (or held a moment ago)."""

    def on_undelivered(self, key: bytes, message: bytes) -> None:
        """Nobody held ``key`` when ``message`` was published to it."""

    def on_presence(self, entry: PeerEntry, online: bool) -> None: ...

    def on_snapshot(self, entries: Sequence[PeerEntry], nodes: Sequence[str] = ()) -> None:
        """Every peer every live node holds, after (re)connecting to the bus; ``nodes``:
        the other live nodes (some may hold nothing)."""

    def on_node_gone(self, node: str) -> None:
        """``node``'s heartbeat expired: it crashed or lost the bus."""

    def on_revocation(self, key: bytes, account: bytes, proof: bytes) -> None:
        """Machine ``key`` was revoked; ``proof``: the signed revocation, or b"" (an
        entry from a node that predates proofs, or one too long to be one)."""

    def on_device_removed(self, key: bytes, account: bytes) -> None:
        """Controller device ``key`` was removed from ``account``'s device log."""

    def on_lost(self) -> None:
        """The bus connection was lost; it is being re-established."""

    async def on_reconnected(self) -> None:
        """The bus is back after an outage: re-read what may have been missed."""


class ClusterBus(Protocol):
    node_id: str

    @property
    def connected(self) -> bool: ...

    @property
    def detail(self) -> str:
        """One line for ``/health``: "ok" or why not."""

    async def start(self, listener: BusListener) -> None:
        """Connect, subscribe, read the snapshot; raises if the bus is unreachable."""

    async def close(self) -> None:
        """Withdraw this node's peers and heartbeat, then disconnect."""

    def hold(self, entry: PeerEntry) -> None:
        """This node now holds ``entry.key`` (or its account/status changed)."""

    def release(self, key: bytes) -> None: ...

    def send(self, key: bytes, message: bytes) -> bool:
        """Queue ``message`` for the holder of ``key``; False if the bus is down."""

    async def append_revocation(self, key: bytes, account: bytes, proof: bytes) -> None: ...

    async def append_device_removal(self, key: bytes, account: bytes) -> None:
        """Like :meth:`append_revocation`, for a removed controller device."""

    def counters(self) -> dict[str, int]:
        """Monotonic counters for ``/metrics`` (published, received, dropped, ...)."""
