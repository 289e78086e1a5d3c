"""A peer another relay node holds, as this node's routing table sees it.

Not a connection: no socket, queue or limits here (its node has them); only what
the routing rules read (key, account, status, pairing link), and ``deliver`` and
``close`` that go over the cluster bus to its node (:mod:`relay.cluster_table`).
"""

from __future__ import annotations

from collections import deque

from starmux.close_codes import CloseCode
from starmux.control import SessionStatus

from .bus import ClusterBus, PeerEntry, close_command, cut_command, frame_message, ticket_command
from .metrics import RelayMetrics
from .peer import Peer


def _nothing(_peer: Peer) -> None:
    return None


class RemotePeer(Peer):
    """A peer another node holds. Not a connection: no socket, queue or limits here
    (its node has them); only what routing reads, and ways to reach its node."""

    __slots__ = ("_bus", "_partner", "node")

    def __init__(self, bus: ClusterBus, entry: PeerEntry, metrics: RelayMetrics) -> None:
        # Deliberately not Peer.__init__: there is no WebSocket on this node.
        self.key = entry.key
        self.account = entry.account
        self.status = entry.status
        self.node = entry.node
        self.card = b""
        self.ip = ""
        self.closed = False
        self.queue = deque()
        self.queued_bytes = 0
        self.opened_ticket = None
        self.metrics = metrics
        self.on_close = _nothing
        self._bus = bus
        self._partner: bytes | None = None

    @property
    def ticket_peer(self) -> bytes | None:
        return self._partner

    @ticket_peer.setter
    def ticket_peer(self, partner: bytes | None) -> None:
        """Pairing links are set on both ends at once (requests.open_ticket): the
        holder sets its side and this node's view of the partner."""
        self._partner = partner
        self._bus.send(self.key, ticket_command(partner))

    def deliver(self, data: bytes, received_at: float) -> bool:
        if self._bus.send(self.key, frame_message(data)):
            return True
        self.metrics.drops["bus-down"] += 1
        return False

    def close(self, code: CloseCode, reason: str) -> None:
        # REPLACED: the key connected again here; the old holder goes without an
        # offline announcement, as a replaced local connection does.
        quietly = code is CloseCode.REPLACED
        self._bus.send(
            self.key, close_command(self.node, code, reason, after_flush=False, quietly=quietly)
        )
        self.on_close(self)

    def close_after_flush(self, code: CloseCode, reason: str) -> None:
        self._bus.send(
            self.key, close_command(self.node, code, reason, after_flush=True, quietly=False)
        )

    def cut_off(self, final: bytes, code: CloseCode, reason: str, *, then: bytes = b"") -> None:
        """Unroutable from this node at once (no routed status: :func:`may_route`
        refuses it; the account stays so the table's index finds it to forget it);
        its holder does the same, sends ``final`` then ``then`` as a local peer's
        :meth:`Peer.cut_off` does, and closes."""
        self.status = SessionStatus.UNPAIRED
        self._partner = None
        self._bus.send(self.key, cut_command(final, code, reason, then))

    def close_silently(self) -> None:
        return None

    async def finish(self) -> None:
        return None
