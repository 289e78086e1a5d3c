"""Control requests from nodes to the relay: register, tickets, grants, revocation.

Each handler receives the authenticated :class:`Peer` and a decoded request and
returns the reply message; refusals raise :class:`RegistryError` (a stable
``code``), which the endpoint turns into a :class:`Failure` reply. Signatures by
controllers are verified here, against the key the connection authenticated with.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nacl.utils

from starmux.close_codes import CloseCode
from starmux.codec import Message
from starmux.control import (
    CONTROL,
    AccountRegistered,
    CreateTicket,
    FailureCode,
    GrantMachine,
    ListMachines,
    MachineGranted,
    MachineInfo,
    MachineList,
    MachineRevocation,
    MachineRevoked,
    Notice,
    NoticeEvent,
    OpenTicket,
    Presence,
    RegisterAccount,
    ReportPairingFailure,
    RevokeMachine,
    SessionStatus,
    TicketCreated,
    TicketOpened,
)
from starmux.errors import CryptoError, RemoteProtocolError
from starmux.frames import FrameType, encode_frame
from starmux.identity import IdentityCard, Role, verify_signature
from starmux.pairing_code import TICKET_SIZE
from starmux.relay_auth import grant_transcript, revoke_transcript

from .peer import Peer
from .registry import RegistryError
from .state import RelayState

ACCOUNT_ID_SIZE = 16
REGISTRATION_TOKEN_BYTES = 18
#: what :func:`new_registration_token` makes; anything else is refused unread
REGISTRATION_TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{24}")


def new_registration_token() -> str:
    return secrets.token_urlsafe(REGISTRATION_TOKEN_BYTES)


def token_hash(token: str) -> bytes:
    return hashlib.blake2b(token.encode(), person=b"starmux-regtok").digest()


def send_control(peer: Peer, frame_type: FrameType, message: Message, sender: bytes = b"") -> None:
    peer.deliver(encode_frame(frame_type, sender, CONTROL.encode(message)), time.perf_counter())


def _require(peer: Peer, *statuses: SessionStatus) -> None:
    if peer.status not in statuses:
        raise RegistryError(FailureCode.FORBIDDEN, "this connection may not make that request")


def _pairing_rate(state: RelayState, peer: Peer) -> None:
    """A budget per key and a larger one per address: one key (a throwaway one, too)
    cannot spend what the other daemons behind the same address need."""
    now = state.clock()
    if not state.pairing_by_key.allow(peer.key.hex(), now):
        state.metrics.refused["pairing-rate-key"] += 1
        raise RegistryError(FailureCode.RATE_LIMITED, "too many pairing requests; wait a minute")
    if not state.pairing_by_ip.allow(peer.ip, now):
        state.metrics.refused["pairing-rate-ip"] += 1
        raise RegistryError(
            FailureCode.RATE_LIMITED, "too many pairing requests from this address; wait a minute"
        )


async def register_account(state: RelayState, peer: Peer, req: RegisterAccount) -> Message:
    _require(peer, SessionStatus.UNREGISTERED)
    # Everything that can be refused without the registry is refused first: each
    # registry write holds the lock every authentication waits on.
    if not state.registrations_by_ip.allow(peer.ip, state.clock()):
        state.metrics.refused["registration-rate"] += 1
        raise RegistryError(FailureCode.RATE_LIMITED, "too many registrations from this address")
    if state.config.open_registration:
        digest = None
    elif not req.token:
        raise RegistryError(FailureCode.BAD_TOKEN, "this relay needs a registration token")
    elif not REGISTRATION_TOKEN_PATTERN.fullmatch(req.token):
        state.metrics.refused["malformed-token"] += 1
        raise RegistryError(FailureCode.BAD_TOKEN, "unknown or already used registration token")
    else:
        digest = token_hash(req.token)
    account = nacl.utils.random(ACCOUNT_ID_SIZE)
    await state.registry.create_account(
        controller_key=peer.key,
        controller_card=peer.card,
        account=account,
        token_hash=digest,
        now=state.clock(),
    )
    state.table.move_to_account(peer, account, SessionStatus.CONTROLLER)
    if digest is not None:
        _forget_token_file(state, digest)
    return AccountRegistered(req.request_id, account)


def _forget_token_file(state: RelayState, digest: bytes) -> None:
    """The token in the data directory's file is spent: remove the file."""
    path = state.registration_token_file
    if path is None:
        return
    with contextlib.suppress(OSError):
        if token_hash(path.read_text().strip()) == digest:
            path.unlink()


