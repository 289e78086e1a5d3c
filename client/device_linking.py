"""Linking a device, both directions, over the relay (the protocol: starmux.device_link).

Four commands, two ends each way, one conversation (:func:`_converse`):

================================  ==================  ====================
command                           end                 shows the code
================================  ==================  ====================
``starmux devices link``          owner               yes (a link code)
``starmux link CODE``             new device          no
``starmux link --show``           new device          yes (a join code)
``starmux devices add CODE``      owner               no
================================  ==================  ====================

The end that shows the code asks the relay for a ticket and waits for whoever
opens it; the other opens the ticket named in the code. The owner's end appends the
``add`` entry (consuming the ticket) once both persons confirmed; the new device's
end then stores what the owner handed over, in its own fresh home.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import nacl.utils

from starmux.control import (
    NoticeEvent,
    ReportPairingFailure,
    SessionStatus,
    TicketCreated,
    TicketOpened,
)
from starmux.device_control import CreateLinkTicket, OpenLinkTicket
from starmux.device_link import LinkAttempt, Phase
from starmux.device_log import DeviceLog, Op
from starmux.device_roles import DeviceRole
from starmux.errors import StarmuxError, UsageError
from starmux.fingerprint import fingerprint, fingerprints_match
from starmux.identity import IdentityCard, NodeKeys, Role
from starmux.link_code import Direction, LinkCode
from starmux.node.link import Closed, Data, NoticeReceived, RelayLink, RelayRefused
from starmux.pairing import PairingAborted, PairingFailed, abort_body
from starmux.pairing_code import SECRET_SIZE, check_relay_url

from . import device_copy
from .actions import _TICKET_REFUSALS, connected
from .device_actions import append_entry, current_log
from .store import ControllerConfig, ControllerStore

STEP_TIMEOUT = 20.0  # the other end answers by itself
PERSON_WAIT = 300.0  # the other end's person compares the comparison code first
#: what this end waits for in each phase, and for how long
_WAITS = {
    Phase.AWAIT_IDENTITY: ("the other device's answer", STEP_TIMEOUT),
    Phase.AWAIT_FINAL: ("the other device to confirm the comparison code", PERSON_WAIT),
    Phase.AWAIT_ACCEPTED: ("the new device to confirm the comparison code", PERSON_WAIT),
    Phase.AWAIT_WELCOME: ("the owner to confirm and add this device", PERSON_WAIT),
    Phase.AWAIT_STORED: ("the new device to store the account", STEP_TIMEOUT),
}

Show = Callable[[LinkCode, float], None]
Confirm = Callable[[IdentityCard, str], bool]
Status = Callable[[str], None]
#: the owner's append of the ``add`` entry: the log after it, the machines' cards
Adder = Callable[[IdentityCard], Awaitable[tuple[DeviceLog, tuple[bytes, ...]]]]


def _quiet(_text: str) -> None:
    pass


@dataclass(frozen=True)
class Joined:
    """What a new device learnt: who added it, the log (its role in it), machines."""

    owner: IdentityCard
    log: DeviceLog
    role: DeviceRole
    machines: int


# --- the conversation, whichever end and direction ------------------------------------


async def _converse(
    link: RelayLink,
    attempt: LinkAttempt,
    peer: bytes,
    first: bytes | None,
    *,
    ticket: bytes,
    confirm: Confirm,
    status: Status,
    add: Adder | None = None,
) -> bytes | None:
    """Drive one attempt with ``peer`` until it is linked: the handshake, this
    person's confirmation, the owner's append and welcome. Returns the new
    device's last message (sent once it stored everything); failures end the
    attempt on both ends and count against the ticket."""
    try:
        out = attempt.start() if first is None else attempt.receive(first)
        while attempt.phase is not Phase.LINKED:
            if out is not None:
                await link.send_data(peer, out)
            if attempt.phase is Phase.CONFIRMING:
                other = attempt.other
                if other is None or other.sign_public != peer:
                    raise PairingFailed(
                        "the other device's card is not the key the relay connected"
                    )
                if not confirm(other, attempt.comparison_code):
                    raise PairingFailed("link cancelled: the comparison codes were not confirmed")
                out = attempt.accept()
            elif attempt.phase is Phase.ADDING:
                assert add is not None and attempt.other is not None
                try:
                    out = attempt.welcome(*await add(attempt.other))
                except RelayRefused as exc:
                    raise PairingFailed(f"the relay refused the new device: {exc.message}") from exc
                await link.send_data(peer, out)
                # Added for good: a lost last message changes nothing any more.
                with contextlib.suppress(PairingFailed):
                    await _answer(link, attempt, peer, ticket, status)
                return None
            else:
                out = await _answer(link, attempt, peer, ticket, status)
    except PairingFailed as exc:
        if not isinstance(exc, PairingAborted):
            with contextlib.suppress(StarmuxError):
                await link.send_data(peer, abort_body())
                await link.request(ReportPairingFailure(0, ticket))
        raise UsageError(exc.message, hint="start linking again, with a fresh code") from exc
    return out


async def _answer(
    link: RelayLink, attempt: LinkAttempt, peer: bytes, ticket: bytes, status: Status
) -> bytes | None:
    what, patience = _WAITS.get(attempt.phase, ("the other device", STEP_TIMEOUT))
    status(f"waiting for {what}")
    return attempt.receive((await _next_data(link, peer, ticket, patience=patience)).body)


async def _next_data(
    link: RelayLink, peer: bytes | None, ticket: bytes, *, patience: float
) -> Data:
    """The next DATA from ``peer`` (None: from whoever opened our ticket)."""
    try:
        async with asyncio.timeout(patience):
            async for event in link.events():
                if isinstance(event, Data) and (peer is None or event.peer == peer):
                    return event
                if (
                    isinstance(event, NoticeReceived)
                    and event.notice.event is NoticeEvent.TICKET_BURNT
                    and event.notice.subject == ticket
                ):
                    raise PairingFailed("this code was blocked after three failed attempts")
                if isinstance(event, Closed):
                    break
    except TimeoutError as exc:
        raise PairingFailed("the other device stopped answering (or the code expired)") from exc
    raise PairingFailed("the relay connection closed while linking")


# --- the end that shows the code, the end that reads it -------------------------------


async def _shown(
    link: RelayLink, make_code: Callable[[bytes, bytes], LinkCode], show_: Show
) -> tuple[LinkCode, Data]:
    """Hold a fresh ticket, show its code, wait for the first message of whoever
    opens it (until the ticket expires)."""
    created = await link.request(CreateLinkTicket(0), TicketCreated)
    assert isinstance(created, TicketCreated)
    code = make_code(created.ticket, nacl.utils.random(SECRET_SIZE))
    show_(code, created.expires_at)
    patience = max(created.expires_at - time.time(), 1.0)
    try:
        first = await _next_data(link, None, created.ticket, patience=patience)
    except PairingFailed as exc:
        raise UsageError(exc.message, hint="start linking again, with a fresh code") from exc
    return code, first


async def _opened(link: RelayLink, code: LinkCode) -> bytes:
    """Open the code's ticket; the key of the device that shows it."""
    try:
        opened = await link.request(OpenLinkTicket(0, code.ticket), TicketOpened)
    except RelayRefused as exc:
        message, hint = _TICKET_REFUSALS.get(exc.code, (exc.message, exc.hint or ""))
        raise UsageError(
            message.replace("pairing code", "code"),
            hint=hint.replace("the daemon", "the other device"),
        ) from exc
    assert isinstance(opened, TicketOpened)
    if not fingerprints_match(fingerprint(opened.machine_key), code.shower_fingerprint):
        raise UsageError("the device behind this code's ticket is not the one it names; refusing")
    return opened.machine_key


