"""Application messages: what controllers and machines say inside encrypted channels.

Encoded with :data:`APP` (a strict, versioned :class:`~starmux.codec.MessageCodec`);
decoding errors are :class:`~starmux.errors.MessageError`. The relay never sees
these: they travel as Noise ciphertext.
"""

from __future__ import annotations

from dataclasses import dataclass

from .codec import Message, MessageCodec
from .errors import MessageError

APP = MessageCodec(MessageError, max_size=60 * 1024)


# --- pairing (inside Noise_XXpsk3) -------------------------------------------------


@APP.register
@dataclass(frozen=True)
class PairingIdentity(Message):
    """Handshake payload: who I am (and, from the controller, which account)."""

    KIND = "pairing-identity"
    card: bytes
    account: bytes


@APP.register
@dataclass(frozen=True)
class PairingAccepted(Message):
    """Machine → controller: your card checks out and you knew the secret."""

    KIND = "pairing-accepted"


@APP.register
@dataclass(frozen=True)
class PairingGranted(Message):
    """Controller → machine: the signed grant the relay accepted."""

    KIND = "pairing-granted"
    account: bytes
    issued_at: float
    signature: bytes


@APP.register
@dataclass(frozen=True)
class PairingStored(Message):
    """Machine → controller: grant verified and stored; pairing complete."""

    KIND = "pairing-stored"
