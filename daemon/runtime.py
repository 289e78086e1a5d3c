"""The machine daemon's main loop: stay connected, pair when unpaired, obey revocation.

States (one at a time)::

    connecting ──auth ok, unpaired──▶ unpaired (ticket + QR, renewed on expiry)
        ▲                                  │ paired by a controller
        │ backoff+jitter / restart hint    ▼
        └──────── connection lost ◀──── paired (issue: sessions run here)
    revoked (notice or close 4003) ─▶ keys and pairing forgotten ─▶ connecting (new identity)
    relay key differs from the pinned one ─▶ stop with an error (never talk to it)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import nacl.utils

from starmux.control import (
    CreateTicket,
    NoticeEvent,
    ReportPairingFailure,
    SessionStatus,
    TicketCreated,
)
from starmux.e2e import Kind
from starmux.errors import ConnectionLost, RemoteProtocolError, StarmuxError, UsageError
from starmux.fingerprint import fingerprint
from starmux.identity import IdentityCard, NodeKeys, Role
from starmux.node.link import (
    Closed,
    Data,
    LinkEvent,
    NoticeReceived,
    RelayClosedConnection,
    RelayLink,
    RelayRefused,
    connect_failure,
)
from starmux.pairing import MachinePairing, PairingFailed, abort_body
from starmux.pairing_code import PairingCode, check_relay_url
from starmux.reconnect import Forget, LinkFailure, Reconnect, Stop, close_failure
from starmux.relay_auth import RelayKeyMismatch

from . import fleet_settings
from .checkpoints import Checkpoints
from .eventlog import EventLog
from .live import LiveService
from .local_api import LocalApiServer
from .sessions import SessionManager
from .store import DATABASE_FILE, DaemonStore, PairedController
from .taskqueue import TaskQueue
from .taskrunner import TaskRunner
from .terminal import Terminal

API_SOCKET = "api.sock"

log = logging.getLogger("starmux.daemon")


class DaemonStopped(StarmuxError):
    """The daemon cannot go on (e.g. the relay's key changed); exit non-zero."""


class _Revoked(Exception):
    """Internal: the relay revoked this machine."""


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
    ) -> None:
        self.home = home
        self._fleet_flags = (tuple(tags), capacity)
        self.allow_roots = list(allow_roots) or [Path.home()]
        self.live: LiveService | None = None
        self.store = DaemonStore(home)
        self.terminal = terminal
        self._relay_url_flag = check_relay_url(relay_url) if relay_url else None
        self._name_flag = name
        self.reconnect = Reconnect()
        self._status_hook = status_hook
        self.keys: NodeKeys | None = None
        self.card: IdentityCard | None = None

    def _set_status(self, state: str, **fields: object) -> None:
        hook = self._status_hook
        if callable(hook):
            hook(state=state, **fields)

    async def run(self) -> None:
        await self.store.open()
        self.log = await EventLog.open(self.home / DATABASE_FILE)
        self.sessions = SessionManager(
            self.log, allowed_roots=self.allow_roots, api_socket=self.home / API_SOCKET
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

    async def _services(self, keys: NodeKeys, card: IdentityCard) -> LiveService:
        """Checkpoints, the local API and the live service for this identity."""
        if self.live is not None and self.live.keys == keys:
            return self.live
        if self.live is not None:
            self.live.close()
        checkpoints = Checkpoints(self.log, self.sessions, self.store, machine_key=keys.sign_public)
        await checkpoints.expire_stale()
        if self.api is not None:
            await self.api.close()
        self.api = LocalApiServer(self.home / API_SOCKET, checkpoints)
        await self.api.start()
        self.live = LiveService(
            keys=keys,
            card=card,
            store=self.store,
            log=self.log,
            sessions=self.sessions,
            checkpoints=checkpoints,
            tasks=self.tasks,
        )
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
        name = await self.store.setting("name") or _default_name()
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
            "connecting", machine_fingerprint=keys.fingerprint, relay_url=self.relay_url
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
        except _Revoked:
            await link.close()
            await self._follow(LinkFailure.REVOKED, None)
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
            await self._forget_revoked_identity()
            return
        delay = step.delay
        if step.hinted:
            self.terminal.event(
                "relay-restarting", f"relay restarting; reconnecting in {delay:.1f}s", delay=delay
            )
        else:
            why = "relay not listening" if failure is LinkFailure.REFUSED else _why(cause)
            self.terminal.event(
                "reconnecting",
                f"{why}; retrying in {delay:.1f}s",
                reason="refused" if failure is LinkFailure.REFUSED else why,
                delay=round(delay, 2),
            )
        await asyncio.sleep(delay)
        self.reconnect.retrying()

    def _stopped(self, failure: LinkFailure, cause: object) -> DaemonStopped:
        if isinstance(cause, RelayKeyMismatch):
            self.terminal.event(
                "relay-key-mismatch", f"REFUSING the relay: {cause.message}", message=cause.message
            )
            return DaemonStopped(cause.message, hint=cause.hint)
        if failure is LinkFailure.REPLACED:
            return DaemonStopped(
                "another daemon connected with this machine's key",
                hint="stop the other daemon (same STARMUX_HOME copied?)",
            )
        return DaemonStopped("the relay refused this machine's authentication")

    _restart_hint: float | None = None

    async def _serve(self, link: RelayLink, status: SessionStatus) -> Closed:
        if status is SessionStatus.UNPAIRED:
            if await self.store.controllers():
                # The relay forgot us (registry reset?) but we still hold a grant.
                self.terminal.event(
                    "pairing-lost", "the relay no longer knows this machine; pairing again"
                )
                await self.store.forget_pairing()
            closed = await self._unpaired(link)
            if closed is not None:
                return closed
        return await self._paired(link)

    # --- unpaired: tickets, QR, the pairing handshake -------------------------------

    async def _unpaired(self, link: RelayLink) -> Closed | None:
        """Offer pairing until paired (returns None) or the connection closes."""
        assert self.keys is not None and self.card is not None
        while True:
            ticket = await link.request(CreateTicket(0), TicketCreated)
            assert isinstance(ticket, TicketCreated)
            secret = nacl.utils.random(32)
            code = PairingCode(
                self.relay_url,
                fingerprint(link.relay_key),
                ticket.ticket,
                self.keys.fingerprint,
                secret,
            )
            self._set_status("unpaired", machine_fingerprint=self.keys.fingerprint)
            self.terminal.pairing(
                code=code.to_text(),
                machine_fingerprint=self.keys.fingerprint,
                machine_name=self.card.name,
                expires_in=ticket.expires_at - time.time(),
            )
            outcome = await self._offer(link, ticket, secret)
            if outcome == "expired":
                continue
            if isinstance(outcome, Closed):
                return outcome
            return None

    async def _offer(
        self, link: RelayLink, ticket: TicketCreated, secret: bytes
    ) -> str | Closed | PairedController:
        assert self.keys is not None and self.card is not None
        responder = self._responder(link, ticket.ticket, secret)
        partner: bytes | None = None
        while True:
            remaining = ticket.expires_at - time.time()
            if remaining <= 0:
                self.terminal.event("ticket-expired", "the pairing code expired; here is a new one")
                return "expired"
            self.terminal.countdown(remaining)
            try:
                async with asyncio.timeout(min(1.0, remaining)):
                    event = await link.next_event()
            except TimeoutError:
                continue
            if isinstance(event, Closed):
                return event
            if isinstance(event, NoticeReceived) and event.notice.event is NoticeEvent.RESTARTING:
                self._restart_hint = event.notice.retry_after
                continue
            if not isinstance(event, Data):
                continue
            if partner is not None and event.peer != partner:
                continue  # one controller at a time: the relay links only the opener
            if event.body[:1] == bytes((Kind.PAIR_ABORT,)):
                # The controller gave up and counted it; start over quietly.
                responder = self._responder(link, ticket.ticket, secret)
                partner = None
                continue
            partner = event.peer
            try:
                reply = responder.receive(event.body)
            except PairingFailed as exc:
                self.terminal.event(
                    "pairing-failed", f"pairing attempt failed: {exc}", reason=str(exc)
                )
                with contextlib.suppress(StarmuxError):
                    await link.send_data(event.peer, abort_body())
                    await link.request(ReportPairingFailure(0, ticket.ticket))
                responder = self._responder(link, ticket.ticket, secret)
                partner = None
                continue
            if reply is not None:
                await link.send_data(event.peer, reply)
            if responder.phase.value == "await-grant" and responder.controller_card:
                self.terminal.event(
                    "pairing-handshake",
                    f"controller {responder.controller_card.fingerprint} is pairing; "
                    f"comparison code: {responder.comparison_code}",
                    controller_fingerprint=responder.controller_card.fingerprint,
                    comparison_code=responder.comparison_code,
                )
            if responder.grant is not None and responder.controller_card is not None:
                controller = PairedController(
                    responder.controller_card.sign_public,
                    responder.controller_card,
                    responder.account,
                    responder.grant.signature,
                    responder.grant.issued_at,
                    time.time(),
                )
                await self.store.add_controller(controller)
                await self.store.audit(
                    "paired",
                    actor=controller.key,
                    detail=f"account {controller.account.hex()}",
                    now=time.time(),
                )
                self.terminal.event(
                    "paired",
                    f"paired by controller {controller.card.name} "
                    f"({controller.card.fingerprint}); comparison code "
                    f"{responder.comparison_code}",
                    controller_fingerprint=controller.card.fingerprint,
                    controller_name=controller.card.name,
                    comparison_code=responder.comparison_code,
                )
                return controller

    def _responder(self, link: RelayLink, ticket: bytes, secret: bytes) -> MachinePairing:
        assert self.keys is not None and self.card is not None
        return MachinePairing(
            self.keys, self.card, relay_key=link.relay_key, ticket=ticket, secret=secret
        )

    # --- paired ------------------------------------------------------------------------

    async def _paired(self, link: RelayLink) -> Closed:
        assert self.keys is not None and self.card is not None
        live = await self._services(self.keys, self.card)
        live.attach(link.send_data, link.relay_key)
        try:
            return await self._paired_loop(link, live)
        finally:
            live.detach()

    async def _paired_loop(self, link: RelayLink, live: LiveService) -> Closed:
        assert self.keys is not None
        controllers = await self.store.controllers()
        self._set_status(
            "paired", machine_fingerprint=self.keys.fingerprint, controllers=len(controllers)
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
        if isinstance(event, NoticeReceived):
            notice = event.notice
            if (
                notice.event is NoticeEvent.REVOKED
                and self.keys is not None
                and (notice.subject == self.keys.sign_public)
            ):
                raise _Revoked
            if notice.event is NoticeEvent.RESTARTING:
                self._restart_hint = notice.retry_after
        elif isinstance(event, Data):
            await live.on_data(event.peer, event.body)

    async def _forget_revoked_identity(self) -> None:
        old = self.keys.fingerprint if self.keys else "?"
        await self.store.audit("revoked", actor=b"", detail=f"machine {old}", now=time.time())
        await self.store.forget_pairing()
        self.store.forget_keys()
        self.terminal.event(
            "revoked",
            f"this machine ({old}) was REVOKED by its controller: its keys are deleted; "
            "a new identity is created for pairing again",
            machine_fingerprint=old,
        )


def _why(cause: object) -> str:
    if isinstance(cause, Closed):
        return f"connection to the relay lost ({cause.reason})"
    if isinstance(cause, RelayClosedConnection):
        return f"the relay refused the connection ({cause.code})"
    return str(cause)


def _default_name() -> str:
    import socket

    return (socket.gethostname() or "machine")[:64]


__all__ = ["Daemon", "DaemonStopped", "Kind", "RelayRefused"]
