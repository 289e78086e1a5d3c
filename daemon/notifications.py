"""The machine's notifications: events in, webhook POSTs and sealed pushes out.

The rules (who, what, when) are :class:`starmux.notify_rules.Planner`; this adapter
feeds it every committed event of the log, runs its reminder clock, stores targets
and settings with the device that set them (``notify_targets``, ``notify_settings``)
and hands each delivery to the webhook sender or, sealed to the device's key, to the
relay (``send-push``).

Invariants:

- Nothing here blocks the daemon: the log's commit callback only plans and queues;
  POSTs and relay requests run in their own tasks.
- A target's status reaches the event log (stream ``notify``, ``notify-status``)
  only when it changes (registered, first delivered, failing, working again,
  removed), so a flapping
  endpoint cannot flood the log; the text never contains its URL.
- Only a device current in the machine's device log is notified (a removed device's
  targets stay stored but are skipped), and only the device itself changes its
  targets and settings (the command's sender).
- Pushes due while the relay is away are held (at most :data:`UNSENT_PUSHES`, the
  oldest dropped and counted) and sent when the link is back; a webhook does not
  need the relay.
- A daemon restart restores the running sessions and the reminders of checkpoints
  still waiting, without telling about those checkpoints again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starmux.errors import StarmuxError, UsageError
from starmux.identity import IdentityCard, NodeKeys
from starmux.messages import (
    APP,
    CheckpointDecided,
    CheckpointRaised,
    SessionCreated,
    SessionStatusChanged,
)
from starmux.node.link import RelayLink
from starmux.notify_delivery import RateBudget, check_webhook_url
from starmux.notify_messages import (
    MAX_TARGETS_PER_DEVICE,
    NotifySettings,
    NotifyStatus,
    NotifyTarget,
    NotifyTargetRemove,
    NotifyTest,
    PushOutcome,
    PushQueued,
    TargetState,
    Viewing,
)
from starmux.notify_messages import (
    SendPush as SendPushRequest,
)
from starmux.notify_push import seal_notification
from starmux.notify_rules import (
    ContentLevel,
    Delivery,
    DeviceSettings,
    NotifyKind,
    Planner,
    Target,
    TargetKind,
)
from starmux.session_state import TERMINAL

from .eventlog import EventLog, StoredEvent
from .store import DaemonStore
from .webhooks import Outcome, WebhookSender, retry_scale

log = logging.getLogger("starmux.daemon")

NOTIFY_STREAM = "notify"
#: per target: 10 at once, then 20 a minute (a reminder storm stays bounded)
TARGET_BURST = 10
TARGET_PER_MINUTE = 20.0

_ENDED = frozenset(status.value for status in TERMINAL)
#: The kinds of event the planner acts on (see ``_on_commit``).
_PLANNED: frozenset[type | None] = frozenset(
    {SessionCreated, CheckpointRaised, CheckpointDecided, SessionStatusChanged}
)
#: pushes held while the relay is away (the oldest goes first when more come)
UNSENT_PUSHES = 32

SendPush = Callable[[bytes, bytes], Awaitable[PushOutcome]]
CardFor = Callable[[bytes], Awaitable[IdentityCard | None]]


@dataclass
class _Health:
    state: TargetState = TargetState.ACTIVE
    delivered: int = 0
    failed: int = 0


class Notifications:
    def __init__(
        self,
        *,
        log: EventLog,
        store: DaemonStore,
        keys: NodeKeys,
        machine_name: str,
        card_for: CardFor,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.log = log
        self.store = store
        self.keys = keys
        self.card_for = card_for
        self.clock = clock
        self.planner = Planner(machine=machine_name)
        self.budget = RateBudget(per_minute=TARGET_PER_MINUTE, burst=TARGET_BURST)
        self.webhooks = WebhookSender(self._webhook_done, retry_scale=retry_scale())
        self._health: dict[tuple[bytes, str], _Health] = {}
        self._send_push: SendPush | None = None
        self._unsent: collections.deque[tuple[Delivery, bytes]] = collections.deque(
            maxlen=UNSENT_PUSHES
        )
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._clock_task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None

    async def open(self) -> None:
        for device, target, kind, url, content in await self.store.db.execute_fetchall(
            "SELECT device, target, kind, url, content FROM notify_targets"
        ):
            self.planner.set_target(
                Target(target, bytes(device), TargetKind(kind), ContentLevel(content), url)
            )
        for device, kinds, fraction in await self.store.db.execute_fetchall(
            "SELECT device, kinds, reminder_fraction FROM notify_settings"
        ):
            wanted = frozenset(NotifyKind(k) for k in kinds.split(",") if k)
            self.planner.set_settings(bytes(device), DeviceSettings(wanted, fraction))
        await self._restore()
        self._unsubscribe = self.log.subscribe(self._on_commit)
        self._clock_task = asyncio.get_running_loop().create_task(self._reminders())

    async def _restore(self) -> None:
        """After a restart: the running sessions, and the reminders of checkpoints
        still waiting (told about when they were raised, not again)."""
        ended = tuple(_ENDED)
        marks = ",".join("?" * len(ended))
        for session, title, cwd in await self.log.execute_read(
            f"SELECT id, title, cwd FROM sessions WHERE status NOT IN ({marks})", ended
        ):
            self.planner.session_created(session, title=title, cwd=cwd)
        for checkpoint, session, title, body, created_at, expires_at in await self.log.execute_read(
            "SELECT id, session, title, body, created_at, expires_at FROM checkpoints "
            "WHERE decision IS NULL"
        ):
            self.planner.checkpoint_raised(
                session,
                checkpoint,
                title=title,
                body=body,
                at=created_at,
                expires_at=expires_at,
                announce=False,
            )

    async def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        for task in [self._clock_task, *self._tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.webhooks.close()

    def attach(self, send_push: SendPush | None) -> None:
        """The relay link to send pushes through (None while it is down); what was
        held while it was away goes now."""
        self._send_push = send_push
        while send_push is not None and self._unsent:
            delivery, device_dh = self._unsent.popleft()
            self._spawn(self._push(send_push, delivery, device_dh))

    # --- commands from devices -------------------------------------------------------

    async def command(self, device: bytes, command: object) -> str:
        if isinstance(command, NotifyTarget):
            return await self._set_target(device, command)
        if isinstance(command, NotifyTargetRemove):
            kinds = [t.kind for t in self.planner.targets(device) if t.id == command.target]
            if not kinds or not self.planner.remove_target(device, command.target):
                raise UsageError(f"no notification target {command.target} here")
            await self.store.db.execute(
                "DELETE FROM notify_targets WHERE device = ? AND target = ?",
                (device, command.target),
            )
            self.webhooks.forget(device, command.target)
            self._status(device, command.target, kinds[0], TargetState.REMOVED, "removed")
            return "removed"
        if isinstance(command, NotifySettings):
            settings = DeviceSettings(frozenset(command.kinds), command.reminder_fraction)
            self.planner.set_settings(device, settings)
            await self.store.db.execute(
                "INSERT INTO notify_settings (device, kinds, reminder_fraction) VALUES (?, ?, ?) "
                "ON CONFLICT (device) DO UPDATE SET kinds = excluded.kinds, "
                "reminder_fraction = excluded.reminder_fraction",
                (device, ",".join(sorted(command.kinds)), command.reminder_fraction),
            )
            return "settings"
        if isinstance(command, NotifyTest):
            deliveries = self.planner.test(device, command.target, at=self.clock())
            if not deliveries:
                raise UsageError(
                    "this device has no notification target on this machine",
                    hint="add one: starmux notify webhook URL",
                )
            self._deliver(deliveries)
            return f"test sent to {len(deliveries)}"
        raise UsageError("not a notification command")  # pragma: no cover

    async def _set_target(self, device: bytes, command: NotifyTarget) -> str:
        if command.target_kind is TargetKind.WEBHOOK:
            check_webhook_url(command.url)
        mine = self.planner.targets(device)
        if len(mine) >= MAX_TARGETS_PER_DEVICE and all(t.id != command.target for t in mine):
            raise UsageError(
                f"a device keeps at most {MAX_TARGETS_PER_DEVICE} targets on a machine",
                hint="remove one: starmux notify remove ID",
            )
        target = Target(command.target, device, command.target_kind, command.content, command.url)
        await self.store.db.execute(
            "INSERT INTO notify_targets (device, target, kind, url, content, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device, target) DO UPDATE SET "
            "kind = excluded.kind, url = excluded.url, content = excluded.content",
            (device, target.id, target.kind.value, target.url, target.content.value, self.clock()),
        )
        self.planner.set_target(target)
        self._health[(device, target.id)] = _Health()
        self._status(device, target.id, target.kind, TargetState.ACTIVE, "registered")
        return "registered"

    def viewing(self, device: bytes, message: Viewing) -> None:
        self.planner.viewing(device, message.session, message.until)

    # --- events in ------------------------------------------------------------------

    def _on_commit(self, events: list[StoredEvent]) -> None:
        deliveries: list[Delivery] = []
        planned = False
        for event in events:
            # Most events are output: telling them apart by kind alone spares a
            # full decode of each, on every commit of a busy session.
            if event.session == NOTIFY_STREAM or APP.claimed_class(event.body) not in _PLANNED:
                continue
            planned = True
            try:
                message = APP.decode(event.body)
            except StarmuxError:
                continue
            if isinstance(message, SessionCreated):
                self.planner.session_created(event.session, title=message.title, cwd=message.cwd)
            elif isinstance(message, CheckpointRaised):
                deliveries += self.planner.checkpoint_raised(
                    event.session,
                    message.checkpoint,
                    title=message.title,
                    body=message.body,
                    at=event.at,
                    expires_at=message.expires_at,
                )
            elif isinstance(message, CheckpointDecided):
                self.planner.checkpoint_decided(message.checkpoint)
            elif isinstance(message, SessionStatusChanged):
                deliveries += self.planner.session_ended(event.session, message.status, at=event.at)
        if planned:  # a new checkpoint may have an earlier reminder
            self._wake.set()
        self._deliver(deliveries)

    async def _reminders(self) -> None:
        while True:
            due = self.planner.next_due()
            self._wake.clear()
            timeout = None if due is None else max(0.0, due - self.clock())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._deliver(self.planner.due(self.clock()))

    # --- deliveries out -------------------------------------------------------------

    def _deliver(self, deliveries: list[Delivery]) -> None:
        now = self.clock()
        for delivery in deliveries:
            target = delivery.target
            if not self.budget.take(f"{target.device.hex()}/{target.id}", now):
                self._count(target, ok=False, detail="over its rate limit: dropped")
                continue
            self._spawn(self._send(delivery))

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, delivery: Delivery) -> None:
        target = delivery.target
        card = await self.card_for(target.device)
        if card is None:
            return  # not a current device of the account (removed): told nothing
        if target.kind is TargetKind.WEBHOOK:
            self.webhooks.submit(target, delivery.notification)
            return
        send = self._send_push
        if send is None:
            if len(self._unsent) == self._unsent.maxlen:
                self._count(self._unsent[0][0].target, ok=False, detail="the relay was away")
            self._unsent.append((delivery, card.dh_public))
            return
        await self._push(send, delivery, card.dh_public)

    async def _push(self, send: SendPush, delivery: Delivery, device_dh: bytes) -> None:
        target = delivery.target
        payload = seal_notification(
            self.keys,
            device_key=target.device,
            device_dh=device_dh,
            notification=delivery.notification,
        )
        try:
            outcome = await send(target.device, payload)
        except StarmuxError as exc:
            self._count(target, ok=False, detail=f"the relay refused it: {exc.message}")
            return
        if outcome is PushOutcome.QUEUED:
            self._count(target, ok=True, detail="delivered")
        elif outcome is PushOutcome.NO_SUBSCRIPTION:
            self._count(target, ok=False, detail="the relay has no push subscription for it")
        else:
            self._count(target, ok=False, detail="over the relay's push rate limit: dropped")

    def _webhook_done(self, outcome: Outcome) -> None:
        self._count(outcome.target, ok=outcome.ok, detail=outcome.detail)

    def _count(self, target: Target, *, ok: bool, detail: str) -> None:
        key = (target.device, target.id)
        if self.planner.targets(target.device) and key not in {
            (t.device, t.id) for t in self.planner.targets(target.device)
        }:
            return  # removed meanwhile
        health = self._health.setdefault(key, _Health())
        if ok:
            health.delivered += 1
        else:
            health.failed += 1
            log.warning("a notification to target %s was not delivered: %s", target.id, detail)
        state = TargetState.ACTIVE if ok else TargetState.FAILING
        # Logged on a change, and on the first delivery (proof that the target works).
        if state is not health.state or (ok and health.delivered == 1):
            health.state = state
            self._status(target.device, target.id, target.kind, state, detail)

    def _status(
        self, device: bytes, target: str, kind: TargetKind, state: TargetState, detail: str
    ) -> None:
        health = self._health.get((device, target), _Health())
        status = NotifyStatus(
            device, target, kind, state, detail[:300], health.delivered, health.failed
        )
        self.log.append_nowait(NOTIFY_STREAM, APP.encode(status), at=self.clock())


def push_sender(link: RelayLink) -> SendPush:
    """``send-push`` over ``link``: the relay answers at once, the POST follows."""

    async def send(device: bytes, payload: bytes) -> PushOutcome:
        reply = await link.request(SendPushRequest(0, device, payload), PushQueued)
        assert isinstance(reply, PushQueued)
        return reply.outcome

    return send
