"""Length padding inside the encrypted channel: the relay learns a size bucket, not a size.

The relay sees every DATA frame's length. Unpadded, that is the exact length of the
application message (a keystroke's echo, a command's argv, a checkpoint's title).
Each plaintext is sent as::

    length (2 bytes, big-endian) || plaintext || zero bytes

padded to :func:`padded_size`: at least :data:`MIN_PADDED` bytes (every small
message - acks, sync requests, keystrokes, short output - looks the same), then
Padmé buckets (Nikitin et al., "Reducing Metadata Leakage from Encrypted Files and
Communication with PURBs", PETS 2019): a length L is rounded up so that only its
top ``floor(log2(floor(log2 L))) + 1`` bits remain. That is 16 sizes per power of
two, less than 1/16 more bytes past the floor (5.7 % for a full 16 KiB output
chunk, where rounding up to a power of two would cost 100 %). ``bench/padding.py``
measures the cost.

Invariants:

- The padded size depends only on the plaintext's length, and is never more than
  :data:`MAX_PADDED` (the top bucket is clamped to it).
- :func:`unpad` accepts exactly what :func:`pad` produces (length in range, padded
  to that length's bucket, zeros after it) and raises :class:`CryptoError` for
  anything else, so a channel treats bad padding like a failed decryption.
"""

from __future__ import annotations

from .errors import CryptoError, UsageError
from .frames import MAX_BODY_SIZE
from .noise import TAGLEN

#: Every padded plaintext is at least this long.
MIN_PADDED = 256
#: The largest padded plaintext: its ciphertext and the end-to-end kind byte
#: (:mod:`starmux.e2e`) still fit one frame body, which is one Noise message.
MAX_PADDED = MAX_BODY_SIZE - 1 - TAGLEN
_LENGTH_BYTES = 2
#: The largest plaintext :func:`pad` accepts.
MAX_UNPADDED = MAX_PADDED - _LENGTH_BYTES


def padme(length: int) -> int:
    """``length`` rounded up to its Padmé bucket."""
    if length < 2:
        return length
    exponent = length.bit_length() - 1  # floor(log2 length)
    kept_bits = exponent.bit_length()  # floor(log2 exponent) + 1
    mask = (1 << (exponent - kept_bits)) - 1
    return (length + mask) & ~mask


def padded_size(length: int) -> int:
    """The padded size for a plaintext of ``length`` bytes (the length prefix included)."""
    return min(MAX_PADDED, max(MIN_PADDED, padme(length + _LENGTH_BYTES)))


def pad(plaintext: bytes) -> bytes:
    size = len(plaintext)
    if size > MAX_UNPADDED:
        raise UsageError(f"plaintext is {size} bytes; the limit is {MAX_UNPADDED}")
    zeros = padded_size(size) - size - _LENGTH_BYTES
    return size.to_bytes(_LENGTH_BYTES, "big") + plaintext + bytes(zeros)


def unpad(padded: bytes) -> bytes:
    """The plaintext inside ``padded``; :class:`CryptoError` unless ``pad`` made it."""
    if len(padded) < MIN_PADDED:
        raise CryptoError()
    size = int.from_bytes(padded[:_LENGTH_BYTES], "big")
    end = _LENGTH_BYTES + size
    if size > MAX_UNPADDED or len(padded) != padded_size(size):
        raise CryptoError()
    if padded.count(0, end) != len(padded) - end:
        raise CryptoError()
    return padded[_LENGTH_BYTES:end]
