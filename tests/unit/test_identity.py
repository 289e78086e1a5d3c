"""Node keys and identity cards: round trips, tamper resistance, validation, no leaks."""

from __future__ import annotations

import msgpack
import nacl.public
import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st

from starmux.errors import CryptoError, RemoteProtocolError, UsageError
from starmux.fingerprint import fingerprint
from starmux.identity import (
    CARD_DOMAIN,
    MAX_CARD_BYTES,
    MAX_NAME_LENGTH,
    IdentityCard,
    NodeKeys,
    Role,
    verify_signature,
)
from starmux.transcript import transcript

from .deterministic import counter_rng

secrets32 = st.binary(min_size=32, max_size=32)
node_keys = st.builds(NodeKeys, signing_seed=secrets32, dh_private=secrets32)
names = st.text(
    st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")),
    min_size=1,
    max_size=MAX_NAME_LENGTH,
).filter(str.isprintable)

ALICE = NodeKeys.generate(counter_rng(b"alice"))
MALLORY = NodeKeys.generate(counter_rng(b"mallory"))


def pack(*fields: object) -> bytes:
    return msgpack.packb(list(fields), use_bin_type=True)


# --- keys -----------------------------------------------------------------------


def test_keys_derive_as_pynacl_does() -> None:
    seed, dh = b"\x11" * 32, b"\x22" * 32
    keys = NodeKeys(seed, dh)
    assert keys.sign_public == bytes(nacl.signing.SigningKey(seed).verify_key)
    assert keys.dh_public == bytes(nacl.public.PrivateKey(dh).public_key)
    assert keys.fingerprint == fingerprint(keys.sign_public)


def test_generate_uses_the_given_rng() -> None:
    assert NodeKeys.generate(counter_rng(b"x")) == NodeKeys.generate(counter_rng(b"x"))
    assert NodeKeys.generate(counter_rng(b"x")) != NodeKeys.generate(counter_rng(b"y"))
    fresh = NodeKeys.generate()
    assert fresh.signing_seed != fresh.dh_private


@pytest.mark.parametrize(("seed", "dh"), [(31, 32), (32, 31), (33, 32), (32, 0), (0, 0)])
def test_keys_are_two_32_byte_secrets(seed: int, dh: int) -> None:
    with pytest.raises(UsageError):
        NodeKeys(b"\x01" * seed, b"\x02" * dh)


@given(keys=node_keys)
def test_keys_repr_shows_no_secret(keys: NodeKeys) -> None:
    for text in (repr(keys), str(keys), repr(keys.card(Role.MACHINE, "m"))):
        for secret in (keys.signing_seed, keys.dh_private):
            assert secret.hex() not in text
            assert repr(secret) not in text
            assert str(list(secret)) not in text


@given(keys=node_keys, message=st.binary(max_size=256))
def test_sign_and_verify(keys: NodeKeys, message: bytes) -> None:
    signature = keys.sign(message)
    assert len(signature) == 64
    verify_signature(keys.sign_public, message, signature)
    nacl.signing.VerifyKey(keys.sign_public).verify(message, signature)  # plain Ed25519
    with pytest.raises(CryptoError):
        verify_signature(keys.sign_public, message + b"\x00", signature)
    with pytest.raises(CryptoError):
        verify_signature(MALLORY.sign_public, message, signature)


@pytest.mark.parametrize("position", [0, 31, 32, 63])
def test_verify_refuses_a_flipped_signature_bit(position: int) -> None:
    signature = bytearray(ALICE.sign(b"hello"))
    signature[position] ^= 0x01
    with pytest.raises(CryptoError):
        verify_signature(ALICE.sign_public, b"hello", bytes(signature))


def test_verify_refuses_the_wrong_key() -> None:
    with pytest.raises(CryptoError):
        verify_signature(MALLORY.sign_public, b"hello", ALICE.sign(b"hello"))


@pytest.mark.parametrize(
    ("key", "signature"),
    [
        (ALICE.sign_public[:31], ALICE.sign(b"m")),
        (ALICE.sign_public + b"\x00", ALICE.sign(b"m")),
        (ALICE.sign_public, ALICE.sign(b"m")[:63]),
        (ALICE.sign_public, ALICE.sign(b"m") + b"\x00"),
        (b"", b""),
    ],
)
def test_verify_refuses_wrong_sizes_with_crypto_error(key: bytes, signature: bytes) -> None:
    with pytest.raises(CryptoError) as info:
        verify_signature(key, b"m", signature)
    assert str(info.value) == "cryptographic check failed"  # never says why


# --- cards ----------------------------------------------------------------------


@given(keys=node_keys, role=st.sampled_from(Role), name=names)
def test_card_round_trip(keys: NodeKeys, role: Role, name: str) -> None:
    card = keys.card(role, name)
    assert (card.role, card.sign_public, card.dh_public, card.name) == (
        role,
        keys.sign_public,
        keys.dh_public,
        name,
    )
    encoded = card.encode()
    assert len(encoded) <= MAX_CARD_BYTES
    decoded = IdentityCard.decode(encoded)
    assert decoded == card
    assert decoded.encode() == encoded
    assert decoded.fingerprint == keys.fingerprint


