"""A generic, sans-I/O Noise ``HandshakeState`` (spec rev 34, section 5.3).

The engine runs any :class:`~starmux.noise.patterns.HandshakePattern`: it walks
the tokens of the current message and never branches on a pattern's name. Bytes
go in and out; there is no socket, clock or file, and randomness is ``rng``.

States and transitions (anything else raises)::

    HANDSHAKING --last message written/read--> COMPLETE --split()--> SPLIT
         |                                        |
         +--- any crypto failure -----------------+------> FAILED (terminal)

Invariants:

- Turns alternate, initiator first. Writing or reading out of turn, or after the
  last message, is a :class:`UsageError` and changes nothing.
- Any :class:`CryptoError` while reading or writing a message (short message,
  bad tag, low-order point) moves to FAILED; every later call raises
  :class:`CryptoError`. Nothing learned from a failed message is exposed.
- A write that would exceed 65535 bytes is refused *before* any state changes.
- Every key the pattern needs is checked in the constructor, so a handshake
  never stops half-way for a missing key.
- ``split()`` works once: two pairs of transport ciphers with the same keys
  would reuse nonces. It returns ``(send, receive)`` for *this* side.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import nacl.utils

from starmux.errors import CryptoError, UsageError
from starmux.noise.patterns import HandshakePattern, Tokens, parse_protocol_name
from starmux.noise.primitives import DHLEN, TAGLEN, KeyPair, Rng, dh
from starmux.noise.symmetric import CipherState, SymmetricState

__all__ = ["MAX_MESSAGE_LEN", "PSKLEN", "HandshakeState"]

#: The largest Noise message (handshake or transport), spec section 3.
MAX_MESSAGE_LEN = 65535
#: Size of a pre-shared key (spec section 9.1).
PSKLEN = 32

_DH_TOKENS = frozenset({"ee", "es", "se", "ss"})


class _Phase(enum.Enum):
    HANDSHAKING = "handshaking"
    COMPLETE = "complete"
    SPLIT = "split"
    FAILED = "failed"


class HandshakeState:
    """One side of a Noise handshake. See the module docstring for the rules."""

    def __init__(
        self,
        protocol_name: str,
        *,
        initiator: bool,
        prologue: bytes = b"",
        s: KeyPair | None = None,
        e: KeyPair | None = None,
        rs: bytes | None = None,
        psks: Sequence[bytes] = (),
        rng: Rng = nacl.utils.random,
    ) -> None:
        self._pattern = parse_protocol_name(protocol_name)
        self._initiator = initiator
        self._s = s
        self._e = e  # a fixed ephemeral is for test vectors only
        self._rs = rs
        self._re: bytes | None = None
        self._psks = tuple(psks)
        self._rng = rng
        self._check_keys()

        self._phase = _Phase.HANDSHAKING
        self._message_index = 0
        self._psk_index = 0
        self._handshake_hash = b""
        self._symmetric = SymmetricState(protocol_name.encode("ascii"))
        self._symmetric.mix_hash(prologue)
        # Pre-messages: the initiator's first, whichever side we are (spec 5.3).
        for owner_is_initiator, tokens in (
            (True, self._pattern.initiator_pre),
            (False, self._pattern.responder_pre),
        ):
            if "s" in tokens:
                self._symmetric.mix_hash(self._static_of(owner_is_initiator))

    def __repr__(self) -> str:
        role = "initiator" if self._initiator else "responder"
        return (
            f"HandshakeState({self._pattern.name!r}, {role}, phase={self._phase.value}, "
            f"message={self._message_index})"
        )

    def _check_keys(self) -> None:
        pattern = self._pattern
        mine = pattern.initiator_pre if self._initiator else pattern.responder_pre
        theirs = pattern.responder_pre if self._initiator else pattern.initiator_pre
        # In a DH token the first letter is the initiator's key, the second the responder's.
        my_static_dh = {"se", "ss"} if self._initiator else {"es", "ss"}
        needs_s = (
            "s" in mine
            or pattern.sends(self._initiator, "s")
            or any(my_static_dh.intersection(tokens) for tokens in pattern.messages)
        )
        if needs_s and self._s is None:
            raise UsageError(f"{pattern.name} needs this side's static key pair (s)")
        if "s" in theirs and self._rs is None:
            raise UsageError(f"{pattern.name} needs the remote static public key (rs)")
        if "s" not in theirs and self._rs is not None:
            # Accepting it would silently ignore it: the peer's key arrives in a message.
            raise UsageError(f"{pattern.name} sends the remote static key; do not pass rs")
        if self._rs is not None and (not isinstance(self._rs, bytes) or len(self._rs) != DHLEN):
            raise UsageError(f"remote static key must be {DHLEN} bytes")
        if len(self._psks) != pattern.psk_count:
            raise UsageError(
                f"{pattern.name} needs {pattern.psk_count} psks, got {len(self._psks)}"
            )
        if any(not isinstance(psk, bytes) or len(psk) != PSKLEN for psk in self._psks):
            raise UsageError(f"each psk must be {PSKLEN} bytes")

    def _static_of(self, initiator_side: bool) -> bytes:
        if initiator_side == self._initiator:
            assert self._s is not None  # guaranteed by _check_keys
            return self._s.public
        assert self._rs is not None  # guaranteed by _check_keys
        return self._rs

    # -- public state -----------------------------------------------------------

    @property
    def pattern(self) -> HandshakePattern:
        return self._pattern

    @property
    def initiator(self) -> bool:
        return self._initiator

    @property
    def is_complete(self) -> bool:
        return self._phase in (_Phase.COMPLETE, _Phase.SPLIT)

    @property
    def is_my_turn(self) -> bool:
        if self._phase is not _Phase.HANDSHAKING:
            return False
        return (self._message_index % 2 == 0) == self._initiator

    @property
    def handshake_hash(self) -> bytes:
        """The final ``h``, for channel binding; only once the handshake is complete."""
        self._require_alive()
        if not self.is_complete:
            raise UsageError("handshake hash is only final once the handshake is complete")
        return self._handshake_hash

    @property
    def remote_static(self) -> bytes | None:
        """The peer's static public key, once known (pre-message or received).

        Only authenticated once the handshake is complete: the caller must not
        trust it (e.g. look it up in a card) before ``is_complete``.
        """
        self._require_alive()
        return self._rs

    # -- messages ---------------------------------------------------------------

    def write_message(self, payload: bytes = b"") -> bytes:
        if not isinstance(payload, bytes):
            raise UsageError("payload must be bytes")
        tokens = self._begin_turn(writing=True)
        size = self._written_size(tokens, len(payload))
        if size > MAX_MESSAGE_LEN:
            raise UsageError(f"handshake message would be {size} bytes; the limit is 65535")
        try:
            message = bytearray()
            for token in tokens:
                if token == "e":
                    if self._e is None:
                        self._e = KeyPair.generate(self._rng)
                    message += self._e.public
                    self._mix_ephemeral(self._e.public)
                elif token == "s":
                    assert self._s is not None  # guaranteed by _check_keys
                    message += self._symmetric.encrypt_and_hash(self._s.public)
                else:
                    self._mix_secret(token)
            message += self._symmetric.encrypt_and_hash(payload)
        except CryptoError:
            self._fail()
            raise
        self._end_turn()
        return bytes(message)

    def read_message(self, message: bytes) -> bytes:
        if not isinstance(message, bytes):
            raise UsageError("message must be bytes")
        tokens = self._begin_turn(writing=False)
        try:
            if len(message) > MAX_MESSAGE_LEN:
                raise CryptoError()
            rest = memoryview(message)
            for token in tokens:
                if token == "e":
                    if len(rest) < DHLEN:
                        raise CryptoError()
                    self._re, rest = bytes(rest[:DHLEN]), rest[DHLEN:]
                    self._mix_ephemeral(self._re)
                elif token == "s":
                    size = DHLEN + TAGLEN if self._symmetric.has_key() else DHLEN
                    if len(rest) < size:
                        raise CryptoError()
                    self._rs = self._symmetric.decrypt_and_hash(bytes(rest[:size]))
                    rest = rest[size:]
                else:
                    self._mix_secret(token)
            payload = self._symmetric.decrypt_and_hash(bytes(rest))
        except CryptoError:
            self._fail()
            raise
        self._end_turn()
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """The transport ciphers as ``(send, receive)`` from this side's point of view.

        For one-way patterns the spec forbids the responder to send; the caller
        must not use the responder's ``send`` (``SecureChannel`` enforces it).
        """
        self._require_alive()
        if self._phase is _Phase.SPLIT:
            raise UsageError("split() was already called; its ciphers must not be duplicated")
        if self._phase is not _Phase.COMPLETE:
            raise UsageError("cannot split before the handshake is complete")
        initiator_to_responder, responder_to_initiator = self._symmetric.split()
        self._phase = _Phase.SPLIT
        self._e = None  # the ephemeral is no longer needed: drop it (forward secrecy)
        if self._initiator:
            return initiator_to_responder, responder_to_initiator
        return responder_to_initiator, initiator_to_responder

    # -- internals --------------------------------------------------------------

    def _require_alive(self) -> None:
        if self._phase is _Phase.FAILED:
            raise CryptoError()

    def _fail(self) -> None:
        self._phase = _Phase.FAILED
        self._e = None
        self._re = None

    def _begin_turn(self, *, writing: bool) -> Tokens:
        self._require_alive()
        if self._phase is not _Phase.HANDSHAKING:
            raise UsageError("the handshake is already complete")
        if self.is_my_turn != writing:
            raise UsageError(
                "not this side's turn to write" if writing else "not this side's turn to read"
            )
        return self._pattern.messages[self._message_index]

    def _end_turn(self) -> None:
        self._message_index += 1
        if self._message_index == len(self._pattern.messages):
            self._phase = _Phase.COMPLETE
            self._handshake_hash = self._symmetric.get_handshake_hash()

    def _written_size(self, tokens: Tokens, payload_len: int) -> int:
        # Whether a tag is added depends on whether a key exists at that point.
        keyed = self._symmetric.has_key()
        size = 0
        for token in tokens:
            if token == "e":
                size += DHLEN
                keyed = keyed or self._pattern.psk_count > 0
            elif token == "s":
                size += DHLEN + (TAGLEN if keyed else 0)
            else:  # DH tokens and psk all call MixKey
                keyed = True
        return size + payload_len + (TAGLEN if keyed else 0)

    def _mix_ephemeral(self, public: bytes) -> None:
        self._symmetric.mix_hash(public)
        # In psk handshakes "e" also feeds the key, so a psk can protect it (spec 9.2).
        if self._pattern.psk_count > 0:
            self._symmetric.mix_key(public)

    def _mix_secret(self, token: str) -> None:
        if token == "psk":
            self._symmetric.mix_key_and_hash(self._psks[self._psk_index])
            self._psk_index += 1
            return
        assert token in _DH_TOKENS
        # The first letter names the initiator's key, the second the responder's.
        initiator_key, responder_key = token[0], token[1]
        mine, theirs = (
            (initiator_key, responder_key) if self._initiator else (responder_key, initiator_key)
        )
        local = self._e if mine == "e" else self._s
        remote = self._re if theirs == "e" else self._rs
        if local is None or remote is None:
            # Only reachable with a malformed pattern; the table never does this.
            raise UsageError(f"token {token!r} before the keys it needs are known")
        self._symmetric.mix_key(dh(local, remote))
