"""The machine daemon's main loop: stay connected, pair when unpaired, obey revocation.

States (one at a time, :class:`DaemonState`)::

    connecting ──auth ok, unpaired──▶ unpaired (ticket + QR, renewed on expiry)
        ▲                                  │ paired by a controller
        │ backoff+jitter / restart hint    ▼
        └──────── connection lost ◀──── paired (issue: sessions run here)
    revoked (a controller-signed revoke, verified) ─▶ keys and pairing forgotten
        ─▶ connecting (new identity)

What the relay alone can NOT do (it is not trusted with the machine's identity):
a REVOKED notice, close code 4003 or a WELCOME saying "unpaired" never delete keys
or controllers (:mod:`starmux.revocation`); a relay whose key differs from the pinned
one is refused loudly and retried with backoff while the sessions keep running.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from starmux.control import (
    CreateTicket,
    MachineRevocation,
    NoticeEvent,
    ReportPairingFailure,
    SessionStatus,
    TicketCreated,
)
from starmux.device_roles import Action, allowed
from starmux.e2e import Kind
from starmux.errors import ConnectionLost, RemoteProtocolError, StarmuxError, UsageError
from starmux.identity import IdentityCard, NodeKeys, Role
from starmux.node.answers import read_answer
from starmux.node.link import (
    Closed,
    Data,
    LinkEvent,
    NoticeReceived,
    RelayLink,
    RelayRefused,
    RevocationReceived,
    connect_failure,
)
from starmux.pairing_code import check_relay_url
from starmux.pairing_offer import (
    AskConfirmation,
    Effect,
    Paired,
    PairingOffer,
    ReportFailure,
    RequestTicket,
    Say,
    SendData,
    ShowCode,
)
from starmux.reconnect import Forget, LinkFailure, Reconnect, Stop, close_failure
from starmux.relay_auth import RelayKeyMismatch
from starmux.revocation import revoking_controller

from . import fleet_settings, link_words, start_flags
from .checkpoints import Checkpoints
from .devices import DeviceGate
from .eventlog import EventLog
from .live import LiveService
from .local_api import LocalApiServer
from .notifications import Notifications, push_sender
from .process import DaemonState
from .sessions import SessionManager
from .store import DATABASE_FILE, DaemonStore, PairedController
from .taskqueue import TaskQueue
from .taskrunner import TaskRunner
from .terminal import Terminal
from .transfers import MachineTransfers, file_size_cap, unclaimed_upload_ttl

API_SOCKET = "api.sock"
#: the card name the relay sees with ``daemon start --private-name``
GENERIC_NAME = "machine"

log = logging.getLogger("starmux.daemon")


class DaemonStopped(StarmuxError):
    """The daemon cannot go on (e.g. the relay's key changed); exit non-zero."""


class _Revoked(Exception):
    """Internal: a controller's signed revocation of this machine verified."""

    def __init__(self, by: bytes) -> None:
        super().__init__("revoked")
        self.by = by


class Daemon:
    def __init__(
        self,
        home: Path,
        *,
        relay_url: str | None,
        name: str | None,
        terminal: Terminal,
        status_hook: object = None,
        allow_roots: Sequence[Path] = (),
        tags: Sequence[str] = (),
        capacity: int | None = None,
        confirm: bool = False,
        allow_env: Sequence[str] | None = None,
        private_name: bool = False,
    ) -> None:
        self._private_name_flag = private_name
        self.real_name = ""
        self.confirm = confirm
        self._allow_env_flag = allow_env
        self.home = home
        self._fleet_flags = (tuple(tags), capacity)
        self._allow_roots_flag = [Path(root).expanduser().resolve() for root in allow_roots]
        self.allow_roots = self._allow_roots_flag or [Path.home()]
        self.live: LiveService | None = None
        self.store = DaemonStore(home)
        self.terminal = terminal
        self._relay_url_flag = check_relay_url(relay_url) if relay_url else None
        self._name_flag = name
        self.reconnect = Reconnect()
        self._status_hook = status_hook
        self.keys: NodeKeys | None = None
        self.card: IdentityCard | None = None

    def _set_status(self, state: DaemonState, **fields: object) -> None:
        hook = self._status_hook
        if callable(hook):
            hook(state=state, **fields)

    async def run(self) -> None:
        await self.store.open()
        self.allow_roots = await start_flags.allowed_roots(self.store, self._allow_roots_flag)
        self._set_status(DaemonState.STARTING, allow_roots=[str(root) for root in self.allow_roots])
        self.log = await EventLog.open(self.home / DATABASE_FILE)
        self.sessions = SessionManager(
            self.log,
            allowed_roots=self.allow_roots,
            api_socket=self.home / API_SOCKET,
            allowed_env=await start_flags.allowed_env(self.store, self._allow_env_flag),
        )
        self.task_queue = await TaskQueue.open(self.home / DATABASE_FILE)
        try:
            await self._configure()
            self.tasks = TaskRunner(
                self.task_queue,
                self.sessions,
                self.log,
                capacity=self.fleet.capacity,
                tags=self.fleet.tags,
            )
            for task in await self.task_queue.recover(now=time.time()):
                self.terminal.event("task-lost", f"task {task.id} was lost", task=task.id)
                await self.tasks.report_lost(task)
            for session in await self.sessions.recover():
                self.terminal.event(
                    "session-lost",
                    f"session {session} was lost: its process ended with the previous daemon",
                    session=session,
                )
            await self.tasks.report_load()  # tags or capacity may have changed
            await self.tasks.pump()  # what was waiting before the restart
            while True:
                await self._connect_once()
        finally:
            if self.notifications is not None:
                await self.notifications.close()
            if self.api is not None:
                await self.api.close()
            await self.sessions.close()
            if self.tasks is not None:
                await self.tasks.close()
            await self.task_queue.close()
            await self.log.close()
            await self.store.close()

    api: LocalApiServer | None = None
    tasks: TaskRunner | None = None
    notifications: Notifications | None = None

    async def _services(self, keys: NodeKeys, card: IdentityCard) -> LiveService:
        """Checkpoints, the local API and the live service for this identity."""
        if self.live is not None and self.live.keys == keys:
            return self.live
        if self.live is not None:
            self.live.close()
        if self.notifications is not None:
            await self.notifications.close()
        checkpoints = Checkpoints(self.log, self.sessions, self.store, machine_key=keys.sign_public)
        await checkpoints.expire_stale()
        if self.api is not None:
            await self.api.close()
        transfers = MachineTransfers(
            self.home,
            self.log,
            allowed_roots=lambda: self.allow_roots,
            cap=file_size_cap(),
            clock=self.sessions.clock,
            report=self.terminal.event,
            unclaimed_ttl=unclaimed_upload_ttl(),
        )
        self.api = LocalApiServer(
            self.home / API_SOCKET,
            checkpoints,
            authorize=self.sessions.token_matches,
            artifacts=transfers,
        )
        await self.api.start()
        self.live = LiveService(
            keys=keys,
            card=card,
            store=self.store,
            log=self.log,
            sessions=self.sessions,
            checkpoints=checkpoints,
            tasks=self.tasks,
            transfers=transfers,
        )
        self.notifications = Notifications(
            log=self.log,
            store=self.store,
            keys=keys,
            machine_name=self.real_name or card.name,
            card_for=self.live.devices.card_for,
        )
        await self.notifications.open()
        self.live.notifications = self.notifications
        return self.live

    async def _configure(self) -> None:
        stored = await self.store.setting("relay_url")
        if self._relay_url_flag and stored and self._relay_url_flag != stored:
            if await self.store.controllers():
                raise UsageError(
                    f"this machine is paired through {stored}",
                    hint="run `starmux daemon start` without --relay, or revoke it from the "
                    "controller first to pair it through another relay",
                )
            await self.store.db.execute("DELETE FROM settings WHERE name = 'relay_key'")
        url = self._relay_url_flag or stored
        if not url:
            raise UsageError(
                "no relay configured for this machine",
                hint="run `starmux daemon start --relay ws://RELAY:8765`",
            )
        await self.store.set_setting("relay_url", url)
        if self._name_flag:
            await self.store.set_setting("name", self._name_flag)
        tags, capacity = self._fleet_flags
        self.fleet = await fleet_settings.settle(self.store, tags=tags, capacity=capacity)
        self.relay_url = url

    async def _identity(self) -> tuple[NodeKeys, IdentityCard]:
        keys, created = self.store.keys()
        name = self.real_name = await self.store.setting("name") or start_flags.default_name()
        if self._private_name_flag:
            await self.store.set_setting("private_name", "1")
        if await self.store.setting("private_name"):
            # The relay sees the card: it gets a generic name; controllers learn the
            # real one inside the encrypted pairing (PairingAccepted).
            name = GENERIC_NAME
        if created:
            self.terminal.event(
                "identity-created",
                f"created this machine's keys: {keys.fingerprint}",
                fingerprint=keys.fingerprint,
            )
        return keys, keys.card(Role.MACHINE, name)

    async def _connect_once(self) -> None:
        keys, card = await self._identity()
        self.keys, self.card = keys, card
        pinned = await self.store.relay_key()
        link = RelayLink(self.relay_url, keys, card, pinned_relay_key=pinned)
        self._set_status(
            DaemonState.CONNECTING, machine_fingerprint=keys.fingerprint, relay_url=self.relay_url
        )
        try:
            auth = await link.connect()
        except (ConnectionLost, OSError, RemoteProtocolError, RelayKeyMismatch) as exc:
            await self._follow(connect_failure(exc), exc)
            return
        if pinned is None:
            await self.store.set_setting("relay_key", link.relay_key)
        self.reconnect.connected()
        try:
            closed = await self._serve(link, auth.status)
        except _Revoked as revoked:
            await link.close()
            self._revoked_by = revoked.by
            await self._follow(LinkFailure.REVOKED, None)
            return
        except (RelayRefused, ConnectionLost) as exc:
            # E.g. ticket creation rate-limited (any key on this IP spends that budget),
            # or the connection died under a send: reconnect, never end the daemon.
            await link.close()
            await self._follow(LinkFailure.LOST, exc)
            return
        finally:
            await link.close()
        if self._restart_hint is not None:
            self.reconnect.restart_hint(self._restart_hint)
            self._restart_hint = None
        await self._follow(close_failure(closed.code, connected=True), closed)

    async def _follow(
        self, failure: LinkFailure, cause: StarmuxError | OSError | Closed | None
    ) -> None:
        """Do what the reconnect policy says after ``failure``: wait, forget, or stop."""
        step = self.reconnect.failed(failure, now=time.monotonic())
        if isinstance(step, Stop):
            raise self._stopped(failure, cause) from (
                cause if isinstance(cause, BaseException) else None
            )
        if isinstance(step, Forget):
            await self._forget_revoked_identity(self._revoked_by)
            return
        delay = step.delay
        if step.hinted:
            self.terminal.event(
                "relay-restarting", f"relay restarting; reconnecting in {delay:.1f}s", delay=delay
            )
        else:
            why = link_words.why(failure, cause)
            self.terminal.event(
                link_words.event_of(failure),
                f"{why}; retrying in {delay:.1f}s",
                reason="refused" if failure is LinkFailure.REFUSED else why,
                delay=round(delay, 2),
            )
        await asyncio.sleep(delay)
        self.reconnect.retrying()

    def _stopped(self, failure: LinkFailure, cause: object) -> DaemonStopped:
        if failure is LinkFailure.REPLACED:
            return DaemonStopped(
                "another daemon connected with this machine's key",
                hint="stop the other daemon (same STARMUX_HOME copied?)",
            )
        return DaemonStopped("the relay refused this machine's authentication")

    _revoked_by: bytes = b""
    _restart_hint: float | None = None

    async def _serve(self, link: RelayLink, status: SessionStatus) -> Closed:
        if status is SessionStatus.UNPAIRED:
            if await self.store.controllers():
                # The relay forgot us (registry reset?) or lies: keep the controllers
                # until a new pairing succeeds, so a relay alone cannot unpair us.
                self.terminal.event(
                    "pairing-lost",
                    "the relay no longer knows this machine; offering pairing again "
                    "(its controllers stay until a new pairing succeeds)",
                )
            closed = await self._unpaired(link)
            if closed is not None:
                return closed
        return await self._paired(link)

    # --- unpaired: the pairing offer (starmux.pairing_offer) pumped here ------------

    async def _unpaired(self, link: RelayLink) -> Closed | None:
        """Offer pairing until paired (returns None) or the connection closes."""
        assert self.keys is not None and self.card is not None
        offer = PairingOffer(
            self.keys,
            self.card,
            relay_url=self.relay_url,
            relay_key=link.relay_key,
            confirm=self.confirm,
            private_name=self.real_name if self.card.name == GENERIC_NAME else "",
        )
        self._set_status(DaemonState.UNPAIRED, machine_fingerprint=self.keys.fingerprint)
        effects = collections.deque(offer.start())
        answer: asyncio.Future[str] | None = None
        while True:
            while effects:
                effect = effects.popleft()
                if isinstance(effect, AskConfirmation) and answer is None:
                    answer = self._ask(effect)
                if await self._carry_out(link, offer, effect, effects):
                    return None
            remaining = offer.expires_at - time.time()
            self.terminal.countdown(remaining)
            event_task = asyncio.ensure_future(link.next_event())
            waiting: set[asyncio.Future[Any]] = {event_task}
            if answer is not None:
                waiting.add(answer)
            done, _ = await asyncio.wait(
                waiting, timeout=max(0.0, min(1.0, remaining)), return_when=asyncio.FIRST_COMPLETED
            )
            if answer is not None and answer in done:
                effects.extend(offer.answered(answer.result().strip().lower() in ("y", "yes")))
                answer = None
            if event_task not in done:
                event_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await event_task
                effects.extend(offer.tick(time.time()))
                continue
            event = event_task.result()
            if isinstance(event, Closed):
                return event
            if isinstance(event, NoticeReceived) and event.notice.event is NoticeEvent.RESTARTING:
                self._restart_hint = event.notice.retry_after
            elif (
                isinstance(event, NoticeReceived) and event.notice.event is NoticeEvent.TICKET_BURNT
            ):
                effects.extend(offer.ticket_burnt(event.notice.subject))
            elif isinstance(event, Data):
                effects.extend(offer.data(event.peer, event.body))

    def _ask(self, question: AskConfirmation) -> asyncio.Future[str]:
        """Ask the person at the machine (stdin) without stopping the offer's pump."""
        self.terminal.event(
            "confirm-comparison-code",
            f"Does controller {question.controller.fingerprint} show the comparison code "
            f"{question.comparison_code}? Type y and Enter to accept the pairing, n to refuse:",
            controller_fingerprint=question.controller.fingerprint,
            comparison_code=question.comparison_code,
        )
        return asyncio.ensure_future(read_answer())

    async def _carry_out(
        self,
        link: RelayLink,
        offer: PairingOffer,
        effect: Effect,
        effects: collections.deque[Effect],
    ) -> bool:
        """Do one effect of the offer; True once paired."""
        assert self.keys is not None and self.card is not None
        if isinstance(effect, RequestTicket):
            ticket = await link.request(CreateTicket(0), TicketCreated)
            assert isinstance(ticket, TicketCreated)
            effects.extend(offer.ticket_created(ticket.ticket, ticket.expires_at))
        elif isinstance(effect, ShowCode):
            self.terminal.pairing(
                code=effect.code.to_text(),
                machine_fingerprint=self.keys.fingerprint,
                machine_name=self.card.name,
                expires_in=effect.expires_at - time.time(),
            )
        elif isinstance(effect, SendData):
            with contextlib.suppress(ConnectionLost):  # the Closed event follows
                await link.send_data(effect.peer, effect.body)
        elif isinstance(effect, ReportFailure):
            with contextlib.suppress(StarmuxError):
                await link.request(ReportPairingFailure(0, effect.ticket))
        elif isinstance(effect, Say):
            self.terminal.event(effect.event, effect.text)
        elif isinstance(effect, Paired):
            await self._store_pairing(effect)
            return True
        return False

    async def _store_pairing(self, paired: Paired) -> None:
        controller = PairedController(
            paired.controller.sign_public,
            paired.controller,
            paired.account,
            paired.grant.signature,
            paired.grant.issued_at,
            time.time(),
        )
        # A new pairing replaces the old controllers (the relay no longer knew them,
        # or this is the first pairing).
        await self.store.forget_pairing()
        await self.store.add_controller(controller)
        self.terminal.forget_code()
        await self.store.audit(
            "paired",
            actor=controller.key,
            detail=f"account {controller.account.hex()}",
            now=time.time(),
        )
        self.terminal.event(
            "paired",
            f"paired by controller {controller.card.name} "
            f"({controller.card.fingerprint}); comparison code {paired.comparison_code}",
            controller_fingerprint=controller.card.fingerprint,
            controller_name=controller.card.name,
            comparison_code=paired.comparison_code,
        )

    # --- paired ------------------------------------------------------------------------

    async def _paired(self, link: RelayLink) -> Closed:
        assert self.keys is not None and self.card is not None
        live = await self._services(self.keys, self.card)
        live.attach(link.send_data, link.relay_key)
        if self.notifications is not None:
            self.notifications.attach(push_sender(link))
        try:
            return await self._paired_loop(link, live)
        finally:
            live.detach()
            if self.notifications is not None:
                self.notifications.attach(None)

    async def _paired_loop(self, link: RelayLink, live: LiveService) -> Closed:
        assert self.keys is not None
        controllers = await self.store.controllers()
        self._set_status(
            DaemonState.PAIRED,
            machine_fingerprint=self.keys.fingerprint,
            controllers=len(controllers),
        )
        self.terminal.event(
            "connected",
            f"connected to {self.relay_url} as "
            f"{self.keys.fingerprint}; paired with "
            f"{', '.join(c.card.name for c in controllers) or 'a controller'}",
            relay_url=self.relay_url,
        )
        async for event in link.events():
            if isinstance(event, Closed):
                return event
            await self._paired_event(live, event)
        return Closed(None, "link ended")

    async def _paired_event(self, live: LiveService, event: LinkEvent) -> None:
        if isinstance(event, RevocationReceived):
            await self._check_revocation(event.revocation, live.devices)
        elif isinstance(event, NoticeReceived):
            notice = event.notice
            # A bare REVOKED notice is the relay's word only: the signed revocation
            # follows it when a controller really revoked us (see _check_revocation).
            if notice.event is NoticeEvent.RESTARTING:
                self._restart_hint = notice.retry_after
        elif isinstance(event, Data):
            await live.on_data(event.peer, event.body)

    async def _check_revocation(self, revocation: MachineRevocation, devices: DeviceGate) -> None:
        assert self.keys is not None
        paired = await self.store.controllers()
        controllers = [(c.key, c.account) for c in paired]
        accounts = {c.account for c in paired}
        # Another device of the account may revoke too, if this machine's verified
        # device log says it is current with a role that allows it.
        role = await devices.role_of(revocation.revoked_by)
        if len(accounts) == 1 and allowed(role, Action.REVOKE_MACHINE):
            controllers.append((revocation.revoked_by, accounts.pop()))
        by = revoking_controller(
            revocation, machine_key=self.keys.sign_public, controllers=controllers
        )
        if by is None:
            self.terminal.event(
                "revocation-refused",
                "the relay sent a revocation that no controller of this machine signed: "
                "ignoring it",
            )
            return
        raise _Revoked(by)

    async def _forget_revoked_identity(self, by: bytes) -> None:
        old = self.keys.fingerprint if self.keys else "?"
        await self.store.audit("revoked", actor=by, detail=f"machine {old}", now=time.time())
        await self.store.forget_pairing()
        self.store.forget_keys()
        self.terminal.event(
            "revoked",
            f"this machine ({old}) was REVOKED by its controller: its keys are deleted; "
            "a new identity is created for pairing again",
            machine_fingerprint=old,
        )


#: the terminal event for a failure that needs explaining
__all__ = ["Daemon", "DaemonStopped", "Kind", "RelayRefused"]
