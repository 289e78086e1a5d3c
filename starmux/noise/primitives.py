"""The Noise crypto functions for ``25519_ChaChaPoly_BLAKE2b`` (spec rev 34, section 4).

Nothing here implements a cipher, a curve or a hash. X25519 and BLAKE2b come from
libsodium through PyNaCl. ChaCha20-Poly1305 comes from OpenSSL through
``cryptography``, as a :class:`Aead` object bound to one key: PyNaCl's wrapper cost
some 10 µs per call before the cipher ran (more than sealing 1 KiB), and every
transport message pays it on both sides (issue 20). HMAC is the stdlib construction
over ``hashlib.blake2b`` (block size 128, digest 64), which is what Noise's
HMAC-HASH means for BLAKE2b.

Invariants:

- Every crypto failure (bad tag, low-order point, wrong-sized peer input) raises
  :class:`~starmux.errors.CryptoError` with no reason and no chained cause, so
  nothing upstream can turn the failure into an oracle.
- Every size is checked before a byte reaches a library: PyNaCl's
  ``crypto_scalarmult`` does not check the lengths of its arguments.
- No randomness is drawn here except through an explicit ``rng`` parameter.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, overload

import nacl.bindings
import nacl.encoding
import nacl.exceptions
import nacl.hash
import nacl.utils
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from starmux.errors import CryptoError, UsageError

__all__ = [
    "DHLEN",
    "HASHLEN",
    "KEYLEN",
    "MAX_NONCE",
    "TAGLEN",
    "Aead",
    "KeyPair",
    "Rng",
    "aead_decrypt",
    "aead_encrypt",
    "dh",
    "hash_",
    "hkdf",
]

#: Size of an X25519 public key, private key and shared secret.
DHLEN = 32
#: Size of a BLAKE2b-512 digest.
HASHLEN = 64
#: Size of a ChaCha20-Poly1305 key.
KEYLEN = 32
#: Size of a Poly1305 tag.
TAGLEN = 16
#: The nonce Noise reserves for REKEY; ENCRYPT never uses it for a message.
MAX_NONCE = 2**64 - 1

#: A source of random bytes: ``rng(n)`` returns ``n`` bytes.
Rng = Callable[[int], bytes]

_ZERO_DH = bytes(DHLEN)


@dataclass(frozen=True, eq=False)
class KeyPair:
    """An X25519 key pair. Build it with :meth:`from_private` or :meth:`generate`.

    The public half is checked against the private half at construction, so a
    mismatched pair can never reach a handshake. ``repr`` hides the private key,
    and equality compares in constant time.
    """

    private: bytes = field(repr=False)
    public: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.private, bytes) or len(self.private) != DHLEN:
            raise UsageError(f"X25519 private key must be {DHLEN} bytes")
        if not isinstance(self.public, bytes) or len(self.public) != DHLEN:
            raise UsageError(f"X25519 public key must be {DHLEN} bytes")
        expected = nacl.bindings.crypto_scalarmult_base(self.private)
        if not hmac.compare_digest(expected, self.public):
            raise UsageError("X25519 public key does not match the private key")

    @classmethod
    def from_private(cls, private: bytes) -> KeyPair:
        if not isinstance(private, bytes) or len(private) != DHLEN:
            raise UsageError(f"X25519 private key must be {DHLEN} bytes")
        return cls(private, nacl.bindings.crypto_scalarmult_base(private))

    @classmethod
    def generate(cls, rng: Rng = nacl.utils.random) -> KeyPair:
        return cls.from_private(rng(DHLEN))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeyPair):
            return NotImplemented
        return hmac.compare_digest(self.private, other.private)

    def __hash__(self) -> int:
        return hash(self.public)


def dh(key_pair: KeyPair, public_key: bytes) -> bytes:
    """X25519(key_pair.private, public_key); rejects low-order points.

    A low-order peer point gives an all-zero secret that an attacker can predict,
    so it must never be mixed into the chaining key. libsodium already refuses it
    (PyNaCl then raises ``RuntimeError``); the explicit check keeps the rule here
    in case that behaviour ever changes.
    """
    if not isinstance(public_key, bytes) or len(public_key) != DHLEN:
        raise CryptoError()
    try:
        shared = nacl.bindings.crypto_scalarmult(key_pair.private, public_key)
    except nacl.exceptions.CryptoError:
        raise CryptoError() from None
    if hmac.compare_digest(shared, _ZERO_DH):
        raise CryptoError()
    return shared


def _nonce(n: int) -> bytes:
    # Noise's ChaChaPoly nonce: 32 bits of zeros, then the counter as 64-bit LE.
    return b"\x00\x00\x00\x00" + n.to_bytes(8, "little")


class Aead:
    """ChaCha20-Poly1305 (IETF) under one key, with Noise's nonces: built once per
    key (a :class:`~starmux.noise.symmetric.CipherState` keeps one until it rekeys),
    so a message pays for the cipher, not for setting up a key."""

    __slots__ = ("_cipher", "_key")

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != KEYLEN:
            raise UsageError(f"cipher key must be {KEYLEN} bytes")
        self._key = key  # only to copy the object: OpenSSL's context cannot be
        self._cipher = ChaCha20Poly1305(key)

    def __repr__(self) -> str:
        return "Aead(<key hidden>)"

    def __deepcopy__(self, memo: dict[int, object]) -> Aead:
        return Aead(self._key)

    def encrypt(self, n: int, ad: bytes, plaintext: bytes) -> bytes:
        """ENCRYPT(k, n, ad, plaintext) -> ciphertext || tag."""
        return self._cipher.encrypt(_nonce(n), plaintext, ad)

    def decrypt(self, n: int, ad: bytes, ciphertext: bytes) -> bytes:
        """DECRYPT; any failure is an opaque :class:`CryptoError`."""
        if not isinstance(ciphertext, bytes) or len(ciphertext) < TAGLEN:
            raise CryptoError()
        try:
            return self._cipher.decrypt(_nonce(n), ciphertext, ad)
        except (InvalidTag, ValueError, OverflowError):
            raise CryptoError() from None


def aead_encrypt(key: bytes, n: int, ad: bytes, plaintext: bytes) -> bytes:
    """ChaCha20-Poly1305 (IETF) ENCRYPT(k, n, ad, plaintext) -> ciphertext || tag."""
    return Aead(key).encrypt(n, ad, plaintext)


def aead_decrypt(key: bytes, n: int, ad: bytes, ciphertext: bytes) -> bytes:
    """ChaCha20-Poly1305 (IETF) DECRYPT; any failure is an opaque :class:`CryptoError`."""
    return Aead(key).decrypt(n, ad, ciphertext)


def hash_(data: bytes) -> bytes:
    """HASH(data): BLAKE2b with a 64-byte digest, unkeyed."""
    return nacl.hash.blake2b(data, digest_size=HASHLEN, encoder=nacl.encoding.RawEncoder)


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2b).digest()


@overload
def hkdf(
    chaining_key: bytes, input_key_material: bytes, num_outputs: Literal[2]
) -> tuple[bytes, bytes]: ...
@overload
def hkdf(
    chaining_key: bytes, input_key_material: bytes, num_outputs: Literal[3]
) -> tuple[bytes, bytes, bytes]: ...
def hkdf(
    chaining_key: bytes, input_key_material: bytes, num_outputs: Literal[2, 3]
) -> tuple[bytes, bytes] | tuple[bytes, bytes, bytes]:
    """HKDF as Noise defines it (section 4.3): 2 or 3 outputs of HASHLEN bytes each."""
    if len(input_key_material) not in (0, 32, DHLEN):
        raise UsageError("HKDF input key material must be 0 or 32 bytes")
    temp_key = _hmac(chaining_key, input_key_material)
    output1 = _hmac(temp_key, b"\x01")
    output2 = _hmac(temp_key, output1 + b"\x02")
    if num_outputs == 2:
        return output1, output2
    output3 = _hmac(temp_key, output2 + b"\x03")
    return output1, output2, output3
