"""Fingerprints and comparison codes: what people read, compare and scan.

A *fingerprint* names a node by a hash of its Ed25519 signing key, written as
grouped base32 (``K7Q2-M4XD-...``, 8 groups of 4 = 160 bits), so a QR code or a
person can check a key without handling 32 raw bytes. A *comparison code* is a
short number derived from a Noise handshake hash: both ends of a pairing show it,
and a person checks that they match (a man in the middle would need a collision on
a value he does not control).
"""

from __future__ import annotations

import base64
import hmac

import nacl.bindings

from .errors import UsageError

FINGERPRINT_BYTES = 20
FINGERPRINT_DOMAIN = b"starmux/fingerprint/v1"
COMPARISON_DOMAIN = b"starmux/comparison-code/v1"
_GROUP = 4
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def _hash(domain: bytes, data: bytes, size: int) -> bytes:
    # BLAKE2b keyed by the domain keeps fingerprints and comparison codes apart.
    return nacl.bindings.crypto_generichash_blake2b_salt_personal(
        data, digest_size=size, key=domain
    )


def fingerprint_bytes(sign_public_key: bytes) -> bytes:
    if len(sign_public_key) != 32:
        raise UsageError("a signing public key is 32 bytes")
    return _hash(FINGERPRINT_DOMAIN, sign_public_key, FINGERPRINT_BYTES)


def format_fingerprint(raw: bytes) -> str:
    text = base64.b32encode(raw).decode("ascii").rstrip("=")
    return "-".join(text[i : i + _GROUP] for i in range(0, len(text), _GROUP))


def fingerprint(sign_public_key: bytes) -> str:
    """The grouped base32 fingerprint of an Ed25519 public key."""
    return format_fingerprint(fingerprint_bytes(sign_public_key))


def normalize_fingerprint(text: str) -> str:
    """Canonical form of a typed or scanned fingerprint; raises UsageError if malformed.

    Accepts lower case, spaces and missing dashes, because people retype these.
    """
    # ASCII first: upper() maps some non-ASCII letters (ß, ſ) into the alphabet.
    compact = "".join(ch for ch in text.upper() if ch not in "- ") if text.isascii() else ""
    if len(compact) != 32 or any(ch not in _ALPHABET for ch in compact):
        raise UsageError(
            f"not a fingerprint: {text[:60]!r}",
            hint="a fingerprint is 32 base32 characters, e.g. K7Q2-M4XD-... (8 groups of 4)",
        )
    return "-".join(compact[i : i + _GROUP] for i in range(0, 32, _GROUP))


def fingerprint_from_text(text: str) -> bytes:
    """The raw fingerprint bytes of a typed or scanned fingerprint."""
    return base64.b32decode(normalize_fingerprint(text).replace("-", ""))


def fingerprints_match(a: str, b: str) -> bool:
    """Constant-time comparison of two fingerprints in any accepted spelling."""
    return hmac.compare_digest(normalize_fingerprint(a), normalize_fingerprint(b))


def comparison_code(handshake_hash: bytes) -> str:
    """Six digits both sides of a pairing display, e.g. ``'042-917'``."""
    digest = _hash(COMPARISON_DOMAIN, handshake_hash, 8)
    number = int.from_bytes(digest, "big") % 1_000_000
    text = f"{number:06d}"
    return f"{text[:3]}-{text[3:]}"
