"""Linking a new controller device to an account, both ends, sans-I/O.

The same ``Noise_XXpsk3`` through the relay as pairing (:mod:`starmux.pairing`:
its protocol name, identity message and transport framing), with the inviter —
an owner device showing the link code — where the machine stands::

    new device (initiator)                     inviter (responder, an owner)
    ``-> e``                 (no payload)
                                               ``<- e, ee, s, es`` + inviter card, account
    check card: controller, signs its DH key,
    fingerprint matches the code
    ``-> s, se, psk``        + new device's card
                                               psk proves the code was read (else abort)
    both show the comparison code; the inviter's person confirms, the inviter
    appends ``add(new device, role)`` at the relay (consuming the ticket) and sends
                                               ``LinkWelcome`` (account, log, machines)
    verify the log: it names this device with
    the role the code promised, the account is
    the handshake's; store all
    ``PairingStored``

The prologue binds ``starmux/link/v1``, the relay's key, the ticket and the
inviter's fingerprint: a pairing transcript can never complete a link or the
other way round. Every failure is final (:class:`~starmux.pairing.PairingFailed`).

The link code: ``starmux://link/v1?relay=&rfp=&ticket=&ifp=&secret=&role=``.
"""

from __future__ import annotations

import enum
import hmac
import urllib.parse
from dataclasses import dataclass, field

import nacl.utils

from .channel import SecureChannel
from .device_log import DeviceLog, decode_entries
from .device_messages import LinkWelcome
from .device_roles import DeviceRole
from .e2e import Kind, unwrap, wrap
from .errors import CryptoError, DeviceLogError, PairingCodeError, RemoteProtocolError, UsageError
from .fingerprint import (
    comparison_code,
    fingerprint_bytes,
    fingerprint_from_text,
    fingerprints_match,
    normalize_fingerprint,
)
from .identity import IdentityCard, NodeKeys, Role
from .messages import APP, PairingIdentity, PairingStored
from .noise import HandshakeState, KeyPair
from .pairing import PAIR_PROTOCOL, PairingAborted, PairingFailed, Rng
from .pairing_code import (
    MAX_CODE_LENGTH,
    SECRET_SIZE,
    TICKET_SIZE,
    _b64,
    _unb64,
    check_relay_url,
)
from .transcript import transcript

LINK_DOMAIN = b"starmux/link/v1"
PREFIX = "starmux://link/v1?"
_PARAMS = ("relay", "rfp", "ticket", "ifp", "secret", "role")
_HINT = "copy the whole code `starmux devices link` printed, starting with starmux://link/v1?"


@dataclass(frozen=True)
class LinkCode:
    relay_url: str
    relay_fingerprint: str
    ticket: bytes
    inviter_fingerprint: str
    secret: bytes = field(repr=False)
    role: DeviceRole = DeviceRole.VIEWER

    def __post_init__(self) -> None:
        check_relay_url(self.relay_url)
        if len(self.ticket) != TICKET_SIZE or len(self.secret) != SECRET_SIZE:
            raise UsageError("ticket is 16 bytes and secret 32")
        normalize_fingerprint(self.relay_fingerprint)
        normalize_fingerprint(self.inviter_fingerprint)

    def to_text(self) -> str:
        return PREFIX + urllib.parse.urlencode(
            {
                "relay": self.relay_url,
                "rfp": normalize_fingerprint(self.relay_fingerprint).replace("-", ""),
                "ticket": _b64(self.ticket),
                "ifp": normalize_fingerprint(self.inviter_fingerprint).replace("-", ""),
                "secret": _b64(self.secret),
                "role": self.role.value,
            },
            safe=":/",
        )


