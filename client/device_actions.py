"""What the device commands do (``devices``, ``devices link/remove/role``, ``link``).

Over the same controller store and relay link as every other command; the device
log rules themselves live in :mod:`starmux.device_log` (an append this device may
not make fails there, before anything is sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nacl.utils

from starmux.control import (
    ReportPairingFailure,
    SessionStatus,
    TicketCreated,
    TicketOpened,
)
from starmux.device_control import (
    AppendDeviceLog,
    CreateLinkTicket,
    DeviceLogAppended,
    DeviceLogState,
    GetDeviceLog,
    OpenLinkTicket,
)
from starmux.device_link import Inviter, LinkCode, NewDevice, Phase
from starmux.device_log import Device, DeviceLog, Op, encode_entries
from starmux.device_roles import DeviceRole
from starmux.errors import DeviceLogError, StarmuxError, UsageError
from starmux.fingerprint import fingerprint, fingerprints_match
from starmux.identity import IdentityCard, Role
from starmux.node.link import Data, RelayLink, RelayRefused
from starmux.pairing import PairingAborted, PairingFailed, abort_body
from starmux.pairing_code import SECRET_SIZE

from . import device_copy
from .actions import _TICKET_REFUSALS, connected
from .store import ControllerConfig, ControllerStore

LINK_WAIT = 600.0  # how long `devices link` waits for the new device, at most
STEP_TIMEOUT = 20.0


@dataclass(frozen=True)
class DeviceView:
    name: str
    role: str
    fingerprint: str
    added_by: str
    added_at: float
    online: bool
    this_device: bool


async def _current(store: ControllerStore, config: ControllerConfig, link: RelayLink) -> DeviceLog:
    keys = store.keys()
    copy = await device_copy.refresh(
        store.db,
        link,
        await device_copy.load_copy(store.db),
        keys=keys,
        card=keys.card(Role.CONTROLLER, config.name),
        account=config.account,
        now=time.time(),
    )
    if copy is None:
        raise UsageError(
            "this relay keeps no device log for the account",
            hint="update the relay; an account on an older relay has one device",
        )
    return copy


async def devices(home: Path) -> list[DeviceView]:
    async with ControllerStore(home) as store:
        config = await store.config()
        async with connected(store, config) as link:
            log = await _current(store, config, link)
            state = await link.request(GetDeviceLog(0, log.head.seq), DeviceLogState)
        assert isinstance(state, DeviceLogState)
        online = set(state.online)
        me = store.keys().sign_public

        def name_of(key: bytes) -> str:
            device = log.device(key)
            return device.name if device is not None else fingerprint(key)

        return [
            DeviceView(
                d.name,
                d.role.value,
                d.fingerprint,
                name_of(d.added_by),
                d.added_at,
                d.key in online,
                d.key == me,
            )
            for d in log.devices
        ]


def _find(log: DeviceLog, query: str) -> Device:
    matches = [d for d in log.devices if d.name == query]
    if not matches:
        compact = query.replace("-", "").upper()
        matches = [
            d for d in log.devices if compact and d.fingerprint.replace("-", "").startswith(compact)
        ]
    if len(matches) != 1:
        raise UsageError(
            f"{'no' if not matches else 'more than one'} device matches {query[:60]!r}",
            hint="see `starmux devices` for names and fingerprints",
        )
    return matches[0]


async def _append(
    store: ControllerStore,
    link: RelayLink,
    log: DeviceLog,
    entry_op: Op,
    subject: bytes,
    *,
    card: IdentityCard | None = None,
    role: DeviceRole | None = None,
    ticket: bytes = b"",
) -> DeviceLog:
    keys = store.keys()
    try:
        new, entry = log.append(keys, entry_op, subject, card=card, role=role, at=time.time())
    except DeviceLogError as exc:
        raise UsageError(exc.message, hint=_why(exc)) from exc
    await link.request(AppendDeviceLog(0, encode_entries([entry]), ticket), DeviceLogAppended)
    await device_copy.save_copy(store.db, new)
    return new


def _why(exc: DeviceLogError) -> str:
    from starmux.errors import DeviceLogAuthorityError, DeviceLogLastOwnerError

    if isinstance(exc, DeviceLogAuthorityError):
        return "only an owner device can change the account's devices"
    if isinstance(exc, DeviceLogLastOwnerError):
        return "make another device owner first: starmux devices role NAME owner"
    return "see `starmux devices`"


async def remove(home: Path, query: str) -> Device:
    async with ControllerStore(home) as store:
        config = await store.config()
        async with connected(store, config) as link:
            log = await _current(store, config, link)
            device = _find(log, query)
            await _append(store, link, log, Op.REMOVE, device.key)
            return device


async def set_role(home: Path, query: str, role: DeviceRole) -> Device:
    async with ControllerStore(home) as store:
        config = await store.config()
        async with connected(store, config) as link:
            log = await _current(store, config, link)
            device = _find(log, query)
            if device.role is not role:
                await _append(store, link, log, Op.SET_ROLE, device.key, role=role)
            return device


# --- linking: the inviter -------------------------------------------------------------


async def invite(
    home: Path,
    role: DeviceRole,
    *,
    show: Callable[[LinkCode, float], None],
    confirm: Callable[[IdentityCard, str], bool],
) -> IdentityCard:
    """``devices link`` on an owner: show a code, link whoever runs it, hand over."""
    async with ControllerStore(home) as store:
        config = await store.config()
        keys = store.keys()
        card = keys.card(Role.CONTROLLER, config.name)
        async with connected(store, config) as link:
            log = await _current(store, config, link)
            ticket = await link.request(CreateLinkTicket(0), TicketCreated)
            assert isinstance(ticket, TicketCreated)
            secret = nacl.utils.random(SECRET_SIZE)
            code = LinkCode(
                config.relay_url,
                fingerprint(config.relay_key),
                ticket.ticket,
                keys.fingerprint,
                secret,
                role,
            )
            show(code, ticket.expires_at)
            inviter = Inviter(
                keys,
                card,
                account=config.account,
                relay_key=config.relay_key,
                ticket=ticket.ticket,
                secret=secret,
            )
            first = await _next_data(link, None, patience=max(ticket.expires_at - time.time(), 1.0))
            device_key = first.peer
            try:
                reply = inviter.receive(first.body)
                while inviter.phase is not Phase.CONFIRMING:
                    if reply is not None:
                        await link.send_data(device_key, reply)
                    reply = inviter.receive((await _next_data(link, device_key)).body)
                assert inviter.device is not None
                if inviter.device.sign_public != device_key:
                    raise PairingFailed("the device's card is not the key the relay connected")
                if not confirm(inviter.device, inviter.comparison_code):
                    raise PairingFailed("link cancelled: the comparison codes were not confirmed")
                log = await _append(
                    store,
                    link,
                    log,
                    Op.ADD,
                    device_key,
                    card=inviter.device,
                    role=role,
                    ticket=ticket.ticket,
                )
            except PairingFailed as exc:
                if not isinstance(exc, PairingAborted):
                    with contextlib.suppress(StarmuxError):
                        await link.send_data(device_key, abort_body())
                        await link.request(ReportPairingFailure(0, ticket.ticket))
                raise UsageError(exc.message, hint="run `starmux devices link` again") from exc
            # The cards this device pinned at pairing, never the relay's list (a
            # malicious relay could slip in a machine of its own).
            machines = tuple(m.card for m in await store.machines())
            await link.send_data(device_key, inviter.welcome(log, machines))
            with contextlib.suppress(TimeoutError, PairingFailed):
                inviter.receive((await _next_data(link, device_key, patience=10.0)).body)
            return inviter.device


async def _next_data(
    link: RelayLink, peer: bytes | None, *, patience: float = STEP_TIMEOUT
) -> Data:
    try:
        async with asyncio.timeout(patience):
            async for event in link.events():
                if isinstance(event, Data) and (peer is None or event.peer == peer):
                    return event
    except TimeoutError as exc:
        raise PairingFailed("the other device stopped answering (or the code expired)") from exc
    raise PairingFailed("the relay connection closed while linking")


# --- linking: the new device -------------------------------------------------------


async def join(
    home: Path, code: LinkCode, *, name: str, confirm: Callable[[IdentityCard, str], bool]
) -> tuple[IdentityCard, DeviceLog, int]:
    """``link CODE`` on the new device (its own home); returns (inviter, log, machines)."""
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
        link = RelayLink(code.relay_url, keys, card, pinned_relay_key=None)
        auth = await link.connect()
        try:
            # First contact: the code carries the relay's fingerprint; nothing secret
            # has been sent yet (the link secret never leaves this device).
            if not fingerprints_match(fingerprint(link.relay_key), code.relay_fingerprint):
                raise UsageError(
                    f"the relay at {code.relay_url} is {fingerprint(link.relay_key)}, "
                    f"not {code.relay_fingerprint} as the code says; refusing"
                )
            if auth.status is not SessionStatus.UNREGISTERED:
                raise UsageError("this device's key already belongs to an account")
            try:
                opened = await link.request(OpenLinkTicket(0, code.ticket), TicketOpened)
            except RelayRefused as exc:
                message, hint = _TICKET_REFUSALS.get(exc.code, (exc.message, exc.hint or ""))
                raise UsageError(message.replace("pairing", "link"), hint=hint) from exc
            assert isinstance(opened, TicketOpened)
            inviter_key = opened.machine_key
            device = NewDevice(keys, card, code, relay_key=link.relay_key)
            try:
                await link.send_data(inviter_key, device.start())
                reply = device.receive((await _next_data(link, inviter_key)).body)
                assert reply is not None and device.inviter is not None
                if device.inviter.sign_public != inviter_key:
                    raise PairingFailed("the inviter's card is not the key the relay connected")
                if not confirm(device.inviter, device.comparison_code):
                    raise PairingFailed("link cancelled: the comparison codes were not confirmed")
                await link.send_data(inviter_key, reply)
                stored = device.receive((await _next_data(link, inviter_key, patience=60.0)).body)
            except PairingFailed as exc:
                if not isinstance(exc, PairingAborted):
                    with contextlib.suppress(StarmuxError):
                        await link.send_data(inviter_key, abort_body())
                        await link.request(ReportPairingFailure(0, code.ticket))
                raise UsageError(exc.message, hint="ask for a fresh link code") from exc
            assert stored is not None and device.log is not None
            await store.save_config(
                ControllerConfig(code.relay_url, link.relay_key, device.account, name)
            )
            await device_copy.save_copy(store.db, device.log)
            for machine in device.machines:
                await store.add_machine(machine)
            with contextlib.suppress(StarmuxError):
                await link.send_data(inviter_key, stored)
            return device.inviter, device.log, len(device.machines)
        finally:
            await link.close()
