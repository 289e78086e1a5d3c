"""Pairing, both ends, sans-I/O: ``Noise_XXpsk3`` through the relay, then the grant.

Controller (initiator)                         Machine (responder)
----------------------                         -------------------
``-> e``                 (no payload: the relay could replay it)
                                               ``<- e, ee, s, es``  + machine card
check card: signs its DH key, fingerprint
matches the code, role machine
``-> s, se, psk``        + controller card, account
                                               check card; psk proves the controller
                                               read the QR secret (else: PAIR_ABORT)
                                               ``PairingAccepted``  (encrypted)
show comparison code, ask the person,
have the relay accept the signed grant
``PairingGranted``       (encrypted)
                                               verify the grant over its own card
                                               ``PairingStored``
both: paired

The prologue binds the protocol version, the relay's key, the ticket and the
machine's fingerprint, so a transcript from another relay, ticket or machine can
never complete. Every failure is final for that attempt (:class:`PairingFailed`,
whose message is for the local person; the peer only ever sees PAIR_ABORT).
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Callable
from typing import TypeVar

import nacl.utils

from .channel import SecureChannel
from .codec import Message
from .e2e import Kind, unwrap, wrap
from .errors import CryptoError, RemoteProtocolError, StarmuxError, UsageError
from .fingerprint import (
    comparison_code,
    fingerprint,
    fingerprint_bytes,
    fingerprint_from_text,
    fingerprints_match,
)
from .identity import MAX_NAME_LENGTH, IdentityCard, NodeKeys, Role, verify_signature
from .messages import APP, PairingAccepted, PairingGranted, PairingIdentity, PairingStored
from .noise import HandshakeState, KeyPair
from .pairing_code import PairingCode
from .relay_auth import grant_transcript
from .transcript import transcript

PAIR_PROTOCOL = "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b"
PAIR_DOMAIN = b"starmux/pair/v1"
Rng = Callable[[int], bytes]
M = TypeVar("M", bound=Message)


class PairingFailed(StarmuxError):
    """This pairing attempt is over; the message says why, for the local person."""


class PairingAborted(PairingFailed):
    """The other side ended the attempt (it already counted the failure)."""


def pairing_prologue(relay_key: bytes, ticket: bytes, machine_sign_key_fp: bytes) -> bytes:
    return transcript(PAIR_DOMAIN, relay_key, ticket, machine_sign_key_fp)


def _identity(
    payload: bytes, role: Role, remote_static: bytes | None
) -> tuple[IdentityCard, bytes]:
    """Decode a PairingIdentity and check its card binds the handshake's static key."""
    try:
        identity = APP.decode_as(payload, PairingIdentity)
        card = IdentityCard.decode(identity.card)
    except (RemoteProtocolError, CryptoError) as exc:
        raise PairingFailed("the other side sent an invalid identity card") from exc
    if card.role is not role:
        raise PairingFailed(f"the other side is a {card.role.value}, not a {role.value}")
    if remote_static is None or not hmac.compare_digest(card.dh_public, remote_static):
        raise PairingFailed("the other side's card does not match its handshake key")
    return card, identity.account


class PairingPhase(enum.Enum):
    """Where one side of a pairing stands (public: a driver waits longer while the
    machine's person decides, i.e. in AWAIT_ACCEPTED)."""

    START = "start"
    AWAIT_IDENTITY = "await-identity"  # controller: sent ->e
    AWAIT_ACCEPTED = "await-accepted"  # controller: sent ->s,se,psk
    CONFIRMED = "confirmed"  # controller: ready to grant
    AWAIT_STORED = "await-stored"  # controller: grant sent
    AWAIT_FIRST = "await-first"  # machine: waiting for ->e
    AWAIT_FINAL = "await-final"  # machine: sent <-e,ee,s,es
    AWAIT_GRANT = "await-grant"  # machine: accepted the controller
    PAIRED = "paired"
    FAILED = "failed"