# --- the owner's end -----------------------------------------------------------------------


@dataclass
class _Owner:
    store: ControllerStore
    config: ControllerConfig
    keys: NodeKeys
    card: IdentityCard
    link: RelayLink
    log: DeviceLog

    def adder(self, role: DeviceRole, ticket: bytes) -> Adder:
        async def add(device: IdentityCard) -> tuple[DeviceLog, tuple[bytes, ...]]:
            self.log = await append_entry(
                self.store, self.link, self.log, Op.ADD, device.sign_public,
                card=device, role=role, ticket=ticket,
            )  # fmt: skip
            # The cards this device pinned at pairing, never the relay's list (a
            # malicious relay could slip in a machine of its own).
            return self.log, tuple(m.card for m in await self.store.machines())

        return add


@contextlib.asynccontextmanager
async def _owner(home: Path) -> AsyncIterator[_Owner]:
    async with ControllerStore(home) as store:
        config = await store.config()
        keys = store.keys()
        async with connected(store, config) as link:
            log = await current_log(store, config, link)
            yield _Owner(store, config, keys, keys.card(Role.CONTROLLER, config.name), link, log)


async def invite(
    home: Path, role: DeviceRole, *, show_code: Show, confirm: Confirm
) -> IdentityCard:
    """``devices link``: show a link code, add whoever reads it with ``role``."""
    async with _owner(home) as owner:

        def link_code(ticket: bytes, secret: bytes) -> LinkCode:
            return LinkCode(
                Direction.INVITE,
                owner.config.relay_url,
                fingerprint(owner.config.relay_key),
                ticket,
                owner.keys.fingerprint,
                secret,
                role,
            )

        code, first = await _shown(owner.link, link_code, show_code)
        attempt = LinkAttempt(
            owner.keys, owner.card, code, shows=True, relay_key=owner.config.relay_key,
            account=owner.config.account,
        )  # fmt: skip
        await _converse(
            owner.link, attempt, first.peer, first.body, ticket=code.ticket, confirm=confirm,
            status=_quiet, add=owner.adder(role, code.ticket),
        )  # fmt: skip
        assert attempt.other is not None
        return attempt.other


