"""The clustered routing table: local connections plus the peers other nodes hold.

This is the injection point for the cluster: :class:`ClusterRoutingTable`
implements :class:`relay.routing.RoutingTable`, so the endpoint and the request
handlers route, pair, revoke and announce presence exactly as on one node. A peer
held elsewhere is a :class:`relay.remote_peer.RemotePeer`: the same attributes the
routing rules read (key, account, status, pairing link), and ``deliver``/``close``
that go over the bus to its node. So :func:`relay.routing.may_route`, the limits,
ERROR frames and close codes are the same code for local and remote peers:

- the sender's node checks ``may_route`` against its view of the remote peer and
  answers ERROR at once if refused; a frame that reached nobody (the peer left, its
  node died) comes back as :meth:`on_undelivered` and becomes the same ERROR;
- the holder's node checks ``may_route`` again against its own, authoritative
  view of the destination (a pairing link may have just changed) before queueing;
- flood and size limits are applied where the frame enters (the sender's
  connection), send-queue limits where it leaves (the receiver's), as on one node.

Presence: the holder announces its machines to every controller of the account
(local ones directly, remote ones through their proxies); when a node's heartbeat
expires, every other node tells *its own* controllers that the dead node's
machines are offline. What crossed nodes while the bus was out (presence,
``devices-changed``) is said again when it is back: see :meth:`on_snapshot`,
:meth:`on_presence` and :meth:`on_reconnected`.

Revocation and device removal: the registry (PostgreSQL) is written first, then
the key is appended to the bus's revocation stream; a node reading it cuts the
machine (REVOKED notice, the controller's signed revocation stored with it, close
4003) or the removed controller device (``device-removed`` notice, close 4004)
off if it holds it. The node that took
the request also cuts the peer off directly when it sees it online elsewhere (a
command to its holder: one publish, no wait for the stream); whichever arrives
second finds nothing left to do. After the bus or the registry comes back, a
node asks the registry which of its machines are revoked and which of its
devices removed, so an entry lost with a Redis restart changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence

from starmux.close_codes import CloseCode
from starmux.control import (
    CONTROL,
    FailureCode,
    MachineRevocation,
    Notice,
    NoticeEvent,
    Presence,
    RouteError,
    SessionStatus,
)
from starmux.errors import RemoteProtocolError
from starmux.frames import PEER_KEY_SIZE, FrameType, encode_frame

from .bus import (
    CLOSE,
    CUT,
    FRAME,
    MAX_PROOF,
    TICKET,
    ClusterBus,
    PeerEntry,
    decode_command,
    frame_message,
    move_command,
)
from .device_requests import cut_off as cut_off_device
from .peer import Peer
from .pg_registry import PostgresRegistry
from .registry import RegistryError
from .remote_peer import RemotePeer
from .requests import announce_presence
from .routing import LocalRoutingTable, may_route
from .state import RelayState

log = logging.getLogger("starmux.relay.cluster")

REGISTRY_CHECK_INTERVAL = 1.0
SAID_OFFLINE_SECONDS = 60.0
LOSS_MARGIN_SECONDS = 5.0  # detection lag plus clock skew between nodes
_DATA_HEAD = encode_frame(FrameType.DATA, b"\0" * PEER_KEY_SIZE, b"")[:4]
_SOURCE = slice(len(_DATA_HEAD), len(_DATA_HEAD) + PEER_KEY_SIZE)
_UNREACHABLE = CONTROL.encode(RouteError(FailureCode.UNREACHABLE, "no such peer online for you"))


def _proves(proof: bytes, key: bytes, account: bytes) -> bool:
    """``proof`` is a revocation of ``key`` in ``account`` (the stream and the
    registry are trusted as far as that; the signature is the machine's to check)."""
    if not proof or len(proof) > MAX_PROOF:
        return False
    try:
        message = CONTROL.decode(proof)
    except RemoteProtocolError:
        return False
    return (
        isinstance(message, MachineRevocation)
        and message.machine_key == key
        and message.account == account
    )


class ClusterRoutingTable:
    """:class:`relay.routing.RoutingTable` across nodes; also the bus's listener."""

    def __init__(self, bus: ClusterBus, registry: PostgresRegistry) -> None:
        self.bus = bus
        self.registry = registry
        self.registry_up = True
        self.registry_detail = "ok"
        self._local = LocalRoutingTable()
        self._remote: dict[bytes, RemotePeer] = {}
        self._remote_by_account: dict[bytes, dict[bytes, RemotePeer]] = {}
        self._state: RelayState | None = None
        self._private: set[bytes] = set()  # keys never announced (the health probe)
        self._watch: asyncio.Task[None] | None = None
        self.revocations_applied = 0
        self.device_removals_applied = 0
        # Presence lost with the bus, to be said again when it is back (see
        # on_reconnected): local peers that came or went while it was out (key →
        # account, status), and remote peers this node's controllers were told went
        # offline because their node vanished from the bus (key → node, when).
        self._unsent: dict[bytes, tuple[bytes, SessionStatus]] = {}
        self._bus_lost_at: float | None = None
        self._said_offline: dict[bytes, tuple[str, float]] = {}
        # The other nodes this node's directory has heard of (last snapshot, then
        # presence): presence from any other node is news the snapshot never had.
        self._nodes: set[str] = set()
        #: what the last re-announcement said (see :meth:`_reannounce`), and when
        self._reannounced: tuple[dict[bytes, tuple[bytes, SessionStatus]], float] = ({}, 0.0)

    # --- lifecycle ---------------------------------------------------------------
    async def start(self, state: RelayState) -> None:
        self._state = state
        self._private = {state.probe_keys.sign_public}
        self.registry.on_revoked = self.bus.append_revocation
        self.registry.on_device_removed = self.bus.append_device_removal
        await self.bus.start(self)
        self._watch = asyncio.get_running_loop().create_task(self._watch_registry())

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(BaseException):
                await self._watch
        await self.bus.close()

    @property
    def state(self) -> RelayState:
        assert self._state is not None, "ClusterRoutingTable.start() was not called"
        return self._state

    def health(self) -> tuple[bool, str, str]:
        """(healthy, what /health may say publicly, the full reason for the log)."""
        if not self.bus.connected:
            return False, "this node cannot reach the cluster bus", self.bus.detail
        if not self.registry_up:
            return False, "this node cannot reach the registry", self.registry_detail
        return True, "ok", "ok"

    # --- RoutingTable ------------------------------------------------------------
    def attach(self, peer: Peer) -> Peer | None:
        replaced = self._local.attach(peer)
        elsewhere = self._forget(peer.key)
        if elsewhere is not None and elsewhere.status is SessionStatus.MACHINE:
            # Its old connection went with another node (often a dead one not yet
            # detected). Controllers hear "offline" before the endpoint announces the
            # new connection: a controller keeps its channel across an "online" for a
            # machine it believes online, and the machine's end of it is gone.
            self._tell_controllers(elsewhere, online=False, local_only=False)
        self._announce(peer)
        self._said_offline.pop(peer.key, None)  # the endpoint announces it now
        self._note_unsent(peer)
        return replaced or elsewhere

    def detach(self, peer: Peer) -> bool:
        if not self._local.detach(peer):
            return False
        if peer.key not in self._private:
            self.bus.release(peer.key)
        self._note_unsent(peer)
        return True

    def _note_unsent(self, peer: Peer) -> None:
        if not self.bus.connected and peer.key not in self._private:
            self._unsent[peer.key] = (peer.account, peer.status)

    def move_to_account(self, peer: Peer, account: bytes, status: SessionStatus) -> None:
        if isinstance(peer, RemotePeer):
            self._forget(peer.key)
            peer.account, peer.status = account, status
            self._remember(peer)
            self.bus.send(peer.key, move_command(account, status))
            return
        self._local.move_to_account(peer, account, status)
        self._announce(peer)
        self._note_unsent(peer)

    def get(self, key: bytes) -> Peer | None:
        return self._local.get(key) or self._remote.get(key)

    def account_peers(self, account: bytes) -> Iterator[Peer]:
        remote = list(self._remote_by_account.get(account, {}).values())
        return iter([*self._local.account_peers(account), *remote])

    def account_controllers(self, account: bytes) -> list[Peer]:
        remote = [
            p
            for p in self._remote_by_account.get(account, {}).values()
            if p.status is SessionStatus.CONTROLLER
        ]
        return [*self._local.account_controllers(account), *remote]

    def counts_by_status(self) -> dict[str, int]:
        return self._local.counts_by_status()

    def peers(self) -> list[Peer]:
        return self._local.peers()

    def __len__(self) -> int:
        return len(self._local)

    @property
    def remote_count(self) -> int:
        return len(self._remote)

    # --- directory of remote peers -----------------------------------------------
    def _announce(self, peer: Peer) -> None:
        if peer.key not in self._private:
            self.bus.hold(PeerEntry(peer.key, self.bus.node_id, peer.account, peer.status))

    def _remember(self, proxy: RemotePeer) -> None:
        self._remote[proxy.key] = proxy
        if proxy.account:
            self._remote_by_account.setdefault(proxy.account, {})[proxy.key] = proxy

    def _forget(self, key: bytes) -> RemotePeer | None:
        proxy = self._remote.pop(key, None)
        if proxy is not None and proxy.account:
            members = self._remote_by_account.get(proxy.account)
            if members is not None:
                members.pop(key, None)
                if not members:
                    del self._remote_by_account[proxy.account]
        return proxy

    def _tell_controllers(self, node: Peer, *, online: bool, local_only: bool) -> None:
        """A machine's or a device's presence, to the account's (other) devices."""
        body = CONTROL.encode(Presence(online, self.state.clock()))
        frame = encode_frame(FrameType.PRESENCE, node.key, body)
        table = self._local if local_only else self
        for controller in table.account_controllers(node.account):
            if controller.key != node.key:
                controller.deliver(frame, time.perf_counter())

    # --- BusListener -------------------------------------------------------------
    def on_peer_message(self, key: bytes, message: bytes) -> None:
        peer = self._local.get(key)
        if message[:1] == FRAME:
            self._deliver_here(key, peer, message[1:])
            return
        try:
            command = decode_command(message)
        except RemoteProtocolError:
            self.state.metrics.drops["bus-malformed"] += 1
            return
        if peer is None:
            return  # it left this node; its presence is already withdrawn
        if command[0] == CLOSE:
            _, node, code, reason, after_flush, quietly = command
            if node != self.bus.node_id:
                return  # meant for an older connection of this key, on another node
            if quietly:
                peer.on_close = self._detach_quietly
            if after_flush:
                peer.close_after_flush(CloseCode(int(code)), str(reason))
            else:
                peer.close(CloseCode(int(code)), str(reason))
        elif command[0] == CUT:
            # A node from before ``then`` sends four elements.
            _, final, code, reason, *then = command
            then_frame = bytes(then[0]) if then else b""
            self._cut_off(peer, bytes(final), CloseCode(int(code)), str(reason), then_frame)
        elif command[0] == TICKET:
            partner = bytes(command[1]) or None
            for linked in (peer.ticket_peer, partner):
                proxy = self._remote.get(linked) if linked else None
                if proxy is not None:
                    proxy._partner = key if linked == partner else None
            peer.ticket_peer = partner
        else:
            account, status = bytes(command[1]), SessionStatus(command[2])
            self._local.move_to_account(peer, account, status)
            self._announce(peer)

    def _deliver_here(self, key: bytes, peer: Peer | None, frame: bytes) -> None:
        if frame.startswith(_DATA_HEAD):
            source = self.get(frame[_SOURCE])
            if peer is None or (source is not None and not may_route(source, peer)):
                self.state.metrics.drops["unreachable" if peer is None else "forbidden"] += 1
                self._bounce(frame[_SOURCE], key)
                return
        if peer is not None:
            peer.deliver(frame, time.perf_counter())

    def _bounce(self, source: bytes, destination: bytes) -> None:
        """The sender hears ERROR, as for a local peer, without saying why."""
        error = encode_frame(FrameType.ERROR, destination, _UNREACHABLE)
        local = self._local.get(source)
        if local is not None:
            local.deliver(error, time.perf_counter())
        else:
            self.bus.send(source, frame_message(error))

    def _detach_quietly(self, peer: Peer) -> None:
        self.detach(peer)

    def on_undelivered(self, key: bytes, message: bytes) -> None:
        frame = message[1:]
        if message[:1] == FRAME and frame.startswith(_DATA_HEAD):
            self.state.metrics.drops["unreachable"] += 1
            source = self._local.get(frame[_SOURCE])
            if source is not None:
                error = encode_frame(FrameType.ERROR, key, _UNREACHABLE)
                source.deliver(error, time.perf_counter())

    def on_presence(self, entry: PeerEntry, online: bool) -> None:
        if not online:
            proxy = self._remote.get(entry.key)
            if proxy is not None and proxy.node == entry.node:
                self._forget(entry.key)
            return
        if self._local.get(entry.key) is not None:
            return  # we hold it now; the other node is being told to let go
        unseen_node = entry.node not in self._nodes
        self._nodes.add(entry.node)
        old = self._forget(entry.key)
        proxy = RemotePeer(self.bus, entry, self.state.metrics)
        if old is not None and old.node == entry.node:
            proxy._partner = old._partner
        self._remember(proxy)
        said = self._said_offline.get(entry.key)
        if said is not None and said[0] == entry.node:
            # Its node is back on the bus (it re-announces what it holds): our
            # controllers heard "offline" from us, so they hear "online" from us too.
            # (Held by another node now, that node announces it, as for any connection.)
            self._tell_present(proxy, online=True)
        elif unseen_node and (old is None or old.node != entry.node):
            # A node our last snapshot did not see (both came back to an empty Redis
            # at once, each taking its snapshot before the other wrote its own): it
            # could not tell our controllers what changed meanwhile (it did not know
            # them), and its re-announcement is the first we hear of this peer. Tell
            # it as the snapshot would have.
            self._tell_present(proxy, online=True)
        if unseen_node:
            # The converse: our own re-announcement missed that node's controllers.
            changed, when = self._reannounced
            if time.monotonic() - when < SAID_OFFLINE_SECONDS:
                self._retell(proxy, changed)

    def on_snapshot(self, entries: Sequence[PeerEntry], nodes: Sequence[str] = ()) -> None:
        """Replace the directory of remote peers, and tell this node's controllers
        what changed since the last one: presence sent to them over the bus while it
        was out (a peer on another node came or went) was lost with it. A peer now
        held by another node counts as gone, then back (as in :meth:`attach`)."""
        before = dict(self._remote)
        self._nodes = {*nodes, *(entry.node for entry in entries)}
        self._forget_old_offline()
        self._remote.clear()
        self._remote_by_account.clear()
        for entry in entries:
            if self._local.get(entry.key) is None:
                proxy = RemotePeer(self.bus, entry, self.state.metrics)
                old = before.get(entry.key)
                proxy._partner = old._partner if old is not None else None
                self._remember(proxy)
        for key, old in before.items():
            now = self._remote.get(key)
            if (now is None or now.node != old.node) and self._local.get(key) is None:
                self._tell_present(old, online=False)
        for key, proxy in self._remote.items():
            old = before.get(key)
            if old is None or old.node != proxy.node:
                self._tell_present(proxy, online=True)

    def _tell_present(self, proxy: RemotePeer, *, online: bool) -> None:
        """A remote machine's or device's presence, to this node's controllers."""
        if online:
            self._said_offline.pop(proxy.key, None)
        if proxy.account and proxy.status in (SessionStatus.MACHINE, SessionStatus.CONTROLLER):
            # Every node tells its own controllers: each hears it once.
            self._tell_controllers(proxy, online=online, local_only=True)
            if not online:
                self._said_offline[proxy.key] = (proxy.node, time.monotonic())

    def _forget_old_offline(self) -> None:
        """A peer whose node does not come back within a minute reconnects somewhere
        (and is announced there); keep the set from growing for ever."""
        horizon = time.monotonic() - SAID_OFFLINE_SECONDS
        for key in [k for k, (_, when) in self._said_offline.items() if when < horizon]:
            del self._said_offline[key]

    def on_node_gone(self, node: str) -> None:
        self._nodes.discard(node)
        self._forget_old_offline()
        gone = [p for p in self._remote.values() if p.node == node]
        for proxy in gone:
            self._forget(proxy.key)
            self._tell_present(proxy, online=False)

    def on_revocation(self, key: bytes, account: bytes, proof: bytes) -> None:
        peer = self._local.get(key)
        if peer is None or peer.closed or peer.status is not SessionStatus.MACHINE:
            return
        self.revocations_applied += 1
        notice = encode_frame(
            FrameType.NOTICE, b"", CONTROL.encode(Notice(NoticeEvent.REVOKED, key, account, 0.0))
        )
        # As on one node: the notice, then the controller's signed revocation, on
        # which alone the machine forgets its keys (it verifies the signature itself).
        then = encode_frame(FrameType.NOTICE, b"", proof) if _proves(proof, key, account) else b""
        if not then:
            self.state.metrics.drops["revocation-without-proof"] += 1
        self._cut_off(peer, notice, CloseCode.REVOKED, "revoked", then)
        self._tell_devices(account, notice)

    def _tell_devices(self, account: bytes, notice: bytes) -> None:
        """The account's devices on every node hear what the node that took the
        request told them. Here only when the stream or the registry re-read cut a
        peer off, i.e. the direct command did not: the bus was out, so devices on
        other nodes than the requester's missed the requester's notice. (Those on
        the requester's node hear it twice: a notice states a fact, and every
        client treats it so; missing it is what one relay never does.)"""
        for controller in self.account_controllers(account):
            controller.deliver(notice, time.perf_counter())

    def on_device_removed(self, key: bytes, account: bytes) -> None:
        peer = self._local.get(key)
        if (
            peer is None
            or peer.closed
            or peer.status is not SessionStatus.CONTROLLER
            or peer.account != account
        ):
            return  # not here, or already cut off (by the direct command)
        self.device_removals_applied += 1
        cut_off_device(self.state, key, account)
        changed = Notice(NoticeEvent.DEVICES_CHANGED, b"", account, 0.0)
        self._tell_devices(account, encode_frame(FrameType.NOTICE, b"", CONTROL.encode(changed)))

    def _cut_off(
        self, peer: Peer, final: bytes, code: CloseCode, reason: str, then: bytes = b""
    ) -> None:
        """As the revoke handler does for a local machine (relay/requests.py) and
        the device log for a removed device (relay/device_requests.py)."""
        if self.detach(peer):
            announce_presence(self.state, peer, online=False)
        peer.cut_off(final, code, reason, then=then)

    def on_lost(self) -> None:
        if self._bus_lost_at is None:
            self._bus_lost_at = self.state.clock()

    async def on_reconnected(self) -> None:
        self._reannounce()
        await self._recheck_revocations()
        await self._tell_device_log_changes()

    async def _tell_device_log_changes(self) -> None:
        """``devices-changed`` reaches devices on other nodes over the bus: to this
        node's devices whose account's log grew while it was out, say it now (they
        re-read the log; PostgreSQL has it). From a little before the loss was
        noticed, and across nodes' clocks: a notice too many only costs a re-read."""
        lost_at, self._bus_lost_at = self._bus_lost_at, None
        if lost_at is None:
            return
        accounts = {p.account for p in self._local.peers() if p.status is SessionStatus.CONTROLLER}
        accounts.discard(b"")
        try:
            changed = await self.registry.device_logs_changed_since(
                sorted(accounts), lost_at - LOSS_MARGIN_SECONDS
            )
        except RegistryError as exc:
            log.warning("cannot re-read device log changes: %s", exc)
            return
        for account in changed:
            notice = Notice(NoticeEvent.DEVICES_CHANGED, b"", account, 0.0)
            frame = encode_frame(FrameType.NOTICE, b"", CONTROL.encode(notice))
            for controller in self._local.account_controllers(account):
                controller.deliver(frame, time.perf_counter())

    def _reannounce(self) -> None:
        """After a bus outage: what this node's machines and devices did while it was
        out (came, went), said again to the controllers on other nodes (it was lost
        with the bus). Other nodes do the converse from their snapshot
        (:meth:`on_snapshot`) and from re-announcements of nodes they had declared
        gone (:meth:`on_presence`); between them every controller hears of every
        change, whichever node reconnects first, and hears "online" only for a peer
        it does not believe online (a controller re-handshakes on that)."""
        unsent, self._unsent = self._unsent, {}
        # Kept a while: a node our snapshot did not see yet (both came back at once)
        # has controllers this misses now; they hear it when that node shows up.
        self._reannounced = (unsent, time.monotonic())
        accounts = {account for account, _ in unsent.values()}
        accounts |= {peer.account for key in unsent if (peer := self._local.get(key))}
        for account in accounts:
            for controller in list(self._remote_by_account.get(account, {}).values()):
                self._retell(controller, unsent)

    def _retell(
        self, controller: RemotePeer, changed: dict[bytes, tuple[bytes, SessionStatus]]
    ) -> None:
        """Presence of this node's peers that changed during the outage, to one
        remote controller of their account."""
        if controller.status is not SessionStatus.CONTROLLER:
            return
        for key, (account, status) in changed.items():
            peer = self._local.get(key)
            online = peer is not None
            if peer is not None:
                account, status = peer.account, peer.status
            if not account or status not in (SessionStatus.MACHINE, SessionStatus.CONTROLLER):
                continue
            if account != controller.account or controller.key == key:
                continue
            body = CONTROL.encode(Presence(online, self.state.clock()))
            controller.deliver(encode_frame(FrameType.PRESENCE, key, body), time.perf_counter())

    async def _recheck_revocations(self) -> None:
        """What the stream may have lost: revoked machines and removed devices among
        the peers this node holds, from the registry (the truth)."""
        local = self._local.peers()
        machines = {p.key: p for p in local if p.status is SessionStatus.MACHINE}
        devices = {p.key: p for p in local if p.status is SessionStatus.CONTROLLER}
        try:
            revoked = await self.registry.revocation_proofs(list(machines))
            removed = await self.registry.removed_among(list(devices))
        except RegistryError as exc:
            log.warning("cannot re-read revocations: %s", exc)
            return  # the registry watch retries when the registry is back
        for key, proof in revoked.items():
            self.on_revocation(key, machines[key].account, proof)
        for key in removed:
            self.on_device_removed(key, devices[key].account)

    async def _watch_registry(self) -> None:
        """Ping the registry every second; after an outage, re-read revocations."""
        while True:
            try:
                await self.registry.ping()
            except RegistryError as exc:
                self.registry_up, self.registry_detail = False, exc.message
            else:
                if not self.registry_up:
                    self.registry_up, self.registry_detail = True, "ok"
                    await self._recheck_revocations()
            await asyncio.sleep(REGISTRY_CHECK_INTERVAL)