def parse_link_code(text: str) -> LinkCode:
    """Parse a pasted or scanned link code; raises :class:`PairingCodeError`."""
    text = text.strip() if isinstance(text, str) else ""
    if len(text) > MAX_CODE_LENGTH or not text.startswith(PREFIX):
        if text.startswith("starmux://pair/"):
            raise PairingCodeError(
                "this is a machine pairing code, not a device link code",
                hint="pair machines with `starmux pair CODE`",
            )
        raise PairingCodeError("this is not a starmux link code", hint=_HINT)
    try:
        pairs = urllib.parse.parse_qsl(
            text[len(PREFIX) :], strict_parsing=True, max_num_fields=2 * len(_PARAMS)
        )
    except ValueError as exc:
        raise PairingCodeError("the link code's parameters are garbled", hint=_HINT) from exc
    params = dict(pairs)
    if len(params) != len(pairs) or set(params) != set(_PARAMS):
        raise PairingCodeError(
            "the link code lacks or repeats a part (was it cut off?)", hint=_HINT
        )
    try:
        return LinkCode(
            relay_url=check_relay_url(params["relay"]),
            relay_fingerprint=normalize_fingerprint(params["rfp"]),
            ticket=_unb64(params["ticket"], TICKET_SIZE, "ticket"),
            inviter_fingerprint=normalize_fingerprint(params["ifp"]),
            secret=_unb64(params["secret"], SECRET_SIZE, "secret"),
            role=DeviceRole(params["role"]),
        )
    except (UsageError, ValueError) as exc:
        if isinstance(exc, PairingCodeError):
            raise
        raise PairingCodeError(f"the link code is malformed: {exc}", hint=_HINT) from exc


def link_prologue(relay_key: bytes, ticket: bytes, inviter_fp: bytes) -> bytes:
    return transcript(LINK_DOMAIN, relay_key, ticket, inviter_fp)


class Phase(enum.Enum):
    AWAIT_FIRST = "await-first"  # inviter
    AWAIT_FINAL = "await-final"  # inviter: sent <-e,ee,s,es
    CONFIRMING = "confirming"  # inviter: handshake done, append then welcome
    AWAIT_STORED = "await-stored"  # inviter: welcome sent
    AWAIT_IDENTITY = "await-identity"  # new device: sent ->e
    AWAIT_WELCOME = "await-welcome"  # new device: sent ->s,se,psk
    LINKED = "linked"
    FAILED = "failed"


class _End:
    def __init__(self, hs: HandshakeState, phase: Phase) -> None:
        self._hs = hs
        self.phase = phase
        self._channel: SecureChannel | None = None
        self.comparison_code = ""
        self.account = b""

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

    def _finish_handshake(self) -> None:
        self.comparison_code = comparison_code(self._hs.handshake_hash)
        self._channel = SecureChannel.from_handshake(self._hs)

    def _identity(self, payload: bytes) -> tuple[IdentityCard, bytes]:
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
        return card, identity.account

    def _seal(self, message: LinkWelcome | PairingStored) -> bytes:
        assert self._channel is not None
        return wrap(Kind.PAIR_TRANSPORT, self._channel.encrypt(APP.encode(message)))


class Inviter(_End):
    """The owner device that showed the code."""

    def __init__(
        self,
        keys: NodeKeys,
        card: IdentityCard,
        *,
        account: bytes,
        relay_key: bytes,
        ticket: bytes,
        secret: bytes,
        rng: Rng = nacl.utils.random,
    ) -> None:
        hs = HandshakeState(
            PAIR_PROTOCOL,
            initiator=False,
            prologue=link_prologue(relay_key, ticket, fingerprint_bytes(keys.sign_public)),
            s=KeyPair.from_private(keys.dh_private),
            psks=[secret],
            rng=rng,
        )
        super().__init__(hs, Phase.AWAIT_FIRST)
        self._card = card
        self.account = account
        self.device: IdentityCard | None = None

    def receive(self, body: bytes) -> bytes | None:
        if self.phase is Phase.AWAIT_STORED:
            try:
                APP.decode_as(self._payload(body, Kind.PAIR_TRANSPORT), PairingStored)
            except RemoteProtocolError:
                raise self._fail("the new device sent an invalid message") from None
            self.phase = Phase.LINKED
            return None
        payload = self._payload(body, Kind.PAIR_HANDSHAKE)
        try:
            if self.phase is Phase.AWAIT_FIRST:
                if self._hs.read_message(payload):
                    raise self._fail("the first link message must carry no data")
                self.phase = Phase.AWAIT_FINAL
                me = APP.encode(PairingIdentity(self._card.encode(), self.account))
                return wrap(Kind.PAIR_HANDSHAKE, self._hs.write_message(me))
            if self.phase is not Phase.AWAIT_FINAL:
                raise self._fail(f"unexpected link message in phase {self.phase.value}")
            payload = self._hs.read_message(payload)
        except CryptoError:
            raise self._fail("a device tried to link with a wrong or stale code") from None
        self.device, _ = self._identity(payload)
        self._finish_handshake()
        self.phase = Phase.CONFIRMING
        return None

    def welcome(self, log: DeviceLog, machines: tuple[bytes, ...]) -> bytes:
        """After the relay accepted the ``add`` entry: everything the device needs."""
        if self.phase is not Phase.CONFIRMING:
            raise UsageError("welcome only after the handshake")
        self.phase = Phase.AWAIT_STORED
        return self._seal(LinkWelcome(self.account, log.encode(), machines))


