"""What the device commands do (``devices``, ``devices remove/role``); linking, both
ways, is :mod:`client.device_linking`.

Over the same controller store and relay link as every other command; the device
log rules themselves live in :mod:`starmux.device_log` (an append this device may
not make fails there, before anything is sent).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from starmux.device_control import (
    AppendDeviceLog,
    DeviceLogAppended,
    DeviceLogState,
    GetDeviceLog,
)
from starmux.device_log import Device, DeviceLog, Op, encode_entries
from starmux.device_roles import DeviceRole
from starmux.errors import DeviceLogError, UsageError
from starmux.fingerprint import fingerprint
from starmux.identity import IdentityCard, Role
from starmux.node.link import RelayLink

from . import device_copy
from .actions import connected
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
    last_seen: float | None  # the relay's word: now if online, None if never seen
    this_device: bool


async def current_log(
    store: ControllerStore, config: ControllerConfig, link: RelayLink
) -> DeviceLog:
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
            log = await current_log(store, config, link)
            state = await link.request(GetDeviceLog(0, log.head.seq), DeviceLogState)
        assert isinstance(state, DeviceLogState)
        online = set(state.online)
        seen = {entry.key: entry.at for entry in state.last_seen}
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
                seen.get(d.key),
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


async def append_entry(
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
            log = await current_log(store, config, link)
            device = _find(log, query)
            await append_entry(store, link, log, Op.REMOVE, device.key)
            return device


async def set_role(home: Path, query: str, role: DeviceRole) -> Device:
    async with ControllerStore(home) as store:
        config = await store.config()
        async with connected(store, config) as link:
            log = await current_log(store, config, link)
            device = _find(log, query)
            if device.role is not role:
                await append_entry(store, link, log, Op.SET_ROLE, device.key, role=role)
            return device