def test_card_signature_covers_the_documented_transcript() -> None:
    card = ALICE.card(Role.CONTROLLER, "laptop")
    signed = transcript(CARD_DOMAIN, b"controller", ALICE.sign_public, ALICE.dh_public, b"laptop")
    assert card.signed_bytes() == signed
    verify_signature(ALICE.sign_public, signed, card.signature)


def test_card_wire_layout() -> None:
    card = ALICE.card(Role.MACHINE, "box")
    assert card.encode() == pack(
        1, "machine", ALICE.sign_public, ALICE.dh_public, "box", card.signature
    )


def test_largest_name_fits() -> None:
    name = "\U0001f600" * MAX_NAME_LENGTH  # 4 UTF-8 bytes each
    card = ALICE.card(Role.CONTROLLER, name)
    assert IdentityCard.decode(card.encode()) == card


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * (MAX_NAME_LENGTH + 1),
        "line\nbreak",
        "nul\x00",
        "esc\x1b[31m",
        "zero\u200bwidth",
        "\u2028",
        "bidi\u202eoverride",
    ],
)
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(UsageError, match="invalid node name") as info:
        IdentityCard.create(ALICE, Role.MACHINE, name)
    assert info.value.hint is not None


def test_decode_refuses_a_validly_signed_card_with_an_invalid_name() -> None:
    # The dataclass constructor does not check; sign a bad name by hand.
    unsigned = IdentityCard(Role.MACHINE, ALICE.sign_public, ALICE.dh_public, "a\nb", b"")
    signature = ALICE.sign(unsigned.signed_bytes())
    data = pack(1, "machine", ALICE.sign_public, ALICE.dh_public, "a\nb", signature)
    with pytest.raises(RemoteProtocolError, match="invalid name"):
        IdentityCard.decode(data)


def _swap(index: int, value: object) -> bytes:
    card = ALICE.card(Role.MACHINE, "box")
    fields: list[object] = [
        1,
        card.role.value,
        card.sign_public,
        card.dh_public,
        card.name,
        card.signature,
    ]
    fields[index] = value
    return pack(*fields)


@pytest.mark.parametrize(
    ("index", "value"),
    [
        pytest.param(3, MALLORY.dh_public, id="dh-key"),
        pytest.param(2, MALLORY.sign_public, id="sign-key"),
        pytest.param(1, "controller", id="role"),
        pytest.param(4, "boy", id="name"),
        pytest.param(5, MALLORY.card(Role.MACHINE, "box").signature, id="signature"),
    ],
)
def test_a_swapped_field_with_the_old_signature_fails_verification(
    index: int, value: object
) -> None:
    with pytest.raises(CryptoError):
        IdentityCard.decode(_swap(index, value))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_swap(0, 2), id="version-2"),
        pytest.param(_swap(0, 0), id="version-0"),
        pytest.param(_swap(1, "admin"), id="unknown-role"),
        pytest.param(_swap(1, b"machine"), id="role-as-bytes"),
        pytest.param(_swap(2, b"\x01" * 31), id="short-sign-key"),
        pytest.param(_swap(3, "k" * 32), id="dh-key-as-str"),
        pytest.param(_swap(4, b"box"), id="name-as-bytes"),
        pytest.param(_swap(5, b"\x00" * 63), id="short-signature"),
        pytest.param(pack(1, "machine"), id="too-few-fields"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\x80", id="a-map"),
        pytest.param(b"\x01" * (MAX_CARD_BYTES + 1), id="too-large"),
        pytest.param(ALICE.card(Role.MACHINE, "box").encode() + b"\x00", id="trailing-byte"),
    ],
)
def test_malformed_cards_raise_remote_protocol_error(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        IdentityCard.decode(data)


def test_decode_wants_bytes() -> None:
    with pytest.raises(RemoteProtocolError):
        IdentityCard.decode(bytearray(ALICE.card(Role.MACHINE, "box").encode()))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "version", [pytest.param(True, id="true"), pytest.param(1.0, id="float-1.0")]
)
def test_decode_refuses_a_version_that_only_compares_equal_to_1(version: object) -> None:
    # msgpack True (0xc3) or 1.0 is not the integer version 1; accepting it makes card
    # bytes malleable (two encodings of one card) without touching the signature.
    with pytest.raises(RemoteProtocolError):
        IdentityCard.decode(_swap(0, version))


def test_every_single_byte_change_is_refused() -> None:
    """Exhaustive flip-a-byte: every position, every other byte value."""
    encoded = ALICE.card(Role.MACHINE, "box").encode()
    accepted: list[tuple[int, int]] = []
    for position in range(len(encoded)):
        for value in range(256):
            if value == encoded[position]:
                continue
            mutated = encoded[:position] + bytes([value]) + encoded[position + 1 :]
            try:
                IdentityCard.decode(mutated)
            except (RemoteProtocolError, CryptoError):
                continue
            accepted.append((position, value))
    assert accepted == [], f"accepted mutations (position, new byte): {accepted}"


def test_every_truncation_and_extension_is_refused() -> None:
    encoded = ALICE.card(Role.CONTROLLER, "laptop").encode()
    for end in range(len(encoded)):
        with pytest.raises(RemoteProtocolError):
            IdentityCard.decode(encoded[:end])
    for extra in (b"\x00", b"\xc0", encoded):
        with pytest.raises(RemoteProtocolError):
            IdentityCard.decode(encoded + extra)
