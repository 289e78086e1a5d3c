"""The relay's memory for frames waiting to be sent, bounded per peer and in total.

A peer that stops reading must not pin memory: each peer's queue is bounded in
frames and in bytes (its queued frames plus its socket's write buffer, see
:meth:`relay.peer.Peer.deliver`), and :class:`SendBudget` bounds the sum over
every peer. Over the budget the relay sheds the biggest queues first (close 4011):
the peers that hold the most memory are the ones least likely to be reading.

Accounting is incremental on the hot path (an add and a subtract per frame);
the scan over queued peers runs only when the budget is exceeded.
"""

from __future__ import annotations

from typing import Protocol, TypeVar


class Queued(Protocol):
    """What the budget needs from a peer."""

    queued_bytes: int

    def buffered_bytes(self) -> int:
        """Queued frames plus the socket's unsent write buffer."""

    def shed(self) -> None:
        """Close as a slow consumer (4011), freeing the queue."""


Holder = TypeVar("Holder")


class SendBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0  # bytes queued by all peers (write buffers are counted on a scan)
        self.shed_count = 0
        self._holders: set[Queued] = set()

    def added(self, peer: Queued, size: int) -> None:
        if not size:
            return
        self.total += size
        self._holders.add(peer)
        if self.total > self.limit:
            self._shed()

    def removed(self, peer: Queued, size: int) -> None:
        self.total -= size
        if peer.queued_bytes == 0:
            self._holders.discard(peer)

    def _shed(self) -> None:
        sizes = {peer: peer.buffered_bytes() for peer in self._holders}
        for peer in shed_order(sizes, self.limit):
            self.shed_count += 1
            peer.shed()  # clears its queue, which calls removed()


def shed_order(sizes: dict[Holder, int], limit: int) -> list[Holder]:
    """Which holders a budget of ``limit`` sheds: the biggest first, until the rest fit."""
    order = sorted(sizes, key=lambda name: sizes[name], reverse=True)
    total = sum(sizes.values())
    shed = []
    for name in order:
        if total <= limit:
            break
        total -= sizes[name]
        shed.append(name)
    return shed
