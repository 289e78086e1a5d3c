"""The transport phase of a Noise session: one ``SecureChannel`` per completed handshake.

Sans-I/O: ``encrypt`` turns a plaintext into the bytes to send, ``decrypt`` turns
received bytes back into plaintext; moving the bytes is the caller's business.

States (anything else raises)::

    OPEN --close()--> CLOSED           later encrypt/decrypt: UsageError
    OPEN --any crypto failure--> FAILED  later encrypt/decrypt: CryptoError

Invariants:

- Strict order, no replay: each direction uses Noise's counter nonce, so a
  message decrypts only at its exact position. A tampered, replayed, reordered,
  truncated or foreign message raises :class:`CryptoError`.
- Fail closed, for good and both ways: after any :class:`CryptoError` the channel
  is FAILED and forgets its keys; the peers must run a fresh handshake.
- Deterministic rekey: after every ``rekey_every`` messages in a direction, both
  the sender's and the receiver's cipher for that direction run Noise ``REKEY``.
  Both sides count the same messages, so they stay in sync without signalling;
  the nonce keeps counting across a rekey.
- Sizes: a plaintext is at most 65535 - 16 bytes (one Noise message); larger is
  a :class:`UsageError` and changes nothing.
- With ``pad=True`` every plaintext is padded to a size bucket before encryption
  (:mod:`starmux.padding`; 2 bytes less fit) and the padding is checked after
  decryption: bad padding fails the channel exactly like a failed decryption.
- One-way patterns (N, K, X): only the initiator sends (spec 7.4).
- No key-less cipher is ever used here: Noise's pass-through would mean plaintext.
"""

from __future__ import annotations

import enum

from starmux import padding
from starmux.errors import CryptoError, UsageError
from starmux.noise import MAX_MESSAGE_LEN, TAGLEN, CipherState, HandshakeState

__all__ = ["MAX_PLAINTEXT_LEN", "SecureChannel"]

#: The largest plaintext that fits one Noise transport message.
MAX_PLAINTEXT_LEN = MAX_MESSAGE_LEN - TAGLEN

# Transport messages carry no associated data; the handshake hash already binds them.
_NO_AD = b""


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"
    FAILED = "failed"


class SecureChannel:
    """Encrypts and decrypts Noise transport messages for one side of a session."""

    def __init__(
        self,
        send: CipherState | None,
        receive: CipherState | None,
        *,
        handshake_hash: bytes,
        remote_static: bytes | None,
        rekey_every: int = 2**16,
        pad: bool = False,
    ) -> None:
        """Prefer :meth:`from_handshake`; ``None`` disables a direction (one-way patterns)."""
        if isinstance(rekey_every, bool) or not isinstance(rekey_every, int) or rekey_every < 1:
            raise UsageError("rekey_every must be a positive integer")
        for cipher in (send, receive):
            if cipher is not None and not cipher.has_key():
                raise UsageError("a transport cipher must have a key")
        self._send = send
        self._receive = receive
        self._rekey_every = rekey_every
        self._pad = pad
        self._max_plaintext = padding.MAX_UNPADDED if pad else MAX_PLAINTEXT_LEN
        self._sent = 0
        self._received = 0
        self._state = _State.OPEN
        self._handshake_hash = handshake_hash
        self._remote_static = remote_static

    @classmethod
    def from_handshake(
        cls, hs: HandshakeState, *, rekey_every: int = 2**16, pad: bool = False
    ) -> SecureChannel:
        """The channel for a completed handshake; calls ``hs.split()`` (once only)."""
        if not hs.is_complete:
            raise UsageError("the handshake is not complete")
        handshake_hash = hs.handshake_hash
        remote_static = hs.remote_static
        send, receive = hs.split()
        usable_send: CipherState | None = send
        usable_receive: CipherState | None = receive
        if hs.pattern.is_one_way:
            # The spec discards the responder-to-initiator cipher of a one-way pattern.
            if hs.initiator:
                usable_receive = None
            else:
                usable_send = None
        return cls(
            usable_send,
            usable_receive,
            handshake_hash=handshake_hash,
            remote_static=remote_static,
            rekey_every=rekey_every,
            pad=pad,
        )

    def __repr__(self) -> str:
        return (
            f"SecureChannel(state={self._state.value}, "
            f"sent={self._sent}, received={self._received})"
        )

    @property
    def handshake_hash(self) -> bytes:
        """The handshake's final hash: a channel binding both peers share."""
        return self._handshake_hash

    @property
    def remote_static(self) -> bytes | None:
        """The peer's authenticated static public key (None if the pattern has none)."""
        return self._remote_static

    @property
    def closed(self) -> bool:
        return self._state is not _State.OPEN

    def close(self) -> None:
        """Forget the keys. Idempotent; a FAILED channel stays FAILED."""
        if self._state is _State.OPEN:
            self._state = _State.CLOSED
        self._forget_keys()

    def encrypt(self, plaintext: bytes) -> bytes:
        if not isinstance(plaintext, bytes):
            raise UsageError("plaintext must be bytes")
        self._require_open()
        if len(plaintext) > self._max_plaintext:
            raise UsageError(
                f"plaintext is {len(plaintext)} bytes; the limit is {self._max_plaintext}"
            )
        if self._send is None:
            raise UsageError("this side of a one-way pattern cannot send")
        if self._pad:
            plaintext = padding.pad(plaintext)
        try:
            ciphertext = self._send.encrypt_with_ad(_NO_AD, plaintext)
            self._sent += 1
            if self._sent % self._rekey_every == 0:
                self._send.rekey()
        except CryptoError:
            self._fail()
            raise
        return ciphertext

    def decrypt(self, ciphertext: bytes) -> bytes:
        if not isinstance(ciphertext, bytes):
            raise UsageError("ciphertext must be bytes")
        self._require_open()
        if self._receive is None:
            raise UsageError("this side of a one-way pattern cannot receive")
        try:
            if len(ciphertext) > MAX_MESSAGE_LEN:
                raise CryptoError()
            plaintext = self._receive.decrypt_with_ad(_NO_AD, ciphertext)
            self._received += 1
            if self._received % self._rekey_every == 0:
                self._receive.rekey()
            if self._pad:
                plaintext = padding.unpad(plaintext)
        except CryptoError:
            self._fail()
            raise
        return plaintext

    def _require_open(self) -> None:
        if self._state is _State.FAILED:
            raise CryptoError()
        if self._state is _State.CLOSED:
            raise UsageError("the channel was closed")

    def _fail(self) -> None:
        self._state = _State.FAILED
        self._forget_keys()

    def _forget_keys(self) -> None:
        # Python cannot wipe memory; dropping the references is the best it offers.
        self._send = None
        self._receive = None
