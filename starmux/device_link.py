"""Linking a controller device to an account, both directions, sans-I/O.

One protocol, two directions (DESIGN.md section 9), told apart by who shows the code:

- **invite**: an owner shows a *link code* (``starmux devices link``), the new device
  reads it (``starmux link CODE``);
- **join**: the new device shows a *join code* (``starmux link --show``), an owner
  reads it (``starmux devices add CODE``): for a device without a camera, such as a
  laptop's browser.

Whoever shows the code holds the relay's ticket and is the Noise responder; whoever
reads it opens the ticket and is the initiator. Whichever end is the owner appends
the ``add`` entry and hands over the account; the other end is the new device. The
same ``Noise_XXpsk3`` as pairing (:mod:`starmux.pairing`: its protocol name,
identity message and transport framing)::

    reader (initiator, opened the ticket)      shower (responder, holds the ticket)
    ``-> e``                 (no payload)
                                               ``<- e, ee, s, es`` + shower's identity
    check: a controller card, binding the DH
    key, with the fingerprint the code names
    person compares the comparison code
    ``-> s, se, psk``        + reader's identity
                                               psk proves the code was read (else abort)
                                               person compares the comparison code
                       join only: new device ``PairingAccepted`` (it confirmed too)
    owner: append ``add(new device, role)`` at the relay (consuming the ticket),
    then ``LinkWelcome`` (account, log, machines) ──▶ new device verifies: the log
    adds it (with the promised role, for an invite) to the handshake's account
                                   new device ``PairingStored`` ──▶ owner

An identity is ``PairingIdentity(card, account)``: the owner's carries its account
id, the new device's none. The owner appends only after both persons confirmed:
in an invite the reader (the new device) confirms before its last handshake
message; in a join the new device confirms after it and says so. The prologue binds
the direction's domain, the relay's key, the ticket and the shower's fingerprint,
so no transcript of a pairing, an invite or a join completes another. Every failure
is final (:class:`~starmux.pairing.PairingFailed`).

The codes of both directions: :mod:`starmux.link_code`.
"""

from __future__ import annotations

import enum
import hmac
from typing import TypeVar

import nacl.utils

from .channel import SecureChannel
from .codec import Message
from .device_log import DeviceLog, decode_entries
from .device_messages import LinkWelcome
from .device_roles import DeviceRole
from .e2e import Kind, unwrap, wrap
from .errors import CryptoError, DeviceLogError, RemoteProtocolError, UsageError
from .fingerprint import comparison_code, fingerprint_from_text, fingerprints_match
from .identity import IdentityCard, NodeKeys, Role
from .link_code import FORMS, Direction, LinkCode
from .messages import APP, PairingAccepted, PairingIdentity, PairingStored
from .noise import HandshakeState, KeyPair
from .pairing import PAIR_PROTOCOL, PairingAborted, PairingFailed, Rng
from .transcript import transcript

ACCOUNT_SIZE = 16
_M = TypeVar("_M", bound=Message)


class Part(enum.Enum):
    OWNER = "owner"
    NEW_DEVICE = "new-device"


def link_prologue(direction: Direction, relay_key: bytes, ticket: bytes, shower_fp: bytes) -> bytes:
    return transcript(FORMS[direction].domain, relay_key, ticket, shower_fp)


class Phase(enum.Enum):
    START = "start"  # reader: nothing sent yet
    AWAIT_FIRST = "await-first"  # shower: waits for ->e
    AWAIT_IDENTITY = "await-identity"  # reader: sent ->e
    AWAIT_FINAL = "await-final"  # shower: sent <-e,ee,s,es
    CONFIRMING = "confirming"  # the handshake is read: the person compares, then accept()
    AWAIT_ACCEPTED = "await-accepted"  # owner reading a join code: the new device confirms
    ADDING = "adding"  # owner: append the add entry at the relay, then welcome()
    AWAIT_WELCOME = "await-welcome"  # new device
    AWAIT_STORED = "await-stored"  # owner: welcome sent
    LINKED = "linked"
    FAILED = "failed"


class Step(enum.Enum):
    START = "start"
    FIRST = "first"  # ->e received
    IDENTITY = "identity"  # <-e,ee,s,es received
    FINAL = "final"  # ->s,se,psk received
    ACCEPT = "accept"  # this end's person confirmed
    ACCEPTED = "accepted"  # PairingAccepted received
    WELCOME = "welcome"  # LinkWelcome sent
    WELCOMED = "welcomed"  # LinkWelcome received
    STORED = "stored"  # PairingStored received


