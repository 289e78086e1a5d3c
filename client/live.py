"""The controller's live side: one relay link, a Noise_KK channel per online machine,
resync after the cursor, then live events; outbox delivery and acks.

:class:`LiveController` is used by every command that needs fresh state (``run``,
``sessions``, ``watch``, ``approve``...). Per machine a :class:`MachineChannel`:

    handshake (KK) ──▶ syncing (SyncRequest pages until more=False) ──▶ live
        ▲                                                                 │
        └──── SESSION_RESET / decrypt failure / relay reconnect ◀─────────┘

What each applied page means (sync again, go live, nothing) is decided per machine
by a :class:`~starmux.resync.Follower`; this module only pumps pages into it.

Once a machine is live its pending outbox commands are sent (again, if they were
sent before: the machine answers a repeated command id with the first result).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from asyncio import FIRST_COMPLETED
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from starmux.codec import Message
from starmux.control import ListMachines, MachineList, NoticeEvent
from starmux.device_log import DeviceLog
from starmux.device_messages import DeviceLogSync
from starmux.e2e import Kind, unwrap, wrap
from starmux.errors import CryptoError, RemoteProtocolError, StarmuxError
from starmux.identity import IdentityCard, NodeKeys, Role
from starmux.live_channel import LiveChannel, finish, initiate, reset_body
from starmux.live_window import NO_EPOCH, AckPacer, Window, window_for
from starmux.messages import (
    APP,
    CommandAck,
    CommandEnvelope,
    EventPage,
    LiveAck,
    LoggedEvent,
    SyncRequest,
)
from starmux.node.link import (
    Closed,
    Data,
    NoticeReceived,
    PresenceChanged,
    RelayClosedConnection,
    RelayLink,
    Undeliverable,
)
from starmux.noise import HandshakeState
from starmux.resync import Action, Cursor, Follower
from starmux.transfer_messages import TRANSFER_MESSAGES

from . import device_copy
from .cache import Cache
from .roster import reconcile
from .store import ControllerConfig, ControllerStore
from .transfers import ControllerTransfers

log = logging.getLogger("starmux.controller")

SYNC_PAGE = 1000
#: Link events handled as one batch at most (their event pages: one transaction).
READ_BATCH = 64
HANDSHAKE_TIMEOUT = 10.0
#: Seconds a machine's window share is reused before the machines are counted again
#: (the count walks every machine; a batch is applied far more often than that).
WINDOW_RECOUNT = 0.1

#: Called for every newly applied event, in order: (machine key, event).
EventCallback = Callable[[bytes, LoggedEvent], None]


@dataclass
class MachineChannel:
    key: bytes
    card: IdentityCard
    online: bool = False
    handshake: HandshakeState | None = None
    channel: LiveChannel | None = None
    live: asyncio.Event = field(default_factory=asyncio.Event)
    follow: Follower = field(default_factory=Follower)
    #: when to acknowledge live pages (end-to-end flow control)
    pacer: AckPacer = field(default_factory=AckPacer)
    acks: dict[str, asyncio.Future[CommandAck]] = field(default_factory=dict)

    def off_live(self) -> None:
        """The channel is gone or being replaced: not live until synced again."""
        self.live.clear()
        self.follow.channel_lost()
        self.pacer.reset()


class LiveController:
    def __init__(
        self,
        store: ControllerStore,
        config: ControllerConfig,
        *,
        on_event: EventCallback | None = None,
        transfers: ControllerTransfers | None = None,
    ) -> None:
        #: file transfers (they outlive this connection: the agent holds them)
        self.transfers = transfers
        self.store = store
        self.config = config
        self.cache = Cache(store.db)
        self.keys: NodeKeys = store.keys()
        self.card = self.keys.card(Role.CONTROLLER, config.name)
        self.on_event = on_event
        self.machines: dict[bytes, MachineChannel] = {}
        self.link: RelayLink | None = None
        self._reader: asyncio.Task[None] | None = None
        #: event pages decrypted but not yet applied (see _read)
        self._pages: list[tuple[MachineChannel, EventPage]] = []
        #: each machine's window share and when it was worked out (see _live_window)
        self._window: tuple[float, Window] | None = None
        self.closed = asyncio.Event()
        self.close_reason: Closed | None = None
        #: what stopped the reader, other than the link closing (see raise_failure)
        self.failure: Exception | None = None
        #: what the relay's machine list got wrong (see :mod:`starmux.client.roster`)
        self.warnings: list[str] = []
        #: this device's verified copy of the account's device log (client/device_copy.py)
        self.devices: DeviceLog | None = None

    async def start(self) -> None:
        """Connect, learn which machines are online and open channels to them.

        Only machines this controller paired are considered, each with the card pinned
        at pairing: the relay's list says who is online, never who a machine is (see
        :mod:`starmux.client.roster`)."""
        # Pages are applied on the loop's own thread when the cache is free (the
        # hot path with many machines; see starmux/node/loop_writer.py).
        self.cache.writer = await self.store.loop_writer()
        self.link = RelayLink(
            self.config.relay_url, self.keys, self.card, pinned_relay_key=self.config.relay_key
        )
        if self.transfers is not None:
            self.transfers.send = self.send_to
        try:
            await self.link.connect()
        except RelayClosedConnection as exc:
            if device_copy.removed(exc.code):
                raise device_copy.DeviceRemoved() from exc
            raise
        self.devices = await device_copy.load_copy(self.store.db)
        self.devices = await device_copy.refresh(
            self.store.db,
            self.link,
            self.devices,
            keys=self.keys,
            card=self.card,
            account=self.config.account,
            now=time.time(),
        )
        listing = await self.link.request(ListMachines(0), MachineList)
        assert isinstance(listing, MachineList)
        roster = reconcile(await self.store.machines(), listing)
        for warning in roster.warnings:
            log.warning("warning: %s", warning)
        self.warnings.extend(roster.warnings)
        for entry in roster.entries:
            key = entry.machine.key
            machine = self.machines.setdefault(key, MachineChannel(key, entry.card))
            machine.online = entry.online
            if machine.online:
                await self._handshake(machine)
        # Only now: presence that arrived meanwhile waited, in order, in the link's
        # queue; read earlier, it could name a machine not in ``self.machines`` yet.
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def close(self) -> None:
        if self.transfers is not None and self.transfers.send == self.send_to:
            self.transfers.send = None
        if self.link is not None:
            await self.link.close()
        if self._reader is not None:
            with contextlib.suppress(BaseException):
                await self._reader

    async def wait_live(
        self, keys: list[bytes] | None = None, *, within: float = 15.0
    ) -> set[bytes]:
        """Wait until the given (default: all online) machines are synced; returns those
        that are live. Offline machines are skipped, not waited for."""
        targets = [m for k, m in self.machines.items() if (keys is None or k in keys) and m.online]
        synced = asyncio.gather(*(m.live.wait() for m in targets))
        closed = asyncio.ensure_future(self.closed.wait())
        waits: set[asyncio.Future[Any]] = {synced, closed}
        try:
            await asyncio.wait(waits, timeout=within, return_when=FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        self.raise_failure()
        return {m.key for m in targets if m.live.is_set()}

    def is_online(self, key: bytes) -> bool:
        machine = self.machines.get(key)
        return machine is not None and machine.online

    async def command_ack(
        self, machine_key: bytes, command_id: str, *, within: float = 30.0
    ) -> CommandAck | None:
        """Wait for the ack of an outbox command (None if it did not come in time)."""
        machine = self.machines.get(machine_key)
        if machine is None:
            return None
        stored = await self.cache.command(command_id, machine_key)
        if stored is not None and stored.acked:
            return CommandAck(
                command_id,
                bool(stored.ok),
                stored.error or "",
                stored.hint or "",
                stored.result or "",
            )
        future = machine.acks.setdefault(command_id, asyncio.get_running_loop().create_future())
        try:
            async with asyncio.timeout(within):
                return await asyncio.shield(future)
        except TimeoutError:
            return None

    async def submit(
        self, machine_key: bytes, command: Message, *, within: float = 30.0
    ) -> CommandAck | None:
        """Put ``command`` in the outbox and, if the machine is live, deliver it and
        wait for its ack (None: still queued)."""
        command_id = "k-" + secrets.token_hex(8)
        await self.cache.enqueue(command_id, machine_key, command.KIND, APP.encode(command))
        machine = self.machines.get(machine_key)
        if machine is None or not machine.live.is_set():
            return None
        await self.flush_outbox(machine)
        return await self.command_ack(machine_key, command_id, within=within)

    async def flush_outbox(self, machine: MachineChannel) -> None:
        for command in await self.cache.pending(machine.key):
            await self._send(machine, CommandEnvelope(command.command_id, command.body))
            await self.cache.mark_sent(command.command_id)

    # --- the link -----------------------------------------------------------------

    async def _read(self) -> None:
        assert self.link is not None
        try:
            while True:
                # Everything already queued is one batch, so the event pages in it are
                # applied in one cache transaction (group commit): with many machines
                # streaming, per-transaction costs would otherwise dominate.
                events = await self.link.next_events(READ_BATCH)
                for event in events:
                    try:
                        await self._on_event(event)
                    except StarmuxError as exc:
                        log.warning("ignoring a bad message: %s", exc)
                await self._apply_pages()
                if isinstance(events[-1], Closed):
                    break
        except Exception as exc:
            # The cache failed, or a caller's on_event did: stop for good and say so,
            # rather than leave commands waiting on a controller that no longer reads.
            self.failure = exc
            log.debug("the controller stopped reading", exc_info=True)
            await self.link.close()
        finally:
            self.close_reason = self.link.closed
            if self.close_reason is not None and device_copy.removed(self.close_reason.code):
                self.failure = device_copy.DeviceRemoved()  # for good: not a reconnect
            self.closed.set()
            for machine in self.machines.values():
                machine.online = False

    def raise_failure(self) -> None:
        """Raise what stopped the controller reading, if anything did."""
        if self.failure is not None:
            raise self.failure

    async def _on_event(self, event: object) -> None:
        if isinstance(event, Data):
            machine = self.machines.get(event.peer)
            if machine is not None:
                await self._on_data(machine, event.body)
            return
        # Anything but a page is handled after the pages that came before it.
        await self._apply_pages()
        if isinstance(event, PresenceChanged):
            machine = self.machines.get(event.peer)
            if machine is None:
                return
            machine.online = event.online
            # A machine we already handshake with (the relay greets a new controller
            # with presence for machines the listing showed) keeps that handshake:
            # starting another would orphan the answer to the first.
            if event.online and machine.handshake is None and machine.channel is None:
                await self._handshake(machine)
            else:
                had_channel = machine.channel is not None
                machine.channel = None
                machine.off_live()
                if not event.online:
                    # Its answer will never come: the next "online" starts afresh.
                    machine.handshake = None
                elif had_channel:
                    # Online again while our channel stood: the machine reconnected and
                    # its new connection replaced the old one with no "offline" between
                    # (a link that died silently). Its end of the old channel is gone
                    # and it never starts KK itself, so without a handshake here the
                    # machine would stay silent for good.
                    await self._handshake(machine)
        elif isinstance(event, Undeliverable):
            machine = self.machines.get(event.peer)
            if machine is not None:
                machine.online = False
                machine.handshake = None  # (same) the handshake went nowhere
                machine.off_live()
        elif isinstance(event, NoticeReceived) and (
            event.notice.event is NoticeEvent.DEVICES_CHANGED
        ):
            await self._refresh_devices()

    async def _refresh_devices(self) -> None:
        """Another device changed the account's device log: a long-running controller
        (the agent) reads it now, not only when it next connects, and hands the new
        head to the machines it talks to so they learn a removal or a role at once."""
        assert self.link is not None
        before = self.devices.head.seq if self.devices is not None else None
        self.devices = await device_copy.refresh(
            self.store.db,
            self.link,
            self.devices,
            keys=self.keys,
            card=self.card,
            account=self.config.account,
            now=time.time(),
        )
        if self.devices is None or self.devices.head.seq == before:
            return
        for machine in self.machines.values():
            if machine.channel is not None:
                await self._send(machine, DeviceLogSync(self.devices.encode()))

    async def _handshake(self, machine: MachineChannel) -> None:
        assert self.link is not None
        machine.channel = None
        machine.off_live()
        if self.devices is not None:
            # In clear first: a machine that missed our `add` could not finish KK.
            await self.link.send_data(machine.key, wrap(Kind.DEVICE_LOG, self.devices.encode()))
        machine.handshake, body = initiate(self.keys, machine.card, relay_key=self.config.relay_key)
        await self.link.send_data(machine.key, body)

    async def _on_data(self, machine: MachineChannel, body: bytes) -> None:
        try:
            kind, payload = unwrap(body)
        except RemoteProtocolError:
            return
        if kind is Kind.SESSION_TRANSPORT and machine.channel is not None:
            try:
                message = machine.channel.open(payload)
            except RemoteProtocolError as exc:
                # It decrypted, so the machine itself sent it (a bug, or a compromised
                # machine): a new handshake and resync would get the same answer, in a
                # loop. Its channel stays down until presence or the next command.
                log.warning(
                    "warning: machine %s sent an invalid message (%s); not syncing it now",
                    machine.card.fingerprint,
                    exc.message,
                )
                await self._apply_pages()
                machine.channel = None
                machine.off_live()
                return
            except CryptoError:
                log.warning(
                    "a message from %s failed to decrypt; new handshake", machine.card.fingerprint
                )
                await self._apply_pages()
                assert self.link is not None
                with contextlib.suppress(StarmuxError):
                    await self.link.send_data(machine.key, reset_body())
                await self._handshake(machine)
                return
            if isinstance(message, EventPage):
                self._pages.append((machine, message))
            else:
                await self._apply_pages()
                await self._on_message(machine, message)
            return
        await self._apply_pages()
        if kind is Kind.SESSION_HANDSHAKE and machine.handshake is not None:
            try:
                machine.channel = finish(machine.handshake, payload)
            except CryptoError:
                log.warning("handshake with %s failed", machine.card.fingerprint)
                return
            finally:
                machine.handshake = None
            if self.devices is not None:  # the head we hold: the machine catches up
                await self._send(machine, DeviceLogSync(self.devices.encode()))
            await self._request_sync(machine)
            if self.transfers is not None:
                await self.transfers.channel_open(machine.key)
        elif kind is Kind.SESSION_RESET:
            await self._handshake(machine)

    async def _apply_pages(self) -> None:
        """Apply the event pages decrypted so far, in one transaction, then act on
        each as it asks: a gap or more to come → sync from the cursor; the last
        page of a sync → live (and the outbox goes out)."""
        if not self._pages:
            return
        pages, self._pages = self._pages, []
        results = await self.cache.apply_pages([(m.key, page) for m, page in pages])
        # Each machine's cursor as the batch committed it: what a sync request asks
        # from (a machine paging through its log asks once per page).
        cursors = {m.key: applied.cursor for (m, _), applied in zip(pages, results, strict=True)}
        synced: set[bytes] = set()
        acking: dict[bytes, MachineChannel] = {}
        going_live: list[MachineChannel] = []
        # The batch's sync requests and acks go out together, in one write.
        out: list[tuple[MachineChannel, Message]] = []
        for (machine, page), applied in zip(pages, results, strict=True):
            if self.on_event is not None:
                for event in applied.events:
                    self.on_event(machine.key, event)
            action = machine.follow.page(page, gap=applied.gap)
            if not applied.gap and machine.follow.live:
                machine.pacer.applied(page)
                acking[machine.key] = machine
            if action is Action.REQUEST_SYNC:
                machine.live.clear()
                acking.pop(machine.key, None)
                if machine.key not in synced:  # one request answers every gap
                    synced.add(machine.key)
                    out += self._sync_request(machine, cursors[machine.key])
            elif action is Action.GO_LIVE:
                machine.live.set()
                going_live.append(machine)
        out += self._acks(acking.values())
        await self._send_all(out)
        for machine in going_live:
            await self.flush_outbox(machine)

    def _acks(self, machines: Iterable[MachineChannel]) -> list[tuple[MachineChannel, Message]]:
        """Live-acks to the live machines whose pushes used half their window since
        the last ack, or whose share changed."""
        window = self._live_window()
        return [
            (machine, self._ack(machine, machine.pacer.epoch, machine.pacer.seq, window))
            for machine in machines
            if machine.follow.live and machine.pacer.epoch and machine.pacer.due(window)
        ]

    def _ack(self, machine: MachineChannel, epoch: str, seq: int, window: Window) -> LiveAck:
        """A live-ack for ``machine``, to send now: everything through ``seq`` of
        ``epoch`` applied, ``window`` from now on (what the machine's pacer counts
        against)."""
        machine.pacer.sent(window)
        return LiveAck(epoch, seq, window.pages, window.bytes)

    def _live_window(self) -> Window:
        now = time.monotonic()
        if self._window is None or now - self._window[0] > WINDOW_RECOUNT:
            # Every machine with a channel may be pushing or answering a sync, and one
            # in a handshake soon will: counting only the live ones would hand the
            # others' share out twice (at start-up, channels open one by one).
            talking = sum(
                1
                for m in self.machines.values()
                if m.channel is not None or m.handshake is not None
            )
            self._window = (now, window_for(talking))
        return self._window[1]

    async def _on_message(self, machine: MachineChannel, message: Message) -> None:
        if isinstance(message, DeviceLogSync):  # we were behind the machine
            self.devices = await device_copy.take(
                self.store.db, self.devices, message.entries, account=self.config.account
            )
        elif isinstance(message, TRANSFER_MESSAGES) and self.transfers is not None:
            await self.transfers.on_message(machine.key, message)
        elif isinstance(message, CommandAck):
            await self.cache.record_ack(machine.key, message)
            future = machine.acks.pop(message.command_id, None)
            if future is not None and not future.done():
                future.set_result(message)

    async def _request_sync(self, machine: MachineChannel) -> None:
        """Ask ``machine`` for its log after its cursor as the cache has it."""
        cursor = await self.cache.cursor(machine.key)
        await self._send_all(self._sync_request(machine, cursor))

    def _sync_request(
        self, machine: MachineChannel, cursor: Cursor
    ) -> list[tuple[MachineChannel, Message]]:
        """What asks ``machine`` for its log after ``cursor``, to send now: on a new
        channel, its share of the window first."""
        out: list[tuple[MachineChannel, Message]] = []
        if machine.pacer.window is None:
            # Without a window a machine answers in 48 KiB pages, and a hundred of
            # them answering a fresh controller at once would pass what the relay
            # holds for it (4 MiB). An ack for the cursor asked from (or for no epoch
            # yet) acknowledges nothing and carries the window.
            ack = self._ack(machine, cursor.epoch or NO_EPOCH, cursor.seq, self._live_window())
            out.append((machine, ack))
        machine.follow.requested()
        out.append((machine, SyncRequest(cursor.epoch, cursor.seq, SYNC_PAGE)))
        return out

    async def send_to(self, key: bytes, message: Message) -> bool:
        """Send over ``key``'s channel if it has one now (False: it has none)."""
        machine = self.machines.get(key)
        if machine is None or machine.channel is None or self.link is None:
            return False
        try:
            await self._send(machine, message)
        except StarmuxError:
            return False
        return True

    async def _send(self, machine: MachineChannel, message: Message) -> None:
        await self._send_all(((machine, message),))

    async def _send_all(self, messages: Sequence[tuple[MachineChannel, Message]]) -> None:
        """Seal each message in order, then write them all at once (see
        :meth:`RelayLink.send_data_many`); none to a machine without a channel."""
        if self.link is None:
            return
        frames = [
            (machine.key, machine.channel.seal(message))
            for machine, message in messages
            if machine.channel is not None
        ]
        await self.link.send_data_many(frames)
