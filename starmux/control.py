"""Relay control messages: the bodies of frames between a node and the relay itself.

These are the only message bodies the relay reads (``DATA`` bodies stay opaque).
Each request carries a ``request_id`` chosen by the node; the relay answers with
the matching reply class or a :class:`Failure` with the same id.

The codec is strict (see :mod:`starmux.codec`); decoding errors are
:class:`~starmux.errors.RemoteProtocolError`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .codec import Message, MessageCodec
from .errors import RemoteProtocolError

CONTROL = MessageCodec(RemoteProtocolError, max_size=64 * 1024)


class SessionStatus(enum.StrEnum):
    CONTROLLER = "controller"  # a registered controller device of an account
    MACHINE = "machine"  # a paired, not revoked machine
    UNPAIRED = "unpaired"  # a machine the relay does not know: pairing-only session
    UNREGISTERED = "unregistered"  # a controller the relay does not know: may register


# --- authentication --------------------------------------------------------------


@CONTROL.register
@dataclass(frozen=True)
class AuthChallenge(Message):
    KIND = "auth-challenge"
    relay_card: bytes
    nonce: bytes
    relay_time: float


@CONTROL.register
@dataclass(frozen=True)
class AuthResponse(Message):
    KIND = "auth-response"
    card: bytes
    client_nonce: bytes
    signature: bytes


@CONTROL.register
@dataclass(frozen=True)
class Welcome(Message):
    KIND = "welcome"
    status: SessionStatus
    account: bytes  # empty unless status is controller or machine
    signature: bytes  # the relay's, over both nonces and the node's key
    relay_time: float


# --- requests and replies ----------------------------------------------------------


class FailureCode(enum.StrEnum):
    """Why the relay refused a request (:class:`Failure`) or a DATA frame (:class:`RouteError`).

    Stable on the wire: clients branch on these, people read ``message`` and ``hint``.
    Decoding is strict, so a new code is a protocol change (see PROTOCOL.md).
    """

    # any request
    FORBIDDEN = "forbidden"  # this connection's status may not make that request
    RATE_LIMITED = "rate-limited"  # over a request, pairing or registration budget
    # register-account
    BAD_TOKEN = "bad-token"  # no, an unknown or an already used registration token
    EXISTS = "exists"  # the key, account id, token or ticket id is already stored
    # open-ticket, report-pairing-failure, grant-machine
    UNKNOWN_TICKET = "unknown-ticket"
    CONSUMED = "consumed"  # the ticket was already used by a grant
    BURNT = "burnt"  # too many failed pairing attempts on this ticket
    EXPIRED = "expired"  # the ticket's lifetime ran out
    OFFLINE = "offline"  # the machine holding the ticket is not connected
    TAKEN = "taken"  # another controller holds this ticket open
    MISMATCH = "mismatch"  # the grant names another machine or another account
    BAD_GRANT = "bad-grant"  # the grant's signature does not verify
    REVOKED = "revoked"  # the machine key was revoked (for good)
    PAIRED = "paired"  # the machine is already paired
    # revoke-machine
    BAD_REVOCATION = "bad-revocation"  # the revocation's signature does not verify
    UNKNOWN_MACHINE = "unknown-machine"  # no such machine in this account
    # device log and linking
    FORBIDDEN_ROLE = "forbidden-role"  # the device's role in the account does not allow it
    BAD_LOG = "bad-log"  # the device log entry does not verify as a continuation
    LOG_MOVED = "log-moved"  # the log's head changed since the entry was made: retry
    # any request, on a relay cluster node
    UNAVAILABLE = "unavailable"  # the node cannot reach the shared registry now: retry
    # route-error (ERROR frames)
    UNREACHABLE = "unreachable"  # no peer with that key online that you may reach


@CONTROL.register
@dataclass(frozen=True)
class Failure(Message):
    KIND = "failure"
    request_id: int
    code: FailureCode
    message: str
    hint: str


@CONTROL.register
@dataclass(frozen=True)
class RegisterAccount(Message):
    KIND = "register-account"
    request_id: int
    token: str  # the relay's registration token; empty with open registration


@CONTROL.register
@dataclass(frozen=True)
class AccountRegistered(Message):
    KIND = "account-registered"
    request_id: int
    account: bytes


@CONTROL.register
@dataclass(frozen=True)
class CreateTicket(Message):
    KIND = "create-ticket"
    request_id: int


@CONTROL.register
@dataclass(frozen=True)
class TicketCreated(Message):
    KIND = "ticket-created"
    request_id: int
    ticket: bytes
    expires_at: float


@CONTROL.register
@dataclass(frozen=True)
class OpenTicket(Message):
    """Controller → relay: let me talk to the machine holding this ticket."""

    KIND = "open-ticket"
    request_id: int
    ticket: bytes


@CONTROL.register
@dataclass(frozen=True)
class TicketOpened(Message):
    KIND = "ticket-opened"
    request_id: int
    machine_key: bytes


@CONTROL.register
@dataclass(frozen=True)
class ReportPairingFailure(Message):
    """Either side: the pairing handshake on this ticket failed (counts toward burning it)."""

    KIND = "report-pairing-failure"
    request_id: int
    ticket: bytes


@CONTROL.register
@dataclass(frozen=True)
class GrantMachine(Message):
    KIND = "grant-machine"
    request_id: int
    ticket: bytes
    machine_card: bytes
    issued_at: float
    signature: bytes  # the controller's, see relay_auth.grant_transcript


@CONTROL.register
@dataclass(frozen=True)
class MachineGranted(Message):
    KIND = "machine-granted"
    request_id: int
    machine_key: bytes


@CONTROL.register
@dataclass(frozen=True)
class RevokeMachine(Message):
    KIND = "revoke-machine"
    request_id: int
    machine_key: bytes
    issued_at: float
    signature: bytes  # the controller's, see relay_auth.revoke_transcript


@CONTROL.register
@dataclass(frozen=True)
class MachineRevoked(Message):
    KIND = "machine-revoked"
    request_id: int
    machine_key: bytes


@CONTROL.register
@dataclass(frozen=True)
class ListMachines(Message):
    KIND = "list-machines"
    request_id: int


@CONTROL.register
@dataclass(frozen=True)
class MachineInfo(Message):
    KIND = "machine-info"
    machine_key: bytes
    card: bytes
    online: bool
    paired_at: float
    last_seen: float | None


@CONTROL.register
@dataclass(frozen=True)
class MachineList(Message):
    KIND = "machine-list"
    request_id: int
    machines: tuple[MachineInfo, ...]


# --- unsolicited -----------------------------------------------------------------


@CONTROL.register
@dataclass(frozen=True)
class RouteError(Message):
    """Body of an ERROR frame: a DATA frame to ``frame.peer`` was not delivered."""

    KIND = "route-error"
    code: FailureCode
    message: str


@CONTROL.register
@dataclass(frozen=True)
class Presence(Message):
    """Body of a PRESENCE frame: ``frame.peer`` came online or went offline."""

    KIND = "presence"
    online: bool
    at: float


@CONTROL.register
@dataclass(frozen=True)
class MachineRevocation(Message):
    """Relay → the revoked machine, in a NOTICE frame: the controller's signed revoke,
    forwarded as is. The machine deletes its keys only if this verifies against a
    controller it paired with (see :mod:`starmux.revocation`): a relay alone cannot
    make a machine forget its identity."""

    KIND = "machine-revocation"
    machine_key: bytes
    account: bytes
    revoked_by: bytes  # the signing controller's key
    issued_at: float
    signature: bytes  # see relay_auth.revoke_transcript


class NoticeEvent(enum.StrEnum):
    PAIRED = "paired"  # to a machine: a controller granted you
    REVOKED = "revoked"  # to a machine (before close) and to every controller of the account
    RESTARTING = "restarting"  # the relay is shutting down; reconnect after ``retry_after``
    #: to a machine: its pairing ticket burnt (too many failed attempts); ``subject`` is
    #: the ticket. Its code is dead: get a new ticket and show a fresh code now.
    TICKET_BURNT = "ticket-burnt"
    DEVICES_CHANGED = "devices-changed"  # to every device: the account's device log grew
    DEVICE_REMOVED = "device-removed"  # to the removed device (before close) and every other


@CONTROL.register
@dataclass(frozen=True)
class Notice(Message):
    KIND = "notice"
    event: NoticeEvent
    subject: bytes  # the key the notice is about (a machine), or empty
    account: bytes
    retry_after: float


# Every module that adds relay messages registers them here on import, so whoever
# decodes with CONTROL knows every kind whatever else it happened to import.
from . import device_control, notify_messages  # noqa: E402, F401
