"""The relay's half of accounts with many devices: store and enforce the device log.

What the relay enforces (the daemon enforces the same log again, independently):

- It stores an account's log only after verifying it with :mod:`starmux.device_log`
  (every entry signed by an owner at that point, no fork, no gap), and appends only
  with a compare-and-set on the head, so two owners racing cannot fork it here.
- Any current device of the account authenticates as a controller (an ``add``
  entry inserts its registry row in the same transaction).
- A removed device is refused at authentication (close code ``DEVICE_REMOVED``,
  counted in /metrics), and its live connection is told and closed right after
  the append lands.
- Requests the relay itself carries out need the role's permission: granting and
  revoking machines are owner-only once the account has a log.
- Every online device of the account hears ``devices-changed``; the removed one
  hears ``device-removed`` before its connection closes, the others hear it too
  (and that it went offline).
- Presence: every online device hears when another device of the account comes
  or goes (PRESENCE frames, as for machines; see ``requests.announce_presence``),
  and ``get-device-log`` says who is online and when each was last seen.
- Linking goes both ways: the device showing the code holds the ticket (an owner
  inviting, or a new device asking to join) and the other opens it; the append
  that adds the new device consumes it (either way round, see ``check_link_ticket``).

Legacy accounts (registered before device logs) have no log: the relay cannot
sign one for them. Their single controller uploads its own self-signed first
entry (:class:`AppendDeviceLog` on an empty log is accepted only from the
account's only controller, naming itself); until then it acts as the owner.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from starmux.close_codes import CloseCode
from starmux.codec import Message
from starmux.control import (
    CONTROL,
    FailureCode,
    GrantMachine,
    Notice,
    NoticeEvent,
    RevokeMachine,
    SessionStatus,
    TicketOpened,
)
from starmux.device_control import (
    AppendDeviceLog,
    CreateLinkTicket,
    DeviceLogAppended,
    DeviceLogState,
    DeviceSeen,
    GetDeviceLog,
    OpenLinkTicket,
)
from starmux.device_log import DeviceLog, decode_entries, encode_entries
from starmux.device_roles import Action, allowed
from starmux.errors import DeviceLogError
from starmux.frames import FrameType, encode_frame

from .peer import Peer
from .registry import ControllerRecord, DeviceChange, DeviceLogRow, RegistryError
from .requests import _pairing_rate as pairing_rate_limit  # one limit for both
from .requests import announce_presence, issue_ticket, send_control
from .state import RelayState

Handler = Callable[[RelayState, Peer, Any], Awaitable[Message]]


def _require_controller(peer: Peer) -> None:
    if peer.status is not SessionStatus.CONTROLLER or not peer.account:
        raise RegistryError(FailureCode.FORBIDDEN, "only a device of an account may do that")


async def load_log(state: RelayState, account: bytes) -> DeviceLog | None:
    """The account's verified log; None for a legacy account without one. A stored
    log that no longer verifies is a broken registry, never silently accepted."""
    rows = await state.registry.device_log(account)
    if not rows:
        return None
    return state.verified_logs.log(account, rows)


async def append_device_log(state: RelayState, peer: Peer, req: AppendDeviceLog) -> Message:
    _require_controller(peer)
    current = await load_log(state, peer.account)
    try:
        offered = decode_entries(req.entries)
        if current is None:
            controllers = await state.registry.controllers_of(peer.account)
            if [c.key for c in controllers] != [peer.key] or not offered:
                raise RegistryError(
                    FailureCode.FORBIDDEN, "only the account's first device writes its first entry"
                )
            if not hmac.compare_digest(offered[0].author, peer.key):
                raise RegistryError(
                    FailureCode.FORBIDDEN, "the first entry must be this device's own"
                )
            new = DeviceLog.verify(offered, account=peer.account)
        else:
            new = current.update(offered)
    except DeviceLogError as exc:
        state.metrics.drops["bad-device-log"] += 1
        raise RegistryError(FailureCode.BAD_LOG, f"device log refused: {exc}") from exc
    before = current.entries if current is not None else ()
    fresh = new.entries[len(before) :]
    if req.ticket and not fresh:
        raise RegistryError(
            FailureCode.MISMATCH, "a link completes with the entry that adds the device"
        )
    if fresh:
        await _store(state, peer, current, new, fresh, req.ticket or None)
    return DeviceLogAppended(req.request_id, new.head.seq, new.head.hash)


async def _store(
    state: RelayState,
    peer: Peer,
    current: DeviceLog | None,
    new: DeviceLog,
    fresh: Any,
    link_ticket: bytes | None,
) -> None:
    now = state.clock()
    old_keys = {d.key for d in current.devices} if current is not None else set()
    added = tuple(
        ControllerRecord(d.key, new.account, d.card.encode(), now)
        for d in new.devices
        if d.key not in old_keys
    )
    removed = tuple(k for k in old_keys if new.device(k) is None)
    rows = [DeviceLogRow(e.seq, e.hash, encode_entries((e,)), e.author, e.at) for e in fresh]
    await state.registry.append_device_log(
        new.account,
        after_seq=current.head.seq if current is not None else -1,
        rows=rows,
        change=DeviceChange(added, removed),
        by=peer.key,
        now=now,
        link_ticket=link_ticket,
    )
    for record in added:  # a linking device is online: it joins the account in place
        live = state.table.get(record.key)
        if live is not None and live.status is SessionStatus.UNREGISTERED:
            # ticket_peer stays: the owner's welcome still has to reach it (two
            # controllers route to each other only through a ticket).
            state.table.move_to_account(live, new.account, SessionStatus.CONTROLLER)
            announce_presence(state, live, online=True)
    changed = Notice(NoticeEvent.DEVICES_CHANGED, b"", new.account, 0.0)
    for key in removed:
        cut_off(state, key, new.account)
    for other in state.table.account_controllers(new.account):
        for key in removed:  # what the devices' lists show goes first
            send_control(
                other, FrameType.NOTICE, Notice(NoticeEvent.DEVICE_REMOVED, key, new.account, 0.0)
            )
        send_control(other, FrameType.NOTICE, changed)


def cut_off(state: RelayState, key: bytes, account: bytes) -> None:
    """Tell a removed device's live connection and close it (no wait on the network
    here: the close is queued at once). Out of routing first, so nothing more
    reaches it; what was queued for it is dropped, the notice alone goes, as for a
    revoked machine (:meth:`relay.peer.Peer.cut_off`). A device held by another
    cluster node is cut off there (one command over the bus); that node also reads
    the removal from the revocation stream, whichever comes first."""
    live = state.table.get(key)
    if live is None or live.account != account or live.status is not SessionStatus.CONTROLLER:
        return
    notice = Notice(NoticeEvent.DEVICE_REMOVED, key, account, 0.0)
    # Out of routing first, and its last presence, "offline", said now (its close
    # will not say it: cut_off takes it out of its account).
    if state.table.detach(live):
        announce_presence(state, live, online=False)
    live.cut_off(
        encode_frame(FrameType.NOTICE, b"", CONTROL.encode(notice)),
        CloseCode.DEVICE_REMOVED,
        "this device was removed from its account",
    )


async def get_device_log(state: RelayState, peer: Peer, req: GetDeviceLog) -> Message:
    _require_controller(peer)
    log = await load_log(state, peer.account)
    entries = log.entries[max(req.after_seq + 1, 0) :] if log is not None else ()
    online = tuple(
        other.key
        for other in state.table.account_controllers(peer.account)
        if log is None or log.device(other.key) is not None
    )
    now, last_seen = state.clock(), []
    for record in await state.registry.controllers_of(peer.account):
        at = now if record.key in online else record.last_seen
        if at is not None:
            last_seen.append(DeviceSeen(record.key, at))
    return DeviceLogState(req.request_id, encode_entries(entries), online, tuple(last_seen))


async def create_link_ticket(state: RelayState, peer: Peer, req: CreateLinkTicket) -> Message:
    """The device that will show a code holds the ticket: an owner inviting (its role
    checked by ``_needs``), or a new device in no account yet asking to join."""
    if peer.status is not SessionStatus.UNREGISTERED:
        _require_controller(peer)
    return await issue_ticket(state, peer, req.request_id)


#: the opener's status → the status the ticket's holder must have: a new device opens
#: an owner's invite; an owner opens a new device's join code
_HOLDER_FOR = {
    SessionStatus.UNREGISTERED: SessionStatus.CONTROLLER,
    SessionStatus.CONTROLLER: SessionStatus.UNREGISTERED,
}


async def open_link_ticket(state: RelayState, peer: Peer, req: OpenLinkTicket) -> Message:
    holder_status = _HOLDER_FOR.get(peer.status)
    if holder_status is None or (peer.status is SessionStatus.CONTROLLER and not peer.account):
        raise RegistryError(FailureCode.FORBIDDEN, "this connection may not open a link ticket")
    pairing_rate_limit(state, peer)
    record = await state.registry.open_ticket(
        req.ticket, controller_key=peer.key, now=state.clock()
    )
    holder = state.table.get(record.machine_key)
    if holder is None or holder.status is not holder_status:
        shown_by = "devices link" if holder_status is SessionStatus.CONTROLLER else "link --show"
        raise RegistryError(
            FailureCode.OFFLINE,
            "the device that showed this code is not connected",
            hint=f"keep `starmux {shown_by}` running on it",
        )
    peer.ticket_peer = holder.key
    peer.opened_ticket = req.ticket
    holder.ticket_peer = peer.key
    return TicketOpened(req.request_id, holder.key)


async def may(state: RelayState, peer: Peer, action: Action) -> bool:
    """Whether the relay lets ``peer`` do ``action`` itself (legacy: it is the owner)."""
    log = await load_log(state, peer.account)
    return log is None or allowed(log.role_of(peer.key), action)


def _needs(action: Action, handler: Handler) -> Handler:
    async def guarded(state: RelayState, peer: Peer, req: Any) -> Message:
        if peer.account and not await may(state, peer, action):
            raise RegistryError(
                FailureCode.FORBIDDEN_ROLE,
                f"your device's role does not allow {action.value}",
                hint="ask an owner of the account (starmux devices role NAME owner)",
            )
        return await handler(state, peer, req)

    return guarded


def install(handlers: dict[type[Message], Handler]) -> None:
    """Add the device log requests and the role checks to the relay's handlers
    (once: a second call changes nothing)."""
    if AppendDeviceLog in handlers:
        return
    handlers[AppendDeviceLog] = append_device_log
    handlers[CreateLinkTicket] = _needs(Action.MANAGE_DEVICES, create_link_ticket)
    handlers[OpenLinkTicket] = _needs(Action.MANAGE_DEVICES, open_link_ticket)
    handlers[GetDeviceLog] = get_device_log
    handlers[GrantMachine] = _needs(Action.PAIR_MACHINE, handlers[GrantMachine])
    handlers[RevokeMachine] = _needs(Action.REVOKE_MACHINE, handlers[RevokeMachine])