#: Every legal move; anything else fails the attempt. ACCEPT depends on the end.
TRANSITIONS: dict[tuple[Phase, Step], Phase] = {
    (Phase.START, Step.START): Phase.AWAIT_IDENTITY,
    (Phase.AWAIT_FIRST, Step.FIRST): Phase.AWAIT_FINAL,
    (Phase.AWAIT_IDENTITY, Step.IDENTITY): Phase.CONFIRMING,
    (Phase.AWAIT_FINAL, Step.FINAL): Phase.CONFIRMING,
    (Phase.AWAIT_ACCEPTED, Step.ACCEPTED): Phase.ADDING,
    (Phase.ADDING, Step.WELCOME): Phase.AWAIT_STORED,
    (Phase.AWAIT_STORED, Step.STORED): Phase.LINKED,
    (Phase.AWAIT_WELCOME, Step.WELCOMED): Phase.LINKED,
}
#: (part, shows the code) → the phase after this end's person confirmed.
AFTER_ACCEPT: dict[tuple[Part, bool], Phase] = {
    (Part.OWNER, True): Phase.ADDING,  # invite: the new device confirmed before ->s,se,psk
    (Part.OWNER, False): Phase.AWAIT_ACCEPTED,  # join: sends ->s,se,psk, waits for the device
    (Part.NEW_DEVICE, False): Phase.AWAIT_WELCOME,  # invite: sends ->s,se,psk
    (Part.NEW_DEVICE, True): Phase.AWAIT_WELCOME,  # join: sends PairingAccepted
}


