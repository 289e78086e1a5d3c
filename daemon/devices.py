"""The machine's own verified copy of its account's device log, and who may do what.

What the daemon enforces, whatever the relay says:

- KK only with a device current in its copy (before any copy exists — a machine
  paired before device logs, or not yet told — only with the controllers that
  paired it, each as an owner).
- Its first copy comes over KK from a controller that paired it (and must name
  that device as current), or in clear if its first entry was written by such a
  controller (the chain of owner signatures then starts at a key it trusts).
  After that, any offer (over KK or in clear) is verified as a continuation of
  the copy: a fork, a gap, a forged or unauthorised
  entry, or an older head (a replay) is refused and audited, and the copy stays.
- Every command is checked against the sender's role in the copy
  (:mod:`starmux.device_roles`); a refusal is answered and audited.
- A device removed by an update loses its live channel at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from starmux.device_log import DeviceLog, decode_entries, encode_entries
from starmux.device_roles import Action, DeviceRole, allowed
from starmux.errors import DeviceLogError, UsageError
from starmux.fingerprint import fingerprint
from starmux.identity import IdentityCard
from starmux.node.database import read_setting, write_setting

from .store import DaemonStore

log = logging.getLogger("starmux.daemon")

SETTING = "device_log"


@dataclass(frozen=True)
class Offer:
    """What an offered log did to the copy."""

    changed: bool
    removed: tuple[bytes, ...] = ()
    behind: bool = False  # the sender's log is older than ours: send ours back


class RoleRefused(UsageError):
    """A device asked for something its role does not allow."""


class DeviceGate:
    def __init__(self, store: DaemonStore) -> None:
        self.store = store
        self.copy: DeviceLog | None = None
        self._loaded = False

    async def load(self) -> DeviceLog | None:
        if not self._loaded:
            data = await read_setting(self.store.db, SETTING)
            # Our own file: a copy that no longer verifies is a bug, never ignored.
            self.copy = DeviceLog.verify(decode_entries(data)) if data else None
            self._loaded = True
        return self.copy

    async def card_for(self, key: bytes) -> IdentityCard | None:
        """The card to run KK with, if ``key`` is a current device."""
        copy = await self.load()
        if copy is not None:
            device = copy.device(key)
            return device.card if device is not None else None
        paired = next((c for c in await self.store.controllers() if c.key == key), None)
        return paired.card if paired is not None else None

    async def name_of(self, key: bytes) -> str | None:
        """The name a current device of the account goes by, if ``key`` is one."""
        copy = await self.load()
        device = copy.device(key) if copy is not None else None
        return device.name if device is not None else None

    async def is_current(self, key: bytes) -> bool:
        return await self.role_of(key) is not None

    async def role_of(self, key: bytes) -> DeviceRole | None:
        copy = await self.load()
        if copy is not None:
            return copy.role_of(key)
        paired = any(c.key == key for c in await self.store.controllers())
        return DeviceRole.OWNER if paired else None

    async def check(self, key: bytes, action: Action, *, now: float) -> None:
        """Raise :class:`RoleRefused` (audited) unless ``key`` may do ``action``."""
        role = await self.role_of(key)
        if allowed(role, action):
            return
        held = role.value if role is not None else "no longer a device of this account"
        await self.store.audit(
            "command.refused", actor=key, detail=f"{action.value} by {held}", now=now
        )
        raise RoleRefused(
            f"refused by the machine: your device's role ({held}) does not allow {action.value}",
            hint="an owner can change it: starmux devices role NAME operator",
        )

    async def offer(
        self, sender: bytes, entries: bytes, *, authenticated: bool, now: float
    ) -> Offer:
        """Take a log offered by ``sender``; refusals are audited and leave the copy."""
        copy = await self.load()
        try:
            offered = decode_entries(entries)
            if copy is None:
                if not offered:
                    return Offer(False)
                paired = {c.key for c in await self.store.controllers()}
                new = DeviceLog.verify(offered, account=await self._account())
                # The anchor: a controller that paired this machine vouches for the
                # log, by sending it over KK or by having written its first entry.
                if authenticated and new.device(sender) is None:
                    raise DeviceLogError("the device that sent the log is not in it")
                if not authenticated and offered[0].author not in paired:
                    return Offer(False)
            else:
                held = copy.entries
                is_prefix = all(e.seq < len(held) and e.hash == held[e.seq].hash for e in offered)
                if authenticated and is_prefix and offered[-1:] != held[-1:]:
                    # A device that is behind is no attack (a replay in clear is).
                    return Offer(False, behind=True)
                new = copy.update(offered)
        except DeviceLogError as exc:
            await self.store.audit(
                "device-log.refused",
                actor=sender,
                detail=f"{type(exc).__name__}: {exc.message}"[:200],
                now=now,
            )
            log.warning("refused a device log from %s: %s", fingerprint(sender), exc.message)
            return Offer(False)
        if copy is not None and new.head == copy.head:
            return Offer(False)
        old = {d.key for d in copy.devices} if copy is not None else set()
        removed = tuple(k for k in old if new.device(k) is None)
        await write_setting(self.store.db, SETTING, new.encode())
        self.copy = new
        await self.store.audit(
            "device-log.updated", actor=sender, detail=f"head {new.head.seq}", now=now
        )
        return Offer(True, removed)

    def entries(self) -> bytes:
        return self.copy.encode() if self.copy is not None else encode_entries(())

    async def _account(self) -> bytes:
        accounts = {c.account for c in await self.store.controllers()}
        if len(accounts) != 1:
            raise DeviceLogError("this machine is not paired to exactly one account")
        return accounts.pop()
