"""Noise Protocol Framework (rev 34) for ``25519_ChaChaPoly_BLAKE2b``, sans-I/O.

``HandshakeState`` runs any pattern from ``patterns.PATTERNS`` (with ``pskN``
modifiers); ``split()`` hands the transport ciphers to ``starmux.channel``.
Every crypto failure is an opaque :class:`~starmux.errors.CryptoError`.
"""

from starmux.noise.handshake import MAX_MESSAGE_LEN, PSKLEN, HandshakeState
from starmux.noise.patterns import PATTERNS, HandshakePattern, parse_protocol_name
from starmux.noise.primitives import (
    DHLEN,
    HASHLEN,
    TAGLEN,
    KeyPair,
    Rng,
    aead_decrypt,
    aead_encrypt,
    dh,
    hash_,
    hkdf,
)
from starmux.noise.symmetric import CipherState, SymmetricState

__all__ = [
    "DHLEN",
    "HASHLEN",
    "MAX_MESSAGE_LEN",
    "PATTERNS",
    "PSKLEN",
    "TAGLEN",
    "CipherState",
    "HandshakePattern",
    "HandshakeState",
    "KeyPair",
    "Rng",
    "SymmetricState",
    "aead_decrypt",
    "aead_encrypt",
    "dh",
    "hash_",
    "hkdf",
    "parse_protocol_name",
]