class LinkAttempt:
    """One end of one link attempt. Feed it the other end's DATA bodies
    (:meth:`receive`), send what it returns; :meth:`accept` once the person
    confirmed the comparison code; the owner appends and then :meth:`welcome`."""

    def __init__(
        self,
        keys: NodeKeys,
        card: IdentityCard,
        code: LinkCode,
        *,
        shows: bool,
        relay_key: bytes,
        account: bytes = b"",
        role: DeviceRole | None = None,
        rng: Rng = nacl.utils.random,
    ) -> None:
        """``shows``: this end showed ``code`` (made its secret, holds its ticket), else
        it read it. ``account``: the owner's end only. ``role``: an owner reading a
        join code adds the device with it; an invite's role is the code's."""
        direction = code.direction
        self.part = Part.OWNER if shows == (direction is Direction.INVITE) else Part.NEW_DEVICE
        self.shows = shows
        if direction is Direction.INVITE:
            role = code.role
        if (self.part is Part.OWNER) != (len(account) == ACCOUNT_SIZE):
            raise UsageError("the owner's end knows the account; the new device's does not")
        if self.part is Part.OWNER and role is None:
            raise UsageError("the owner's end knows the role it adds")
        if shows and not fingerprints_match(keys.fingerprint, code.shower_fingerprint):
            raise UsageError("the code must name the device that shows it")
        self._keys = keys
        self._card = card
        self._shower_fingerprint = code.shower_fingerprint
        self._hs = HandshakeState(
            PAIR_PROTOCOL,
            initiator=not shows,
            prologue=link_prologue(
                direction, relay_key, code.ticket, fingerprint_from_text(code.shower_fingerprint)
            ),
            s=KeyPair.from_private(keys.dh_private),
            psks=[code.secret],
            rng=rng,
        )
        self.phase = Phase.AWAIT_FIRST if shows else Phase.START
        self._channel: SecureChannel | None = None
        self._final = b""  # a reader's ->s,se,psk, sent once its person confirmed
        #: the owner: the account it adds to and the role; the new device: what the
        #: owner says (an invite's role is promised by the code and checked)
        self.account = account
        self.role = role
        self.comparison_code = ""
        self.other: IdentityCard | None = None  # the other end's card
        self.log: DeviceLog | None = None  # the new device: the log it was welcomed with
        self.machines: tuple[IdentityCard, ...] = ()

    # --- moves ---------------------------------------------------------------------
    def start(self) -> bytes:
        """The reader's first message."""
        self._move(Step.START)
        return wrap(Kind.PAIR_HANDSHAKE, self._hs.write_message(b""))

    def receive(self, body: bytes) -> bytes | None:
        """One DATA body from the other end; returns a body to send, if any."""
        if self.phase in (Phase.AWAIT_FIRST, Phase.AWAIT_IDENTITY, Phase.AWAIT_FINAL):
            return self._handshake(self._payload(body, Kind.PAIR_HANDSHAKE))
        message = self._payload(body, Kind.PAIR_TRANSPORT)
        if self.phase is Phase.AWAIT_ACCEPTED:
            self._decode(message, PairingAccepted)
            self._move(Step.ACCEPTED)
            return None
        if self.phase is Phase.AWAIT_STORED:
            self._decode(message, PairingStored)
            self._move(Step.STORED)
            return None
        if self.phase is Phase.AWAIT_WELCOME:
            self._welcomed(self._decode(message, LinkWelcome))
            self._move(Step.WELCOMED)
            return self._seal(PairingStored())
        raise self._fail(f"unexpected link message in phase {self.phase.value}")

    def accept(self) -> bytes | None:
        """This end's person confirmed the comparison code; returns a body to send."""
        if self.phase is not Phase.CONFIRMING:
            raise UsageError("accept only once the handshake is read")
        self.phase = AFTER_ACCEPT[(self.part, self.shows)]
        if not self.shows:
            return wrap(Kind.PAIR_HANDSHAKE, self._final)
        return self._seal(PairingAccepted("")) if self.part is Part.NEW_DEVICE else None

    def welcome(self, log: DeviceLog, machines: tuple[bytes, ...]) -> bytes:
        """The owner, after the relay accepted the ``add`` entry: all the device needs."""
        if self.phase is not Phase.ADDING:
            raise UsageError("welcome only once both ends confirmed")
        self._move(Step.WELCOME)
        return self._seal(LinkWelcome(self.account, log.encode(), machines))

    # --- the parts -----------------------------------------------------------------
    def _move(self, step: Step) -> None:
        following = TRANSITIONS.get((self.phase, step))
        if following is None:
            raise self._fail(f"unexpected link message in phase {self.phase.value}")
        self.phase = following

    def _handshake(self, payload: bytes) -> bytes | None:
        try:
            if self.phase is Phase.AWAIT_FIRST:
                if self._hs.read_message(payload):
                    raise self._fail("the first link message must carry no data")
                self._move(Step.FIRST)
                return wrap(Kind.PAIR_HANDSHAKE, self._hs.write_message(self._identity_payload()))
            identity = self._hs.read_message(payload)
        except CryptoError:
            if self.shows:  # the psk is mixed into ->s,se,psk: almost always a wrong secret
                raise self._fail("a device tried to link with a wrong or stale code") from None
            raise self._fail("the other device's handshake message is invalid") from None
        self._take_identity(identity)
        if self.shows:
            self._move(Step.FINAL)
        else:
            self._final = self._hs.write_message(self._identity_payload())
            self._move(Step.IDENTITY)
        self.comparison_code = comparison_code(self._hs.handshake_hash)
        self._channel = SecureChannel.from_handshake(self._hs)
        return None

    def _identity_payload(self) -> bytes:
        account = self.account if self.part is Part.OWNER else b""
        return APP.encode(PairingIdentity(self._card.encode(), account))

    def _take_identity(self, payload: bytes) -> None:
        try:
            identity = APP.decode_as(payload, PairingIdentity)
            card = IdentityCard.decode(identity.card)
        except (RemoteProtocolError, CryptoError):
            raise self._fail("the other device sent an invalid identity card") from None
        remote = self._hs.remote_static
        if card.role is not Role.CONTROLLER:
            raise self._fail(f"the other side is a {card.role.value}, not a controller device")
        if remote is None or not hmac.compare_digest(card.dh_public, remote):
            raise self._fail("the other device's card does not match its handshake key")
        if not self.shows and not fingerprints_match(card.fingerprint, self._shower_fingerprint):
            raise self._fail("the other device is not the one the code names; refusing")
        if self.part is Part.OWNER:
            if identity.account:
                raise self._fail("the other device claims an account: it is not a new device")
        elif len(identity.account) != ACCOUNT_SIZE:
            raise self._fail("the other device sent no valid account id")
        else:
            self.account = identity.account
        self.other = card

    def _welcomed(self, welcome: LinkWelcome) -> None:
        try:
            log = DeviceLog.verify(decode_entries(welcome.log), account=self.account)
            machines = tuple(IdentityCard.decode(card) for card in welcome.machines)
        except (RemoteProtocolError, CryptoError):
            raise self._fail("the owner sent an invalid account, log or machine") from None
        except DeviceLogError as exc:
            raise self._fail(f"the owner's device log is invalid: {exc.message}") from None
        me = log.device(self._keys.sign_public)
        if (
            me is None
            or (self.role is not None and me.role is not self.role)
            or not hmac.compare_digest(welcome.account, self.account)
        ):
            raise self._fail("the owner's log does not add this device as the code promised")
        if any(card.role is not Role.MACHINE for card in machines):
            raise self._fail("the owner sent a machine card that is not a machine's")
        self.log, self.machines, self.role = log, machines, me.role

    # --- envelope ------------------------------------------------------------------
    def _fail(self, message: str, *, aborted: bool = False) -> PairingFailed:
        self.phase = Phase.FAILED
        self._channel = None
        return PairingAborted(message) if aborted else PairingFailed(message)

    def _payload(self, body: bytes, kind: Kind) -> bytes:
        try:
            got, payload = unwrap(body)
        except RemoteProtocolError:
            raise self._fail("unexpected message while linking") from None
        if got is Kind.PAIR_ABORT:
            raise self._fail("the other device ended the link attempt", aborted=True)
        if got is not kind:
            raise self._fail("unexpected message while linking")
        if kind is Kind.PAIR_TRANSPORT:
            if self._channel is None:
                raise self._fail("unexpected message while linking")
            try:
                return self._channel.decrypt(payload)
            except CryptoError:
                raise self._fail("a link message failed to decrypt") from None
        return payload

    def _decode(self, message: bytes, cls: type[_M]) -> _M:
        try:
            return APP.decode_as(message, cls)
        except RemoteProtocolError:
            raise self._fail("the other device sent an invalid link message") from None

    def _seal(self, message: LinkWelcome | PairingAccepted | PairingStored) -> bytes:
        assert self._channel is not None
        return wrap(Kind.PAIR_TRANSPORT, self._channel.encrypt(APP.encode(message)))
