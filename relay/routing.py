"""The live routing table: which key is connected where, and who may reach whom.

Behind :class:`RoutingTable` so a clustered relay can add a table that also looks
at other nodes (through Redis) without touching the endpoint. The embedded
:class:`LocalRoutingTable` is two dicts.

Routing rule (:func:`may_route`): a DATA frame goes from ``a`` to ``b`` only if
(1) both are authenticated members of the same non-empty account and one is a
controller and the other a machine, or (2) a pairing ticket links them (each is the
other's ``ticket_peer``), or (3) a node addresses itself (an echo, which reveals
nothing and lets health checks prove the routing path end to end).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from starmux.control import SessionStatus

from .peer import Peer

_ROUTED = (SessionStatus.CONTROLLER, SessionStatus.MACHINE)


def may_route(source: Peer, destination: Peer) -> bool:
    if source is destination:
        return True  # an echo: /health and `starmux doctor` prove routing this way
    if (
        source.account
        and source.account == destination.account
        and source.status in _ROUTED
        and destination.status in _ROUTED
        and source.status is not destination.status
    ):
        return True
    return source.ticket_peer == destination.key and destination.ticket_peer == source.key


class RoutingTable(Protocol):
    def attach(self, peer: Peer) -> Peer | None:
        """Register ``peer``; returns the connection it replaces (same key), if any."""

    def detach(self, peer: Peer) -> bool:
        """Forget ``peer`` if it is still the live connection for its key."""

    def move_to_account(self, peer: Peer, account: bytes, status: SessionStatus) -> None:
        """A peer just registered or got paired: it joins ``account`` in place."""

    def get(self, key: bytes) -> Peer | None: ...

    def account_peers(self, account: bytes) -> Iterator[Peer]: ...

    def account_controllers(self, account: bytes) -> list[Peer]:
        """The account's online controllers (presence goes to them on every machine
        connect: an index, so a crowd of machines does not cost n² scans)."""

    def counts_by_status(self) -> dict[str, int]: ...

    def peers(self) -> list[Peer]: ...

    def __len__(self) -> int: ...


class LocalRoutingTable:
    def __init__(self) -> None:
        self._by_key: dict[bytes, Peer] = {}
        self._by_account: dict[bytes, dict[bytes, Peer]] = {}
        self._controllers: dict[bytes, dict[bytes, Peer]] = {}

    def attach(self, peer: Peer) -> Peer | None:
        old = self._by_key.get(peer.key)
        if old is not None:
            self.detach(old)
        self._by_key[peer.key] = peer
        if peer.account:
            self._by_account.setdefault(peer.account, {})[peer.key] = peer
            if peer.status is SessionStatus.CONTROLLER:
                self._controllers.setdefault(peer.account, {})[peer.key] = peer
        return old

    def detach(self, peer: Peer) -> bool:
        if self._by_key.get(peer.key) is not peer:
            return False
        del self._by_key[peer.key]
        for index in (self._by_account, self._controllers):
            members = index.get(peer.account)
            if members is not None:
                members.pop(peer.key, None)
                if not members:
                    del index[peer.account]
        return True

    def move_to_account(self, peer: Peer, account: bytes, status: SessionStatus) -> None:
        """A peer just registered or got paired: it joins ``account`` in place."""
        self.detach(peer)
        peer.account = account
        peer.status = status
        self.attach(peer)

    def get(self, key: bytes) -> Peer | None:
        return self._by_key.get(key)

    def account_peers(self, account: bytes) -> Iterator[Peer]:
        return iter(list(self._by_account.get(account, {}).values()))

    def account_controllers(self, account: bytes) -> list[Peer]:
        return list(self._controllers.get(account, {}).values())

    def counts_by_status(self) -> dict[str, int]:
        counts = {status.value: 0 for status in SessionStatus}
        for peer in self._by_key.values():
            counts[peer.status.value] += 1
        return counts

    def peers(self) -> list[Peer]:
        return list(self._by_key.values())

    def __len__(self) -> int:
        return len(self._by_key)
