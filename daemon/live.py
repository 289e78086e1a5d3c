"""The machine's side of live channels: Noise_KK per controller, sync, commands, push.

Per controller: at most one :class:`LiveChannel`; a new handshake replaces it. All
messages to a controller go through one ordered queue and one sender task, so
encryption order equals send order (Noise nonces) and sync pages never overtake
each other or live events.

Resync (the rules and their invariants: :mod:`starmux.resync`): each controller has
a :class:`~starmux.resync.Feed`; a ``SyncRequest`` is answered with the page it
says, and every commit is offered to each feed, which says what to push. The one
rule this adapter keeps: no await between reading ``last_seq`` for an answer and
the feed going live, so no commit falls between the last sync page and the pushes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from starmux.codec import Message
from starmux.device_messages import DeviceLogSync
from starmux.device_roles import COMMAND_ACTIONS, Action, action_for_decision
from starmux.e2e import Kind, unwrap
from starmux.errors import (
    ConnectionLost,
    CryptoError,
    RemoteProtocolError,
    StarmuxError,
    UsageError,
)
from starmux.identity import IdentityCard, NodeKeys
from starmux.live_channel import LiveChannel, reset_body, respond
from starmux.live_window import page_cost
from starmux.messages import (
    APP,
    CancelSession,
    CommandAck,
    CommandEnvelope,
    DecideCheckpoint,
    EventPage,
    LiveAck,
    LoggedEvent,
    SendInput,
    StartSession,
    SyncRequest,
)
from starmux.notify_messages import NOTIFY_COMMANDS, Viewing
from starmux.resync import PAGE_BYTES, PAGE_EVENTS, Feed
from starmux.review_messages import RemoveApprovalRule, SetApprovalRule, ShowDiff
from starmux.task_messages import AssignTask, CancelTask, SetTags
from starmux.transfer_messages import TRANSFER_MESSAGES, FetchFile, OfferFile

from . import fleet_settings, review_commands
from .checkpoints import Checkpoints
from .devices import DeviceGate, Offer, RoleRefused
from .eventlog import EventLog, StoredEvent
from .notifications import Notifications
from .sessions import SessionManager, command_record
from .store import DaemonStore
from .taskrunner import TaskRunner
from .transfers import MachineTransfers

log = logging.getLogger("starmux.daemon")

Send = Callable[[bytes, bytes], Awaitable[None]]


@dataclass
class ControllerPeer:
    key: bytes
    card: IdentityCard
    channel: LiveChannel
    feed: Feed = field(default_factory=Feed)
    queue: asyncio.Queue[tuple[LiveChannel, Message]] = field(default_factory=asyncio.Queue)
    sender: asyncio.Task[None] | None = None
    #: set when a message was queued or a file transfer may have a chunk to send:
    #: the one thing an idle sender waits on
    wake: asyncio.Event = field(default_factory=asyncio.Event)


def logged(event: StoredEvent) -> LoggedEvent:
    return LoggedEvent(event.seq, event.at, event.session, event.body)


def merge_live_pages(first: EventPage, second: EventPage) -> EventPage | None:
    """``first`` and ``second`` as one live page, or None if they may not be joined:
    both must be pushed live events (not a sync answer, not the "sync again" page) of
    one epoch, and the result must still fit one encrypted message."""
    joinable = (
        first.live
        and second.live
        and not first.more
        and not second.more
        and bool(first.events)
        and bool(second.events)
        and first.epoch == second.epoch
        and len(first.events) + len(second.events) <= PAGE_EVENTS
        and page_cost(first) + page_cost(second) <= PAGE_BYTES
    )
    if not joinable:
        return None
    return EventPage(first.epoch, first.events + second.events, False, True)


class LiveService:
    def __init__(
        self,
        *,
        keys: NodeKeys,
        card: IdentityCard,
        store: DaemonStore,
        log: EventLog,
        sessions: SessionManager,
        checkpoints: Checkpoints,
        tasks: TaskRunner | None = None,
        notifications: Notifications | None = None,
        transfers: MachineTransfers | None = None,
    ) -> None:
        self.keys = keys
        self.notifications = notifications
        self.transfers = transfers
        if transfers is not None:
            transfers.wake = self._wake_chunks
        self.tasks = tasks
        self.card = card
        self.store = store
        self.log = log
        self.sessions = sessions
        self.checkpoints = checkpoints
        self.peers: dict[bytes, ControllerPeer] = {}
        self._send: Send | None = None
        self._relay_key = b""
        self._commands = asyncio.Lock()
        self.devices = DeviceGate(store)
        checkpoints.is_device = self.devices.is_current
        checkpoints.device_name = self.devices.name_of
        checkpoints.rules.role_of = self.devices.role_of
        self._unsubscribe = log.subscribe(self._on_commit)

    def attach(self, send: Send, relay_key: bytes) -> None:
        """A relay connection is up; channels are made afresh on it."""
        self._send = send
        self._relay_key = relay_key

    def detach(self) -> None:
        """The relay connection is gone: every channel dies with it (re-handshake)."""
        self._send = None
        for peer in self.peers.values():
            if peer.sender is not None:
                peer.sender.cancel()
            if self.transfers is not None:
                self.transfers.channel_lost(peer.key)
        self.peers.clear()

    def close(self) -> None:
        self.detach()
        self._unsubscribe()

    # --- incoming -------------------------------------------------------------------

    async def on_data(self, sender: bytes, body: bytes) -> None:
        try:
            kind, payload = unwrap(body)
        except RemoteProtocolError:
            return
        if kind is Kind.SESSION_HANDSHAKE:
            await self._handshake(sender, payload)
        elif kind is Kind.SESSION_RESET:
            self._drop(sender)
        elif kind is Kind.DEVICE_LOG:
            offer = await self.devices.offer(
                sender, payload, authenticated=False, now=self.log_clock()
            )
            self._cut_off(offer)
        elif kind is Kind.SESSION_TRANSPORT:
            peer = self.peers.get(sender)
            if peer is None:
                await self._reset(sender)
                return
            try:
                message = peer.channel.open(payload)
            except (CryptoError, RemoteProtocolError):
                log.warning(
                    "a message from controller %s failed to decrypt; resetting",
                    peer.card.fingerprint,
                )
                self._drop(sender)
                await self._reset(sender)
                return
            await self._dispatch(peer, message)

    async def _handshake(self, sender: bytes, payload: bytes) -> None:
        card = await self.devices.card_for(sender)
        if card is None:
            await self.store.audit(
                "handshake.refused",
                actor=sender,
                detail="not a current device of the account",
                now=self.log_clock(),
            )
            return
        try:
            channel, reply = respond(self.keys, card, payload, relay_key=self._relay_key)
        except (CryptoError, UsageError):
            await self._reset(sender)
            return
        self._drop(sender)
        if self._send is None:
            return
        try:
            await self._send(sender, reply)
        except ConnectionLost:
            # The connection died under the answer: its Closed event follows, and the
            # controller handshakes again once this machine is back online.
            return
        peer = ControllerPeer(sender, card, channel)
        peer.sender = asyncio.get_running_loop().create_task(self._sender(peer))
        self.peers[sender] = peer

    async def _dispatch(self, peer: ControllerPeer, message: Message) -> None:
        if isinstance(message, DeviceLogSync):
            offer = await self.devices.offer(
                peer.key, message.entries, authenticated=True, now=self.log_clock()
            )
            if offer.behind:
                self._enqueue(peer, DeviceLogSync(self.devices.entries()))
            self._cut_off(offer)
        elif isinstance(message, SyncRequest):
            try:
                await self.devices.check(peer.key, Action.WATCH, now=self.log_clock())
            except RoleRefused:
                return
            await self._sync(peer, message)
        elif isinstance(message, LiveAck):
            # Only paces what is pushed to this very controller: no role needed.
            for page in peer.feed.acked(message, epoch=self.log.epoch):
                self._enqueue(peer, page)
        elif isinstance(message, CommandEnvelope):
            ack = await self._command(peer, message)
            self._enqueue(peer, ack)
        elif isinstance(message, Viewing) and self.notifications is not None:
            self.notifications.viewing(peer.key, message)
        elif isinstance(message, TRANSFER_MESSAGES) and self.transfers is not None:
            if isinstance(message, FetchFile | OfferFile):
                action = Action.LOGS if isinstance(message, FetchFile) else Action.RUN
                try:
                    await self.devices.check(peer.key, action, now=self.log_clock())
                except RoleRefused:
                    return
            for reply in self.transfers.on_message(peer.key, message):
                self._enqueue(peer, reply)

    async def _sync(self, peer: ControllerPeer, request: SyncRequest) -> None:
        read = peer.feed.read_for(request, epoch=self.log.epoch)
        events = await self.log.read_after(read.after, limit=read.limit, max_bytes=read.max_bytes)
        # No await from here to going live: every later commit is pushed.
        page = peer.feed.answer(
            read, [logged(e) for e in events], epoch=self.log.epoch, last_seq=self.log.last_seq
        )
        self._enqueue(peer, page)

    def _on_commit(self, events: list[StoredEvent]) -> None:
        if not any(peer.feed.live for peer in self.peers.values()):
            return
        entries = [logged(e) for e in events]
        for peer in self.peers.values():
            backlog = peer.queue.qsize()
            for page in peer.feed.committed(entries, epoch=self.log.epoch, backlog=backlog):
                self._enqueue(peer, page)

    # --- commands -------------------------------------------------------------------

    async def _command(self, peer: ControllerPeer, envelope: CommandEnvelope) -> CommandAck:
        async with self._commands:  # one at a time: "delivered twice runs once"
            rows = await self.log.execute_read(
                "SELECT ok, error, hint, result FROM commands WHERE command_id = ?",
                (envelope.command_id,),
            )
            if rows:
                ok, error, hint, result = rows[0]
                return CommandAck(envelope.command_id, bool(ok), error, hint, result)
            try:
                await self.devices.check(peer.key, _action(envelope.body), now=self.log_clock())
                result = await self._run(peer, envelope)
            except StarmuxError as exc:
                await self.log.execute_write(
                    [
                        command_record(
                            envelope.command_id,
                            False,
                            exc.message,
                            exc.hint or "",
                            "",
                            self.log_clock(),
                        )
                    ]
                )
                return CommandAck(envelope.command_id, False, exc.message, exc.hint or "", "")
            return CommandAck(envelope.command_id, True, "", "", result)

    async def _run(self, peer: ControllerPeer, envelope: CommandEnvelope) -> str:
        try:
            command = APP.decode(envelope.body)
        except RemoteProtocolError as exc:
            raise UsageError("the command could not be decoded") from exc
        if isinstance(command, StartSession):
            transfers = self.transfers
            if not command.attachments or transfers is None:
                return await self.sessions.start(envelope.command_id, command)
            transfers.check_attachments(peer.key, command.attachments)
            return await self.sessions.start(
                envelope.command_id,
                command,
                attach=lambda cwd: transfers.place_attachments(
                    peer.key, command.attachments, cwd, command.session
                ),
            )
        if isinstance(command, SetTags) and self.tasks is not None:
            tags = (self.tasks.tags | frozenset(command.add)) - frozenset(command.remove)
            await fleet_settings.store_tags(self.store, tags)  # checked, then in force
            await self.tasks.set_tags(tags)
            result = ",".join(sorted(tags))
            await self.log.execute_write(
                [command_record(envelope.command_id, True, "", "", result, self.log_clock())]
            )
            return result
        if isinstance(command, AssignTask | CancelTask) and self.tasks is not None:
            # Idempotent by task id as well: a replay after a crash before the
            # record below re-acks where the task is, and runs nothing twice.
            if isinstance(command, AssignTask):
                result = await self.tasks.assign(command)
            else:
                result = await self.tasks.cancel(command)
            await self.log.execute_write(
                [command_record(envelope.command_id, True, "", "", result, self.log_clock())]
            )
            return result
        if isinstance(command, NOTIFY_COMMANDS) and self.notifications is not None:
            result = await self.notifications.command(peer.key, command)
            await self.log.execute_write(
                [command_record(envelope.command_id, True, "", "", result, self.log_clock())]
            )
            return result
        if isinstance(command, DecideCheckpoint):
            return await self.checkpoints.decide(
                envelope.command_id, command, controller_key=peer.key
            )
        if isinstance(command, SetApprovalRule | RemoveApprovalRule | ShowDiff):
            result = await review_commands.run(
                command,
                rules=self.checkpoints.rules,
                log=self.log,
                by=peer.key,
                now=self.log_clock(),
            )
            await self.log.execute_write(
                [command_record(envelope.command_id, True, "", "", result, self.log_clock())]
            )
            if isinstance(command, SetApprovalRule):  # it answers what waits already
                await self.checkpoints.answer_pending(command.session)
            return result
        if isinstance(command, CancelSession):
            await self.sessions.cancel(command.session)
        elif isinstance(command, SendInput):
            await self.sessions.send_input(command.session, command.data)
        else:
            raise UsageError(f"unknown command {command.KIND}")
        await self.log.execute_write(
            [command_record(envelope.command_id, True, "", "", command.KIND, self.log_clock())]
        )
        return command.KIND

    def _cut_off(self, offer: Offer) -> None:
        """Devices the log just removed lose their channel now, not at reconnect."""
        for key in offer.removed:
            self._drop(key)

    # --- outgoing -------------------------------------------------------------------

    def _enqueue(self, peer: ControllerPeer, message: Message) -> None:
        peer.queue.put_nowait((peer.channel, message))
        peer.wake.set()

    async def _sender(self, peer: ControllerPeer) -> None:
        queue = peer.queue
        held: tuple[LiveChannel, Message] | None = None
        while True:
            if held is None and queue.empty():
                # File chunks only when nothing else waits: live output, acks and
                # approvals never queue behind a file (the credit bounds how much
                # of it is in flight ahead of them).
                chunk = self.transfers.next_chunk(peer.key) if self.transfers else None
                if not chunk:
                    # One event for both (a message queued, transfer credit): waiting
                    # on two futures at once cost more than sealing a small page.
                    peer.wake.clear()
                    await peer.wake.wait()
                    continue
                held = (peer.channel, chunk)
            channel, message = held or queue.get_nowait()
            held = None
            if channel is not peer.channel or channel.closed or self._send is None:
                continue
            # Under load, commits queue up small live pages while the last one is being
            # sent: join those already waiting into one message (fewer seals, frames and
            # controller wake-ups). Only what is already queued is joined, so an idle
            # machine's event goes out at once, alone. The feed counts the joined page
            # as one, as the controller will (its window's count must match).
            while isinstance(message, EventPage) and not queue.empty():
                held = queue.get_nowait()
                second = held[1]
                if held[0] is not channel or not isinstance(second, EventPage):
                    break
                merged = merge_live_pages(message, second)
                if merged is None:
                    break
                for page in peer.feed.joined(message, second):
                    queue.put_nowait((channel, page))  # (after all that is queued)
                message, held = merged, None
            try:
                await self._send(peer.key, channel.seal(message))
            except StarmuxError:
                return

    def _wake_chunks(self, key: bytes) -> None:
        peer = self.peers.get(key)
        if peer is not None:
            peer.wake.set()

    async def _reset(self, peer: bytes) -> None:
        if self._send is not None:
            with contextlib.suppress(StarmuxError):
                await self._send(peer, reset_body())

    def _drop(self, key: bytes) -> None:
        peer = self.peers.pop(key, None)
        if peer is not None and peer.sender is not None:
            peer.sender.cancel()
        if peer is not None and self.transfers is not None:
            self.transfers.channel_lost(key)

    def log_clock(self) -> float:
        return self.sessions.clock()


def _action(body: bytes) -> Action:
    """What a command needs; an undecodable or unknown one needs owner rights (and
    then fails to decode in _run with its own message)."""
    try:
        command = APP.decode(body)
    except RemoteProtocolError:
        return Action.MANAGE_DEVICES
    if isinstance(command, DecideCheckpoint):
        return action_for_decision(command.approve)
    return COMMAND_ACTIONS.get(command.KIND, Action.MANAGE_DEVICES)
