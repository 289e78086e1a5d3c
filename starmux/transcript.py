"""Domain-separated, length-prefixed encoding of everything we sign or hash.

Every signed structure is ``transcript(domain, field, field, ...)``: the domain and
each field are prefixed with their length as 4 bytes big-endian. No separator
characters, so no two different field lists can encode to the same bytes, and a
signature made for one purpose (``starmux/relay-auth/v1``) can never be replayed as
another (``starmux/identity-card/v1``).
"""

from __future__ import annotations

import math
import struct

from .errors import CryptoError, UsageError

_MAX_FIELD = 2**32 - 1


def transcript(domain: bytes, *fields: bytes) -> bytes:
    """Encode ``domain`` and ``fields`` unambiguously for signing or hashing."""
    if not domain.startswith(b"starmux/"):
        raise UsageError("transcript domains start with b'starmux/'")
    parts = [len(domain).to_bytes(4, "big"), domain]
    for field in fields:
        if len(field) > _MAX_FIELD:
            raise UsageError("transcript field too large")
        parts.append(len(field).to_bytes(4, "big"))
        parts.append(field)
    return b"".join(parts)


def signed_time(seconds: float) -> bytes:
    """A timestamp as signed bytes: integer milliseconds, 8 bytes big-endian.

    Floats have no canonical byte form, so signatures cover this instead. A time no
    signature can cover (NaN, infinite, out of range: only a hostile peer sends
    those) raises :class:`CryptoError`, like any other signature that cannot verify.
    """
    millis = seconds * 1000
    if not math.isfinite(millis) or not -(2**63) <= millis < 2**63:
        raise CryptoError()
    return struct.pack(">q", round(millis))
