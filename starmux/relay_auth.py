"""Relay authentication, both ends, sans-I/O; and the transcripts controllers sign.

The exchange (one WebSocket, before any other frame)::

    relay → node   CHALLENGE  AuthChallenge(relay_card, nonce, relay_time)
    node  → relay  AUTH       AuthResponse(card, client_nonce, sig_node)
    relay → node   WELCOME    Welcome(status, account, sig_relay, relay_time)

- ``nonce`` is fresh from the relay for every connection and used once: a signed
  AuthResponse captured on one connection is worthless on any other.
- ``sig_node`` covers ``transcript(AUTH_DOMAIN, relay_key, nonce, client_nonce, card)``.
- ``sig_relay`` covers ``transcript(WELCOME_DOMAIN, relay_key, nonce, client_nonce,
  node_key, status, account)``: the relay proves it holds the key the node pinned,
  on a challenge (``client_nonce``) it could not have prepared.

Invariants: a :class:`NodeAuth` reaches ``done`` only after verifying the relay's
card, its pin and its signature; any failure is final.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Callable
from dataclasses import dataclass

import nacl.utils

from .control import CONTROL, AuthChallenge, AuthResponse, SessionStatus, Welcome
from .errors import CryptoError, RemoteProtocolError, UsageError
from .fingerprint import fingerprint
from .frames import Frame, FrameType, encode_frame
from .identity import IdentityCard, NodeKeys, Role, verify_signature
from .transcript import signed_time, transcript

AUTH_DOMAIN = b"starmux/relay-auth/v1"
WELCOME_DOMAIN = b"starmux/relay-welcome/v1"
GRANT_DOMAIN = b"starmux/machine-grant/v1"
REVOKE_DOMAIN = b"starmux/machine-revoke/v1"
NONCE_SIZE = 32

Rng = Callable[[int], bytes]


def auth_transcript(relay_key: bytes, nonce: bytes, client_nonce: bytes, card: bytes) -> bytes:
    return transcript(AUTH_DOMAIN, relay_key, nonce, client_nonce, card)


def welcome_transcript(
    relay_key: bytes,
    nonce: bytes,
    client_nonce: bytes,
    node_key: bytes,
    status: SessionStatus,
    account: bytes,
) -> bytes:
    return transcript(
        WELCOME_DOMAIN, relay_key, nonce, client_nonce, node_key, status.value.encode(), account
    )


def grant_transcript(account: bytes, machine_card: bytes, issued_at: float) -> bytes:
    return transcript(GRANT_DOMAIN, account, machine_card, signed_time(issued_at))


def revoke_transcript(account: bytes, machine_key: bytes, issued_at: float) -> bytes:
    return transcript(REVOKE_DOMAIN, account, machine_key, signed_time(issued_at))


class RelayKeyMismatch(CryptoError):
    """The relay's key is not the one pinned: possibly an impostor."""


@dataclass(frozen=True)
class Authenticated:
    status: SessionStatus
    account: bytes
    relay_card: IdentityCard
    relay_time: float


class _NodeState(enum.Enum):
    AWAIT_CHALLENGE = "await-challenge"
    AWAIT_WELCOME = "await-welcome"
    DONE = "done"
    FAILED = "failed"


