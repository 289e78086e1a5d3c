"""Control requests from nodes to the relay: register, tickets, grants, revocation.

Each handler receives the authenticated :class:`Peer` and a decoded request and
returns the reply message; refusals raise :class:`RegistryError` (a stable
``code``), which the endpoint turns into a :class:`Failure` reply. Signatures by
controllers are verified here, against the key the connection authenticated with.
"""

from __future__ import annotations

import hashlib
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
    GrantMachine,
    ListMachines,
    MachineGranted,
    MachineInfo,
    MachineList,
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


def token_hash(token: str) -> bytes:
    return hashlib.blake2b(token.encode(), person=b"starmux-regtok").digest()


def send_control(peer: Peer, frame_type: FrameType, message: Message, sender: bytes = b"") -> None:
    peer.deliver(encode_frame(frame_type, sender, CONTROL.encode(message)), time.perf_counter())


def _require(peer: Peer, *statuses: SessionStatus) -> None:
    if peer.status not in statuses:
        raise RegistryError("forbidden", "this connection may not make that request")


def _pairing_rate(state: RelayState, peer: Peer) -> None:
    if not state.pairing_by_ip.allow(peer.ip, state.clock()) or not state.pairing_by_ip.allow(
        "key:" + peer.key.hex(), state.clock()
    ):
        raise RegistryError("rate-limited", "too many pairing requests; wait a minute")


async def register_account(state: RelayState, peer: Peer, req: RegisterAccount) -> Message:
    _require(peer, SessionStatus.UNREGISTERED)
    if state.config.open_registration:
        digest = None
    elif req.token:
        digest = token_hash(req.token)
    else:
        raise RegistryError("bad-token", "this relay needs a registration token")
    account = nacl.utils.random(ACCOUNT_ID_SIZE)
    await state.registry.create_account(
        controller_key=peer.key,
        controller_card=peer.card,
        account=account,
        token_hash=digest,
        now=state.clock(),
    )
    state.table.move_to_account(peer, account, SessionStatus.CONTROLLER)
    return AccountRegistered(req.request_id, account)


async def create_ticket(state: RelayState, peer: Peer, req: CreateTicket) -> Message:
    _require(peer, SessionStatus.UNPAIRED)
    _pairing_rate(state, peer)
    record = await state.registry.create_ticket(
        ticket=nacl.utils.random(TICKET_SIZE),
        machine_key=peer.key,
        machine_card=peer.card,
        now=state.clock(),
        ttl=state.config.limits.ticket_ttl,
    )
    peer.ticket_peer = None
    return TicketCreated(req.request_id, record.ticket, record.expires_at)


async def open_ticket(state: RelayState, peer: Peer, req: OpenTicket) -> Message:
    _require(peer, SessionStatus.CONTROLLER)
    _pairing_rate(state, peer)
    record = await state.registry.open_ticket(
        req.ticket, controller_key=peer.key, now=state.clock()
    )
    machine = state.table.get(record.machine_key)
    if machine is None or machine.status is not SessionStatus.UNPAIRED:
        raise RegistryError(
            "offline",
            "the machine holding this ticket is not connected",
            hint="keep `starmux daemon start` running on the machine",
        )
    peer.ticket_peer = machine.key
    machine.ticket_peer = peer.key
    return TicketOpened(req.request_id, machine.key)


async def report_pairing_failure(
    state: RelayState, peer: Peer, req: ReportPairingFailure
) -> Message:
    if peer.ticket_peer is None and peer.status is not SessionStatus.UNPAIRED:
        raise RegistryError("forbidden", "no pairing in progress on this connection")
    failures = await state.registry.record_ticket_failure(
        req.ticket, max_failures=state.config.limits.ticket_max_failures
    )
    if failures >= state.config.limits.ticket_max_failures:
        other = state.table.get(peer.ticket_peer) if peer.ticket_peer else None
        peer.ticket_peer = None
        if other is not None:
            other.ticket_peer = None
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
        raise RegistryError("bad-grant", "the machine grant does not verify") from exc
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
        raise RegistryError("bad-revocation", "the revocation does not verify") from exc
    revoked = await state.registry.revoke_machine(
        req.machine_key, account=peer.account, by=peer.key, now=state.clock()
    )
    if not revoked:
        raise RegistryError("unknown-machine", "no such machine in this account")
    notice = Notice(NoticeEvent.REVOKED, req.machine_key, peer.account, 0.0)
    machine = state.table.get(req.machine_key)
    if machine is not None:
        send_control(machine, FrameType.NOTICE, notice)
        # Close after the notice is flushed; the writer drains the queue first.
        machine.close_after_flush(CloseCode.REVOKED, "revoked")
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


def announce_presence(state: RelayState, machine: Peer, *, online: bool) -> None:
    """Tell every controller of the machine's account that it came or went."""
    if machine.status is not SessionStatus.MACHINE:
        return
    body = CONTROL.encode(Presence(online, state.clock()))
    frame = encode_frame(FrameType.PRESENCE, machine.key, body)
    for other in state.table.account_controllers(machine.account):
        other.deliver(frame, time.perf_counter())


def greet_controller(state: RelayState, controller: Peer) -> None:
    """A controller came online: tell it which of its machines are online now."""
    body = CONTROL.encode(Presence(True, state.clock()))
    for other in state.table.account_peers(controller.account):
        if other.status is SessionStatus.MACHINE:
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
