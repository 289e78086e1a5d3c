"""Relay control messages about an account's device log (DESIGN.md section 9).

Registered on :data:`starmux.control.CONTROL`, so they travel in REQUEST and
RESPONSE frames like every other request; importing this module is what lets a
node send or read them. The log travels as ``starmux.device_log`` bytes: signed,
not secret (the relay stores it and learns who the devices are, their names and
roles, and when they changed — never what they do).
"""

from __future__ import annotations

from dataclasses import dataclass

from .codec import Message, Timestamp
from .control import CONTROL


@CONTROL.register
@dataclass(frozen=True)
class AppendDeviceLog(Message):
    """Controller → relay: entries that extend the account's log (or its first one).

    ``entries`` is ``starmux.device_log.encode_entries(...)``: a suffix after the
    head the relay holds, or the whole log."""

    KIND = "append-device-log"
    request_id: int
    entries: bytes
    ticket: bytes  # a link ticket this append completes (its one ``add``), or empty


@CONTROL.register
@dataclass(frozen=True)
class DeviceLogAppended(Message):
    KIND = "device-log-appended"
    request_id: int
    head_seq: int
    head_hash: bytes


@CONTROL.register
@dataclass(frozen=True)
class GetDeviceLog(Message):
    """Controller → relay: the entries after ``after_seq`` (-1: all of them)."""

    KIND = "get-device-log"
    request_id: int
    after_seq: int


@CONTROL.register
@dataclass(frozen=True)
class DeviceSeen(Message):
    """When a device of the account was last connected (now, if it is)."""

    KIND = "device-seen"
    key: bytes
    at: Timestamp


@CONTROL.register
@dataclass(frozen=True)
class DeviceLogState(Message):
    """The entries asked for, which current devices are online now, and when each
    was last seen (devices never seen since the relay recorded it are left out).
    Version 2: ``last_seen`` added."""

    KIND = "device-log-state"
    VERSION = 2
    request_id: int
    entries: bytes  # encode_entries(...); no entries at all for a legacy account
    online: tuple[bytes, ...]
    last_seen: tuple[DeviceSeen, ...]


@CONTROL.register
@dataclass(frozen=True)
class CreateLinkTicket(Message):
    """Owner device → relay: a one-time ticket for linking a new device (answered
    with ``TicketCreated``; it expires and burns like a pairing ticket)."""

    KIND = "create-link-ticket"
    request_id: int


@CONTROL.register
@dataclass(frozen=True)
class OpenLinkTicket(Message):
    """New device (not yet in any account) → relay: connect me to the inviter
    (answered with ``TicketOpened`` naming the inviter's key)."""

    KIND = "open-link-ticket"
    request_id: int
    ticket: bytes
