"""A controller device's own verified copy of its account's device log.

Kept in the controller database (setting ``device_log``), refreshed from the
relay (which may withhold entries but cannot forge them: whatever it sends is
verified as a continuation of this copy) and from machines (which answer a
device that is behind with theirs). Every machine channel hands it over
(:mod:`starmux.device_messages`), so a machine that missed a change catches up
from whichever device connects next.
"""

from __future__ import annotations

import logging

import aiosqlite

from starmux.close_codes import CloseCode
from starmux.device_control import AppendDeviceLog, DeviceLogAppended, DeviceLogState, GetDeviceLog
from starmux.device_log import DeviceLog, decode_entries
from starmux.errors import DeviceLogError, UsageError
from starmux.identity import IdentityCard, NodeKeys
from starmux.node.database import read_setting, write_setting
from starmux.node.link import RelayLink, RelayRefused

log = logging.getLogger("starmux.client")


class DeviceRemoved(UsageError):
    """This device was removed from its account: no command will work again."""

    def __init__(self) -> None:
        super().__init__(
            "this device was removed from its account; the relay refuses it",
            hint="ask an owner to link it again (`starmux devices link`) from a fresh STARMUX_HOME",
        )


def removed(code: int | None) -> bool:
    return code == CloseCode.DEVICE_REMOVED


SETTING = "device_log"


async def load_copy(db: aiosqlite.Connection) -> DeviceLog | None:
    data = await read_setting(db, SETTING)
    return DeviceLog.verify(decode_entries(data)) if data else None


async def save_copy(db: aiosqlite.Connection, copy: DeviceLog) -> None:
    await write_setting(db, SETTING, copy.encode())  # autocommit: one statement


async def take(
    db: aiosqlite.Connection, copy: DeviceLog | None, entries: bytes, *, account: bytes
) -> DeviceLog | None:
    """Verify ``entries`` against ``copy`` (or as a first copy for ``account``) and
    save the result; a refused log is logged and changes nothing."""
    try:
        offered = decode_entries(entries)
        if not offered:
            return copy
        if copy is None:
            new = DeviceLog.verify(offered, account=account)
        elif offered[-1].seq <= copy.head.seq:
            return copy  # nothing newer (a fork or replay would not change ours either)
        else:
            new = copy.update(offered)
    except DeviceLogError as exc:
        log.warning("refused a device log: %s", exc.message)
        return copy
    await save_copy(db, new)
    return new


async def refresh(
    db: aiosqlite.Connection,
    link: RelayLink,
    copy: DeviceLog | None,
    *,
    keys: NodeKeys,
    card: IdentityCard,
    account: bytes,
    now: float,
) -> DeviceLog | None:
    """Ask the relay for the entries after our head and take them. An account with
    no log yet (made before device logs, or just registered) gets its first entry
    here, written by this device: the relay accepts that only from the account's
    only device. A relay without device logs is no error: the account stays the
    one-device account it was."""
    after = copy.head.seq if copy is not None else -1
    try:
        state = await link.request(GetDeviceLog(0, after), DeviceLogState)
        assert isinstance(state, DeviceLogState)
        if copy is None and not decode_entries(state.entries):
            first = DeviceLog.genesis(keys, card, account, at=now)
            await link.request(AppendDeviceLog(0, first.encode(), b""), DeviceLogAppended)
            await save_copy(db, first)
            return first
    except RelayRefused as exc:
        log.warning("the relay keeps no device log for this account: %s", exc)
        return copy
    return await take(db, copy, state.entries, account=account)
