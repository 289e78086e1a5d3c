"""Noise ``CipherState`` and ``SymmetricState`` (spec rev 34, sections 5.1 and 5.2).

These follow the spec's pseudocode one method at a time, with its names, so the
two can be read side by side. Deliberate points:

- A ``CipherState`` without a key passes data through unchanged, exactly as the
  spec says; the handshake relies on it for the messages before the first DH.
  Transport code (``starmux.channel``) refuses a key-less cipher instead.
- A failed decryption does not advance the nonce (spec 5.1); making the failure
  final is the job of the handshake and channel objects above.
- Nonce 2**64-1 is reserved for :meth:`CipherState.rekey`; reaching it while
  encrypting or decrypting raises :class:`CryptoError` rather than wrapping.
- ``repr`` never shows a key or the chaining key.
"""

from __future__ import annotations

from starmux.errors import CryptoError, UsageError
from starmux.noise.primitives import (
    HASHLEN,
    KEYLEN,
    MAX_NONCE,
    Aead,
    hash_,
    hkdf,
)

__all__ = ["CipherState", "SymmetricState"]


class CipherState:
    """A key ``k`` (possibly empty) and a counter nonce ``n``."""

    __slots__ = ("_k", "_n")

    def __init__(self, key: bytes | None = None) -> None:
        #: the spec's ``k``, held as the cipher built under it (once per key)
        self._k: Aead | None = None
        self._n = 0
        if key is not None:
            self.initialize_key(key)

    def __repr__(self) -> str:
        return f"CipherState(has_key={self.has_key()}, n={self._n})"

    @property
    def nonce(self) -> int:
        return self._n

    def initialize_key(self, key: bytes | None) -> None:
        self._k = None if key is None else Aead(key)  # Aead checks the key's size
        self._n = 0

    def has_key(self) -> bool:
        return self._k is not None

    def set_nonce(self, nonce: int) -> None:
        if not 0 <= nonce <= MAX_NONCE:
            raise UsageError("nonce must fit in 64 bits")
        self._n = nonce

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self._k is None:
            return plaintext
        if self._n >= MAX_NONCE:
            raise CryptoError()
        ciphertext = self._k.encrypt(self._n, ad, plaintext)
        self._n += 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self._k is None:
            return ciphertext
        if self._n >= MAX_NONCE:
            raise CryptoError()
        plaintext = self._k.decrypt(self._n, ad, ciphertext)
        self._n += 1
        return plaintext

    def rekey(self) -> None:
        """REKEY(k): the first 32 bytes of ENCRYPT(k, 2**64-1, zerolen, zeros) (spec 4.2).

        The nonce is left alone, so both peers keep counting from where they were.
        """
        if self._k is None:
            raise UsageError("cannot rekey a cipher that has no key")
        self._k = Aead(self._k.encrypt(MAX_NONCE, b"", bytes(KEYLEN))[:KEYLEN])


class SymmetricState:
    """The chaining key ``ck``, the handshake hash ``h`` and a :class:`CipherState`."""

    __slots__ = ("_cipher", "_ck", "_h")

    def __init__(self, protocol_name: bytes) -> None:
        # InitializeSymmetric: a short name is zero-padded rather than hashed.
        if len(protocol_name) <= HASHLEN:
            self._h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            self._h = hash_(protocol_name)
        self._ck = self._h
        self._cipher = CipherState()

    def __repr__(self) -> str:
        return f"SymmetricState(cipher={self._cipher!r})"

    def has_key(self) -> bool:
        return self._cipher.has_key()

    def mix_key(self, input_key_material: bytes) -> None:
        self._ck, temp_k = hkdf(self._ck, input_key_material, 2)
        # HASHLEN is 64, so the cipher key is the first 32 bytes (spec 5.2).
        self._cipher.initialize_key(temp_k[:KEYLEN])

    def mix_hash(self, data: bytes) -> None:
        self._h = hash_(self._h + data)

    def mix_key_and_hash(self, input_key_material: bytes) -> None:
        self._ck, temp_h, temp_k = hkdf(self._ck, input_key_material, 3)
        self.mix_hash(temp_h)
        self._cipher.initialize_key(temp_k[:KEYLEN])

    def get_handshake_hash(self) -> bytes:
        return self._h

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self._cipher.encrypt_with_ad(self._h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self._cipher.decrypt_with_ad(self._h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        """The two transport ciphers: (initiator-to-responder, responder-to-initiator)."""
        temp_k1, temp_k2 = hkdf(self._ck, b"", 2)
        return CipherState(temp_k1[:KEYLEN]), CipherState(temp_k2[:KEYLEN])