async def add(
    home: Path, code: LinkCode, role: DeviceRole, *, confirm: Confirm, status: Status = _quiet
) -> IdentityCard:
    """``devices add CODE``: add the new device that shows this join code."""
    async with _owner(home) as owner:
        if not fingerprints_match(fingerprint(owner.config.relay_key), code.relay_fingerprint):
            raise UsageError(
                f"the new device uses the relay {code.relay_fingerprint}, this account's is "
                f"{fingerprint(owner.config.relay_key)}",
                hint="start `starmux link --show` on it with this account's relay",
            )
        peer = await _opened(owner.link, code)
        attempt = LinkAttempt(
            owner.keys, owner.card, code, shows=False, relay_key=owner.config.relay_key,
            account=owner.config.account, role=role,
        )  # fmt: skip
        await _converse(
            owner.link, attempt, peer, None, ticket=code.ticket, confirm=confirm,
            status=status, add=owner.adder(role, code.ticket),
        )  # fmt: skip
        assert attempt.other is not None
        return attempt.other


# --- the new device's end ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _new_device(
    home: Path, relay_url: str, relay_fingerprint: str | None, name: str
) -> AsyncIterator[tuple[ControllerStore, NodeKeys, IdentityCard, RelayLink]]:
    """A fresh home's keys, connected to the relay as a device in no account yet."""
    async with ControllerStore(home) as store:
        try:
            await store.config()
        except UsageError:
            pass  # not set up yet: what a new device should be
        else:
            raise UsageError(
                f"{home} already holds a controller of an account",
                hint="link from a fresh STARMUX_HOME",
            )
        keys = store.keys(create=True)
        card = keys.card(Role.CONTROLLER, name)
        link = RelayLink(check_relay_url(relay_url), keys, card, pinned_relay_key=None)
        auth = await link.connect()
        try:
            # First contact: nothing secret has been sent yet (the link secret never
            # leaves the devices), and the owner checks this key against its pin.
            if relay_fingerprint is not None and not fingerprints_match(
                fingerprint(link.relay_key), relay_fingerprint
            ):
                raise UsageError(
                    f"the relay at {relay_url} is {fingerprint(link.relay_key)}, "
                    f"not {relay_fingerprint}; refusing"
                )
            if auth.status is not SessionStatus.UNREGISTERED:
                raise UsageError("this device's key already belongs to an account")
            yield store, keys, card, link
        finally:
            await link.close()


async def _settle(
    store: ControllerStore,
    link: RelayLink,
    attempt: LinkAttempt,
    last: bytes | None,
    *,
    relay_url: str,
    name: str,
    peer: bytes,
) -> Joined:
    """Store what the owner handed over, then tell it so."""
    assert attempt.log is not None and attempt.other is not None and attempt.role is not None
    await store.save_config(ControllerConfig(relay_url, link.relay_key, attempt.account, name))
    await device_copy.save_copy(store.db, attempt.log)
    for machine in attempt.machines:
        await store.add_machine(machine)
    if last is not None:
        with contextlib.suppress(StarmuxError):
            await link.send_data(peer, last)
    return Joined(attempt.other, attempt.log, attempt.role, len(attempt.machines))


async def join(home: Path, code: LinkCode, *, name: str, confirm: Confirm) -> Joined:
    """``link CODE``: join the account of the owner that shows this link code."""
    async with _new_device(home, code.relay_url, code.relay_fingerprint, name) as (
        store, keys, card, link,
    ):  # fmt: skip
        peer = await _opened(link, code)
        attempt = LinkAttempt(keys, card, code, shows=False, relay_key=link.relay_key)
        last = await _converse(
            link, attempt, peer, None, ticket=code.ticket, confirm=confirm, status=_quiet
        )
        return await _settle(
            store, link, attempt, last, relay_url=code.relay_url, name=name, peer=peer
        )


async def join_shown(
    home: Path,
    relay_url: str,
    *,
    relay_fingerprint: str | None,
    name: str,
    show_code: Show,
    confirm: Confirm,
    status: Status,
) -> Joined:
    """``link --show``: show a join code, join the account of the owner that reads it."""
    async with _new_device(home, relay_url, relay_fingerprint, name) as (store, keys, card, link):

        def join_code(ticket: bytes, secret: bytes) -> LinkCode:
            return LinkCode(
                Direction.JOIN,
                relay_url,
                fingerprint(link.relay_key),
                ticket,
                keys.fingerprint,
                secret,
            )

        code, first = await _shown(link, join_code, show_code)
        status("an owner device opened the code")
        attempt = LinkAttempt(keys, card, code, shows=True, relay_key=link.relay_key)
        last = await _converse(
            link, attempt, first.peer, first.body, ticket=code.ticket, confirm=confirm,
            status=status,
        )  # fmt: skip
        return await _settle(
            store, link, attempt, last, relay_url=relay_url, name=name, peer=first.peer
        )