class NewDevice(_End):
    """The device being linked, holding the code."""

    def __init__(
        self,
        keys: NodeKeys,
        card: IdentityCard,
        code: LinkCode,
        *,
        relay_key: bytes,
        rng: Rng = nacl.utils.random,
    ) -> None:
        hs = HandshakeState(
            PAIR_PROTOCOL,
            initiator=True,
            prologue=link_prologue(
                relay_key, code.ticket, fingerprint_from_text(code.inviter_fingerprint)
            ),
            s=KeyPair.from_private(keys.dh_private),
            psks=[code.secret],
            rng=rng,
        )
        super().__init__(hs, Phase.AWAIT_IDENTITY)
        self._keys = keys
        self._card = card
        self._code = code
        self.inviter: IdentityCard | None = None
        self.log: DeviceLog | None = None
        self.machines: tuple[IdentityCard, ...] = ()

    def start(self) -> bytes:
        return wrap(Kind.PAIR_HANDSHAKE, self._hs.write_message(b""))

    def receive(self, body: bytes) -> bytes | None:
        if self.phase is Phase.AWAIT_IDENTITY:
            try:
                payload = self._hs.read_message(self._payload(body, Kind.PAIR_HANDSHAKE))
            except CryptoError:
                raise self._fail("the inviter's handshake message is invalid") from None
            self.inviter, self.account = self._identity(payload)
            if len(self.account) != 16 or not fingerprints_match(
                self.inviter.fingerprint, self._code.inviter_fingerprint
            ):
                raise self._fail("the inviter is not the device the code names; refusing")
            final = self._hs.write_message(APP.encode(PairingIdentity(self._card.encode(), b"")))
            self._finish_handshake()
            self.phase = Phase.AWAIT_WELCOME
            return wrap(Kind.PAIR_HANDSHAKE, final)
        if self.phase is not Phase.AWAIT_WELCOME:
            raise self._fail(f"unexpected link message in phase {self.phase.value}")
        try:
            welcome = APP.decode_as(self._payload(body, Kind.PAIR_TRANSPORT), LinkWelcome)
            log = DeviceLog.verify(decode_entries(welcome.log), account=self.account)
            machines = tuple(IdentityCard.decode(card) for card in welcome.machines)
        except (RemoteProtocolError, CryptoError):
            raise self._fail("the inviter sent an invalid account, log or machine") from None
        except DeviceLogError as exc:
            raise self._fail(f"the inviter's device log is invalid: {exc.message}") from None
        me = log.device(self._keys.sign_public)
        if (
            me is None
            or me.role is not self._code.role
            or not hmac.compare_digest(welcome.account, self.account)
        ):
            raise self._fail("the inviter's log does not add this device as the code promised")
        if any(card.role is not Role.MACHINE for card in machines):
            raise self._fail("the inviter sent a machine card that is not a machine's")
        self.log, self.machines = log, machines
        self.phase = Phase.LINKED
        return self._seal(PairingStored())
