"""The end-to-end envelope: the first byte of every DATA body between two nodes.

The relay routes DATA bodies without reading them; the two ends use this one byte
to tell apart the stages of their conversation. Everything after it is either a
Noise handshake message, Noise ciphertext, or (for the *abort/cancel/reset* kinds)
nothing at all: those carry no content and can only make the receiver start over,
which an attacker on the relay can cause anyway by dropping frames. ``DEVICE_LOG``
carries signed, public entries a machine verifies against its own copy: what a
forger could send is refused there, and the relay holds the same log anyway.
"""

from __future__ import annotations

import enum

from .errors import RemoteProtocolError


class Kind(enum.IntEnum):
    PAIR_HANDSHAKE = 0x01  # Noise_XXpsk3 handshake messages
    PAIR_TRANSPORT = 0x02  # encrypted pairing messages after the handshake
    PAIR_ABORT = 0x03  # "pairing failed on my side" (I counted it); no content
    PAIR_CANCEL = 0x04  # "my person cancelled" (not a failed attempt); no content
    SESSION_HANDSHAKE = 0x10  # Noise_KK handshake messages (every reconnect)
    SESSION_TRANSPORT = 0x11  # encrypted application messages
    SESSION_RESET = 0x12  # "my channel failed; handshake again"; no content
    DEVICE_LOG = 0x13  # the account's signed device log, in clear (see device_messages)


_KINDS = frozenset(int(kind) for kind in Kind)


def wrap(kind: Kind, payload: bytes = b"") -> bytes:
    return bytes((kind,)) + payload


def unwrap(body: bytes) -> tuple[Kind, bytes]:
    """Split a DATA body; raises :class:`RemoteProtocolError` for an unknown kind."""
    if not body or body[0] not in _KINDS:
        raise RemoteProtocolError("unknown end-to-end message kind")
    return Kind(body[0]), body[1:]