class _Side:
    def __init__(self) -> None:
        self.phase = PairingPhase.START
        self._channel: SecureChannel | None = None
        self.handshake_hash = b""

    @property
    def comparison_code(self) -> str:
        if not self.handshake_hash:
            raise UsageError("no comparison code before the handshake completes")
        return comparison_code(self.handshake_hash)

    def _expect(self, phase: PairingPhase) -> None:
        if self.phase is PairingPhase.FAILED:
            raise PairingFailed("this pairing attempt already failed")
        if self.phase is not phase:
            raise PairingFailed(f"unexpected pairing message in phase {self.phase.value}")

    def _fail(
        self, message: str, exc: BaseException | None = None, *, aborted: bool = False
    ) -> PairingFailed:
        self.phase = PairingPhase.FAILED
        self._channel = None
        error = PairingAborted(message) if aborted else PairingFailed(message)
        if exc is not None:
            error.__cause__ = exc
        return error

    def _decrypt(self, body: bytes) -> bytes:
        try:
            kind, payload = unwrap(body)
        except RemoteProtocolError as exc:
            raise self._fail("unexpected message during pairing", exc) from exc
        if kind is Kind.PAIR_ABORT:
            # The machine reported this failure itself: counting it here too burnt
            # codes after two wrong tries instead of three.
            raise self._fail(
                "the machine refused the pairing: the code is wrong or stale "
                "(its secret did not match)",
                aborted=True,
            )
        if kind is not Kind.PAIR_TRANSPORT or self._channel is None:
            raise self._fail("unexpected message during pairing")
        try:
            return self._channel.decrypt(payload)
        except CryptoError as exc:
            raise self._fail("a pairing message failed to decrypt", exc) from exc

    def _receive_message(self, body: bytes, cls: type[M]) -> M:
        try:
            return APP.decode_as(self._decrypt(body), cls)
        except RemoteProtocolError as exc:
            raise self._fail("the other side sent an invalid pairing message", exc) from exc

    def _encrypt(self, message: PairingAccepted | PairingGranted | PairingStored) -> bytes:
        assert self._channel is not None
        return wrap(Kind.PAIR_TRANSPORT, self._channel.encrypt(APP.encode(message)))


class ControllerPairing(_Side):
    """The controller's side. Feed it the machine's DATA bodies; send what it returns."""

    def __init__(
        self,
        keys: NodeKeys,
        card: IdentityCard,
        code: PairingCode,
        *,
        relay_key: bytes,
        account: bytes,
        rng: Rng = nacl.utils.random,
    ) -> None:
        super().__init__()
        self._card = card
        self._code = code
        self._account = account
        self._machine_key = b""
        self.machine_card: IdentityCard | None = None
        #: the name to show: the card's, or the real one the machine sent encrypted
        self.machine_name = ""
        self._hs = HandshakeState(
            PAIR_PROTOCOL,
            initiator=True,
            prologue=pairing_prologue(
                relay_key, code.ticket, fingerprint_from_text(code.machine_fingerprint)
            ),
            s=KeyPair.from_private(keys.dh_private),
            psks=[code.secret],
            rng=rng,
        )

    def start(self, machine_key: bytes) -> bytes:
        """Check the relay's idea of the machine against the code; first message."""
        self._expect(PairingPhase.START)
        if not fingerprints_match(fingerprint(machine_key), self._code.machine_fingerprint):
            raise self._fail(
                f"the machine behind this ticket has fingerprint {fingerprint(machine_key)}, "
                f"not {self._code.machine_fingerprint} as the code says; refusing"
            )
        self._machine_key = machine_key
        self.phase = PairingPhase.AWAIT_IDENTITY
        return wrap(Kind.PAIR_HANDSHAKE, self._hs.write_message(b""))

    def receive(self, body: bytes) -> bytes | None:
        """Handle one DATA body from the machine; returns a body to send, if any."""
        if self.phase is PairingPhase.AWAIT_IDENTITY:
            try:
                kind, payload = unwrap(body)
            except RemoteProtocolError as exc:
                raise self._fail("unexpected message during pairing", exc) from exc
            if kind is Kind.PAIR_ABORT:
                raise self._fail("the machine aborted the pairing", aborted=True)
            if kind is not Kind.PAIR_HANDSHAKE:
                raise self._fail("unexpected message during pairing")
            try:
                identity = self._hs.read_message(payload)
            except CryptoError as exc:
                raise self._fail("the machine's handshake message is invalid", exc) from exc
            card, _ = _identity(identity, Role.MACHINE, self._hs.remote_static)
            if card.sign_public != self._machine_key or not fingerprints_match(
                card.fingerprint, self._code.machine_fingerprint
            ):
                raise self._fail(
                    "the machine's identity does not match the fingerprint in the code; refusing"
                )
            self.machine_card = card
            self.machine_name = card.name
            final = self._hs.write_message(
                APP.encode(PairingIdentity(self._card.encode(), self._account))
            )
            self.handshake_hash = self._hs.handshake_hash
            self._channel = SecureChannel.from_handshake(self._hs)
            self.phase = PairingPhase.AWAIT_ACCEPTED
            return wrap(Kind.PAIR_HANDSHAKE, final)
        if self.phase is PairingPhase.AWAIT_ACCEPTED:
            accepted = self._receive_message(body, PairingAccepted)
            if accepted.name:
                self.machine_name = _valid_name(accepted.name)
            self.phase = PairingPhase.CONFIRMED
            return None
        if self.phase is PairingPhase.AWAIT_STORED:
            self._receive_message(body, PairingStored)
            self.phase = PairingPhase.PAIRED
            return None
        raise self._fail(f"unexpected pairing message in phase {self.phase.value}")

    def grant(self, keys: NodeKeys, *, issued_at: float) -> tuple[bytes, bytes]:
        """Sign the grant. Returns (signature, body to send to the machine)."""
        self._expect(PairingPhase.CONFIRMED)
        assert self.machine_card is not None
        signature = keys.sign(
            grant_transcript(self._account, self.machine_card.encode(), issued_at)
        )
        self.phase = PairingPhase.AWAIT_STORED
        return signature, self._encrypt(PairingGranted(self._account, issued_at, signature))