class NodeAuth:
    """The node's side: feed relay frames in, get frames to send and the outcome."""

    def __init__(
        self,
        keys: NodeKeys,
        card: IdentityCard,
        *,
        pinned_relay_key: bytes | None,
        rng: Rng = nacl.utils.random,
    ) -> None:
        if card.sign_public != keys.sign_public:
            raise UsageError("the card does not belong to these keys")
        self._keys = keys
        self._card = card.encode()
        self._pin = pinned_relay_key
        self._rng = rng
        self._state = _NodeState.AWAIT_CHALLENGE
        self._nonce = b""
        self._client_nonce = b""
        self._relay_card: IdentityCard | None = None
        self.result: Authenticated | None = None

    def receive_challenge(self, frame: Frame) -> bytes:
        """Verify the challenge; return the AUTH frame to send."""
        self._expect(_NodeState.AWAIT_CHALLENGE)
        try:
            if frame.type is not FrameType.CHALLENGE:
                raise RemoteProtocolError("expected the relay's challenge")
            challenge = CONTROL.decode_as(frame.body, AuthChallenge)
            relay_card = IdentityCard.decode(challenge.relay_card)
            if relay_card.role is not Role.RELAY or len(challenge.nonce) != NONCE_SIZE:
                raise RemoteProtocolError("malformed relay challenge")
            if self._pin is not None and not hmac.compare_digest(self._pin, relay_card.sign_public):
                raise RelayKeyMismatch(
                    f"the relay's key changed: expected {fingerprint(self._pin)}, "
                    f"got {relay_card.fingerprint}",
                    hint="if the relay was reinstalled on purpose, re-pin it with "
                    "`starmux relay repin NEW-FINGERPRINT` in every controller and machine "
                    "home; otherwise someone may be impersonating it",
                )
        except Exception:
            self._state = _NodeState.FAILED
            raise
        self._relay_card = relay_card
        self._nonce = challenge.nonce
        self._client_nonce = self._rng(NONCE_SIZE)
        signature = self._keys.sign(
            auth_transcript(relay_card.sign_public, self._nonce, self._client_nonce, self._card)
        )
        self._state = _NodeState.AWAIT_WELCOME
        body = CONTROL.encode(AuthResponse(self._card, self._client_nonce, signature))
        return encode_frame(FrameType.AUTH, b"", body)

    def receive_welcome(self, frame: Frame) -> Authenticated:
        self._expect(_NodeState.AWAIT_WELCOME)
        assert self._relay_card is not None
        try:
            if frame.type is not FrameType.WELCOME:
                raise RemoteProtocolError("expected the relay's welcome")
            welcome = CONTROL.decode_as(frame.body, Welcome)
            verify_signature(
                self._relay_card.sign_public,
                welcome_transcript(
                    self._relay_card.sign_public,
                    self._nonce,
                    self._client_nonce,
                    self._keys.sign_public,
                    welcome.status,
                    welcome.account,
                ),
                welcome.signature,
            )
        except Exception:
            self._state = _NodeState.FAILED
            raise
        self._state = _NodeState.DONE
        self.result = Authenticated(
            welcome.status, welcome.account, self._relay_card, welcome.relay_time
        )
        return self.result

    def _expect(self, state: _NodeState) -> None:
        if self._state is _NodeState.FAILED:
            raise CryptoError("relay authentication already failed")
        if self._state is not state:
            raise UsageError(f"relay auth is in state {self._state.value}, not {state.value}")


class RelayAuth:
    """The relay's side for one connection: challenge, then verify the answer."""

    def __init__(
        self,
        relay_keys: NodeKeys,
        relay_card: IdentityCard,
        *,
        now: float,
        rng: Rng = nacl.utils.random,
    ) -> None:
        self._keys = relay_keys
        self._card = relay_card
        self.nonce = rng(NONCE_SIZE)
        self._now = now
        self._client_nonce = b""
        self._used = False

    def challenge_frame(self) -> bytes:
        body = CONTROL.encode(AuthChallenge(self._card.encode(), self.nonce, self._now))
        return encode_frame(FrameType.CHALLENGE, b"", body)

    def verify_response(self, frame: Frame) -> IdentityCard:
        """Check the node's AUTH frame; returns its verified card.

        Raises RemoteProtocolError (malformed) or CryptoError (bad signature). Usable
        once: the nonce is burnt whether or not verification succeeds.
        """
        if self._used:
            raise CryptoError()
        self._used = True
        if frame.type is not FrameType.AUTH:
            raise RemoteProtocolError("expected an AUTH frame")
        response = CONTROL.decode_as(frame.body, AuthResponse)
        if len(response.client_nonce) != NONCE_SIZE:
            raise RemoteProtocolError("client nonce must be 32 bytes")
        card = IdentityCard.decode(response.card)
        if card.role is Role.RELAY:
            raise RemoteProtocolError("a relay cannot log in as a node")
        verify_signature(
            card.sign_public,
            auth_transcript(
                self._card.sign_public, self.nonce, response.client_nonce, response.card
            ),
            response.signature,
        )
        self._client_nonce = response.client_nonce
        return card

    def welcome_frame(
        self, card: IdentityCard, status: SessionStatus, account: bytes, *, now: float
    ) -> bytes:
        if not self._client_nonce:
            raise UsageError("welcome_frame needs a verified AUTH response first")
        signature = self._keys.sign(
            welcome_transcript(
                self._card.sign_public,
                self.nonce,
                self._client_nonce,
                card.sign_public,
                status,
                account,
            )
        )
        body = CONTROL.encode(Welcome(status, account, signature, now))
        return encode_frame(FrameType.WELCOME, b"", body)