async def issue_ticket(state: RelayState, peer: Peer, request_id: int) -> TicketCreated:
    """A fresh ticket held by ``peer``, under the pairing budget: a machine's pairing
    ticket, or an inviting device's link ticket (it stands where the machine would)."""
    _pairing_rate(state, peer)
    record = await state.registry.create_ticket(
        ticket=nacl.utils.random(TICKET_SIZE),
        machine_key=peer.key,
        machine_card=peer.card,
        now=state.clock(),
        ttl=state.config.limits.ticket_ttl,
    )
    peer.ticket_peer = None
    return TicketCreated(request_id, record.ticket, record.expires_at)


async def create_ticket(state: RelayState, peer: Peer, req: CreateTicket) -> Message:
    _require(peer, SessionStatus.UNPAIRED)
    return await issue_ticket(state, peer, req.request_id)


async def open_ticket(state: RelayState, peer: Peer, req: OpenTicket) -> Message:
    _require(peer, SessionStatus.CONTROLLER)
    _pairing_rate(state, peer)
    record = await state.registry.open_ticket(
        req.ticket, controller_key=peer.key, now=state.clock()
    )
    machine = state.table.get(record.machine_key)
    if machine is None or machine.status is not SessionStatus.UNPAIRED:
        raise RegistryError(
            FailureCode.OFFLINE,
            "the machine holding this ticket is not connected",
            hint="keep `starmux daemon start` running on the machine",
        )
    peer.ticket_peer = machine.key
    peer.opened_ticket = req.ticket
    machine.ticket_peer = peer.key
    return TicketOpened(req.request_id, machine.key)


def _pairing_attempt(state: RelayState, peer: Peer, ticket: bytes) -> tuple[Peer, Peer | None]:
    """The (opener, holder) of the attempt on ``ticket`` that ``peer`` is part of.

    An attempt is one opening of the ticket (by a controller pairing a machine, or
    by either device of a link: whoever read the code), linked to the node that
    holds the ticket (the one showing the code). Only its two ends may report its
    failure: a third connection that learnt the ticket id cannot burn it. Both ends
    may, because an impostor running the reading side would never report its own
    wrong guesses."""
    if peer.opened_ticket == ticket:
        holder = state.table.get(peer.ticket_peer) if peer.ticket_peer else None
        return peer, holder
    opener = state.table.get(peer.ticket_peer) if peer.ticket_peer else None
    if opener is None or opener.opened_ticket != ticket or opener.ticket_peer != peer.key:
        raise RegistryError(FailureCode.FORBIDDEN, "this connection has no attempt on that ticket")
    return opener, peer


async def report_pairing_failure(
    state: RelayState, peer: Peer, req: ReportPairingFailure
) -> Message:
    opener, holder = _pairing_attempt(state, peer, req.ticket)
    # One failure per attempt, whichever end reports it first (both usually do): the
    # attempt ends here, and another try needs a fresh OpenTicket.
    opener.opened_ticket = None
    opener.ticket_peer = None
    if holder is not None:
        holder.ticket_peer = None
    failures = await state.registry.record_ticket_failure(
        req.ticket, max_failures=state.config.limits.ticket_max_failures
    )
    if failures >= state.config.limits.ticket_max_failures and holder is not None:
        # Its code is dead: let the daemon (or the device showing a link or join
        # code) show a fresh one now, not at expiry.
        send_control(
            holder, FrameType.NOTICE, Notice(NoticeEvent.TICKET_BURNT, req.ticket, b"", 0.0)
        )
    return TicketOpened(req.request_id, b"")


async def grant_machine(state: RelayState, peer: Peer, req: GrantMachine) -> Message:
    _require(peer, SessionStatus.CONTROLLER)
    try:
        card = IdentityCard.decode(req.machine_card)
        if card.role is not Role.MACHINE:
            raise RemoteProtocolError("not a machine card")
        verify_signature(
            peer.key, grant_transcript(peer.account, req.machine_card, req.issued_at), req.signature
        )
    except (CryptoError, RemoteProtocolError) as exc:
        raise RegistryError(FailureCode.BAD_GRANT, "the machine grant does not verify") from exc
    now = state.clock()
    await state.registry.grant_machine(
        ticket=req.ticket,
        account=peer.account,
        granted_by=peer.key,
        machine_card=req.machine_card,
        machine_key=card.sign_public,
        grant_signature=req.signature,
        grant_issued_at=req.issued_at,
        now=now,
    )
    peer.ticket_peer = None
    peer.opened_ticket = None
    machine = state.table.get(card.sign_public)
    if machine is not None:
        machine.ticket_peer = None
        state.table.move_to_account(machine, peer.account, SessionStatus.MACHINE)
        send_control(
            machine, FrameType.NOTICE, Notice(NoticeEvent.PAIRED, peer.key, peer.account, 0.0)
        )
        announce_presence(state, machine, online=True)
    return MachineGranted(req.request_id, card.sign_public)


