"""Node identities: an Ed25519 signing key, an X25519 static key, and a signed card.

Invariants:
- The signing key *is* the identity; the fingerprint is a hash of its public half.
- The X25519 key is trusted only through an :class:`IdentityCard` signed by the
  signing key, so nobody can pair a stranger's DH key with our name.
- A card's signature covers ``transcript(b"starmux/identity-card/v1", role, sign_pk,
  dh_pk, name)``; :func:`IdentityCard.decode` verifies it, so a card object that
  exists has a valid signature.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import msgpack
import nacl.bindings
import nacl.exceptions
import nacl.signing
import nacl.utils

from .errors import CryptoError, RemoteProtocolError, UsageError
from .fingerprint import fingerprint
from .transcript import transcript

CARD_DOMAIN = b"starmux/identity-card/v1"
CARD_VERSION = 1
MAX_NAME_LENGTH = 64
MAX_CARD_BYTES = 512

Rng = Callable[[int], bytes]


class Role(enum.StrEnum):
    MACHINE = "machine"
    CONTROLLER = "controller"
    RELAY = "relay"


@dataclass(frozen=True)
class NodeKeys:
    """A node's two private keys. ``repr`` never shows them."""

    signing_seed: bytes = field(repr=False)
    dh_private: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.signing_seed) != 32 or len(self.dh_private) != 32:
            raise UsageError("node keys are two 32-byte secrets")

    @classmethod
    def generate(cls, rng: Rng = nacl.utils.random) -> NodeKeys:
        return cls(signing_seed=rng(32), dh_private=rng(32))

    # Derived once per object: the relay signs on every connection it accepts.
    @functools.cached_property
    def signing_key(self) -> nacl.signing.SigningKey:
        return nacl.signing.SigningKey(self.signing_seed)

    @functools.cached_property
    def sign_public(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @functools.cached_property
    def dh_public(self) -> bytes:
        return nacl.bindings.crypto_scalarmult_base(self.dh_private)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.sign_public)

    def sign(self, message: bytes) -> bytes:
        """Detached Ed25519 signature (64 bytes)."""
        return self.signing_key.sign(message).signature

    def card(self, role: Role, name: str) -> IdentityCard:
        return IdentityCard.create(self, role, name)


def verify_signature(sign_public: bytes, message: bytes, signature: bytes) -> None:
    """Raise :class:`CryptoError` unless ``signature`` is valid; never says why."""
    if len(sign_public) != 32 or len(signature) != 64:
        raise CryptoError()
    try:
        nacl.signing.VerifyKey(sign_public).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError) as exc:
        raise CryptoError() from exc


def _check_name(name: str) -> str:
    if not name or len(name) > MAX_NAME_LENGTH or not name.isprintable():
        raise UsageError(
            f"invalid node name {name[:80]!r}",
            hint=f"use 1 to {MAX_NAME_LENGTH} printable characters",
        )
    return name


@dataclass(frozen=True)
class IdentityCard:
    """``{role, sign_pk, dh_pk, name}`` signed by ``sign_pk``."""

    role: Role
    sign_public: bytes
    dh_public: bytes
    name: str
    signature: bytes = field(repr=False)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.sign_public)

    def signed_bytes(self) -> bytes:
        return transcript(
            CARD_DOMAIN,
            self.role.value.encode(),
            self.sign_public,
            self.dh_public,
            self.name.encode("utf-8"),
        )

    @classmethod
    def create(cls, keys: NodeKeys, role: Role, name: str) -> IdentityCard:
        unsigned = cls(role, keys.sign_public, keys.dh_public, _check_name(name), b"\0" * 64)
        signature = keys.sign(unsigned.signed_bytes())
        return cls(role, keys.sign_public, keys.dh_public, name, signature)

    def encode(self) -> bytes:
        return msgpack.packb(
            [
                CARD_VERSION,
                self.role.value,
                self.sign_public,
                self.dh_public,
                self.name,
                self.signature,
            ],
            use_bin_type=True,
        )

    @classmethod
    def decode(cls, data: bytes) -> IdentityCard:
        """Parse and verify a card from the network.

        Raises :class:`RemoteProtocolError` for malformed bytes and
        :class:`CryptoError` for a bad signature.
        """
        if not isinstance(data, bytes) or len(data) > MAX_CARD_BYTES:
            raise RemoteProtocolError("identity card too large or not bytes")
        try:
            fields = msgpack.unpackb(
                data,
                raw=False,
                strict_map_key=True,
                max_array_len=6,
                max_map_len=0,
                max_str_len=256,
                max_bin_len=64,
            )
        except Exception as exc:  # msgpack raises many types for bad input
            raise RemoteProtocolError("identity card is not valid msgpack") from exc
        if (
            not isinstance(fields, list)
            or len(fields) != 6
            or type(fields[0]) is not int
            or fields[0] != CARD_VERSION
        ):
            raise RemoteProtocolError("identity card has the wrong shape or version")
        _, role, sign_pk, dh_pk, name, signature = fields
        if (
            not isinstance(role, str)
            or role not in Role._value2member_map_
            or not isinstance(sign_pk, bytes)
            or len(sign_pk) != 32
            or not isinstance(dh_pk, bytes)
            or len(dh_pk) != 32
            or not isinstance(name, str)
            or not isinstance(signature, bytes)
            or len(signature) != 64
        ):
            raise RemoteProtocolError("identity card has invalid fields")
        try:
            _check_name(name)
        except UsageError as exc:
            raise RemoteProtocolError("identity card has an invalid name") from exc
        card = cls(Role(role), sign_pk, dh_pk, name, signature)
        verify_signature(sign_pk, card.signed_bytes(), signature)
        return card