class MachinePairing(_Side):
    """The machine's side for one ticket and secret; one controller at a time."""

    def __init__(
        self,
        keys: NodeKeys,
        card: IdentityCard,
        *,
        relay_key: bytes,
        ticket: bytes,
        secret: bytes,
        private_name: str = "",
        rng: Rng = nacl.utils.random,
    ) -> None:
        super().__init__()
        self._keys = keys
        self._card = card
        self._private_name = private_name
        self.phase = PairingPhase.AWAIT_FIRST
        self.controller_card: IdentityCard | None = None
        self.account = b""
        self.grant: PairingGranted | None = None
        self._hs = HandshakeState(
            PAIR_PROTOCOL,
            initiator=False,
            prologue=pairing_prologue(relay_key, ticket, fingerprint_bytes(keys.sign_public)),
            s=KeyPair.from_private(keys.dh_private),
            psks=[secret],
            rng=rng,
        )

    def receive(self, body: bytes) -> bytes | None:
        if self.phase is PairingPhase.AWAIT_GRANT:
            granted = self._receive_message(body, PairingGranted)
            assert self.controller_card is not None
            try:
                verify_signature(
                    self.controller_card.sign_public,
                    grant_transcript(granted.account, self._card.encode(), granted.issued_at),
                    granted.signature,
                )
            except CryptoError as exc:
                raise self._fail("the controller's grant does not verify", exc) from exc
            if not hmac.compare_digest(granted.account, self.account):
                raise self._fail("the grant names another account than the handshake")
            self.grant = granted
            self.phase = PairingPhase.PAIRED
            return self._encrypt(PairingStored())
        try:
            kind, payload = unwrap(body)
        except RemoteProtocolError as exc:
            raise self._fail("unexpected message during pairing", exc) from exc
        if kind is not Kind.PAIR_HANDSHAKE:
            raise self._fail("unexpected message during pairing")
        try:
            if self.phase is PairingPhase.AWAIT_FIRST:
                if self._hs.read_message(payload):
                    raise self._fail("the first pairing message must carry no data")
                self.phase = PairingPhase.AWAIT_FINAL
                identity = APP.encode(PairingIdentity(self._card.encode(), b""))
                return wrap(Kind.PAIR_HANDSHAKE, self._hs.write_message(identity))
            self._expect(PairingPhase.AWAIT_FINAL)
            payload = self._hs.read_message(payload)
        except CryptoError as exc:
            # Almost always a wrong secret (the psk is mixed in this message).
            raise self._fail(
                "a controller tried to pair with a wrong or stale secret", exc
            ) from exc
        card, account = _identity(payload, Role.CONTROLLER, self._hs.remote_static)
        if len(account) != 16:
            raise self._fail("the controller sent no valid account id")
        self.controller_card = card
        self.account = account
        self.handshake_hash = self._hs.handshake_hash
        self._channel = SecureChannel.from_handshake(self._hs)
        self.phase = PairingPhase.AWAIT_GRANT
        return self._encrypt(PairingAccepted(self._private_name))


def _valid_name(name: str) -> str:
    # The same rule as a card's name: it is shown in terminals and lists.
    if not 1 <= len(name) <= MAX_NAME_LENGTH or not name.isprintable():
        raise PairingFailed("the machine sent an invalid name")
    return name


def abort_body() -> bytes:
    """A failed attempt, already reported to the relay by the sender."""
    return wrap(Kind.PAIR_ABORT)


def cancel_body() -> bytes:
    """The person cancelled (e.g. Ctrl-C at the prompt): no failed attempt, code stays."""
    return wrap(Kind.PAIR_CANCEL)