async def revoke_machine(state: RelayState, peer: Peer, req: RevokeMachine) -> Message:
    _require(peer, SessionStatus.CONTROLLER)
    try:
        verify_signature(
            peer.key, revoke_transcript(peer.account, req.machine_key, req.issued_at), req.signature
        )
    except CryptoError as exc:
        raise RegistryError(FailureCode.BAD_REVOCATION, "the revocation does not verify") from exc
    notice = Notice(NoticeEvent.REVOKED, req.machine_key, peer.account, 0.0)
    # The controller's signed statement itself: the machine deletes its keys only on
    # that (the relay's word alone is not proof). Stored with the revocation, so a
    # relay node that cuts the machine off later (another node, after a bus outage)
    # forwards it too.
    proof = CONTROL.encode(
        MachineRevocation(req.machine_key, peer.account, peer.key, req.issued_at, req.signature)
    )
    machine = state.table.get(req.machine_key)
    if (
        machine is not None
        and machine.account == peer.account
        and machine.status is SessionStatus.MACHINE
    ):
        # Unroutable before the registry write is awaited: from this line on no frame
        # reaches it, and what was queued for it is dropped; it gets the notice alone.
        if state.table.detach(machine):
            announce_presence(state, machine, online=False)
        machine.cut_off(
            encode_frame(FrameType.NOTICE, b"", CONTROL.encode(notice)),
            CloseCode.REVOKED,
            "revoked",
            then=encode_frame(FrameType.NOTICE, b"", proof),
        )
    revoked = await state.registry.revoke_machine(
        req.machine_key, account=peer.account, by=peer.key, now=state.clock(), proof=proof
    )
    if not revoked:
        raise RegistryError(FailureCode.UNKNOWN_MACHINE, "no such machine in this account")
    for other in state.table.account_controllers(peer.account):
        send_control(other, FrameType.NOTICE, notice)
    return MachineRevoked(req.request_id, req.machine_key)


async def list_machines(state: RelayState, peer: Peer, req: ListMachines) -> Message:
    _require(peer, SessionStatus.CONTROLLER)
    infos = []
    for record in await state.registry.machines_of(peer.account):
        live = state.table.get(record.key)
        online = live is not None and live.status is SessionStatus.MACHINE
        infos.append(
            MachineInfo(
                record.key,
                record.card,
                online,
                record.paired_at,
                state.clock() if online else record.last_seen,
            )
        )
    return MachineList(req.request_id, tuple(infos))


def announce_presence(state: RelayState, node: Peer, *, online: bool) -> None:
    """Tell every controller device of the node's account that it came or went: a
    machine to all of them, a device to all the others."""
    if node.status not in (SessionStatus.MACHINE, SessionStatus.CONTROLLER) or not node.account:
        return
    body = CONTROL.encode(Presence(online, state.clock()))
    frame = encode_frame(FrameType.PRESENCE, node.key, body)
    for other in state.table.account_controllers(node.account):
        if other.key != node.key:
            other.deliver(frame, time.perf_counter())


def greet_controller(state: RelayState, controller: Peer) -> None:
    """A controller came online: tell it which of its machines and which of its
    account's other devices are online now."""
    body = CONTROL.encode(Presence(True, state.clock()))
    for other in state.table.account_peers(controller.account):
        if other.key != controller.key and other.status in (
            SessionStatus.MACHINE,
            SessionStatus.CONTROLLER,
        ):
            controller.deliver(
                encode_frame(FrameType.PRESENCE, other.key, body), time.perf_counter()
            )


Handler = Callable[[RelayState, Peer, Any], Awaitable[Message]]
HANDLERS: dict[type[Message], Handler] = {
    RegisterAccount: register_account,
    CreateTicket: create_ticket,
    OpenTicket: open_ticket,
    ReportPairingFailure: report_pairing_failure,
    GrantMachine: grant_machine,
    RevokeMachine: revoke_machine,
    ListMachines: list_machines,
}
