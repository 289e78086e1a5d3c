"""Pair tests of the Noise handshake engine: KK and XXpsk3 as starmux runs them."""

from __future__ import annotations

import pytest

from starmux.errors import CryptoError, UsageError
from starmux.noise import (
    CipherState,
    HandshakeState,
    KeyPair,
    SymmetricState,
    dh,
    parse_protocol_name,
)
from starmux.noise.patterns import PATTERNS

KK = "Noise_KK_25519_ChaChaPoly_BLAKE2b"
XXPSK3 = "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b"
PROLOGUE = b"starmux/test/v1"


def kk_pair(
    *, initiator_rs: bytes | None = None, responder_rs: bytes | None = None
) -> tuple[HandshakeState, HandshakeState, KeyPair, KeyPair]:
    i_s, r_s = KeyPair.generate(), KeyPair.generate()
    initiator = HandshakeState(
        KK, initiator=True, prologue=PROLOGUE, s=i_s, rs=initiator_rs or r_s.public
    )
    responder = HandshakeState(
        KK, initiator=False, prologue=PROLOGUE, s=r_s, rs=responder_rs or i_s.public
    )
    return initiator, responder, i_s, r_s


def xx_pair(
    initiator_psk: bytes, responder_psk: bytes
) -> tuple[HandshakeState, HandshakeState, KeyPair, KeyPair]:
    i_s, r_s = KeyPair.generate(), KeyPair.generate()
    initiator = HandshakeState(
        XXPSK3, initiator=True, prologue=PROLOGUE, s=i_s, psks=[initiator_psk]
    )
    responder = HandshakeState(
        XXPSK3, initiator=False, prologue=PROLOGUE, s=r_s, psks=[responder_psk]
    )
    return initiator, responder, i_s, r_s


def run(initiator: HandshakeState, responder: HandshakeState) -> list[bytes]:
    """Run a handshake to completion with empty payloads; returns the wire messages."""
    wire = []
    sender, receiver = initiator, responder
    while not (initiator.is_complete and responder.is_complete):
        message = sender.write_message()
        assert receiver.read_message(message) == b""
        wire.append(message)
        sender, receiver = receiver, sender
    return wire


def assert_transport_works(initiator: HandshakeState, responder: HandshakeState) -> None:
    i_send, i_recv = initiator.split()
    r_send, r_recv = responder.split()
    assert r_recv.decrypt_with_ad(b"", i_send.encrypt_with_ad(b"", b"ping")) == b"ping"
    assert i_recv.decrypt_with_ad(b"", r_send.encrypt_with_ad(b"", b"pong")) == b"pong"


def assert_failed_for_good(hs: HandshakeState) -> None:
    for call in (
        lambda: hs.write_message(b""),
        lambda: hs.read_message(b"\x00" * 96),
        hs.split,
        lambda: hs.handshake_hash,
        lambda: hs.remote_static,
    ):
        with pytest.raises(CryptoError):
            call()
    assert not hs.is_complete
    assert not hs.is_my_turn


# -- happy paths -------------------------------------------------------------------


def test_kk_end_to_end() -> None:
    initiator, responder, i_s, r_s = kk_pair()
    first = initiator.write_message(b"")
    assert responder.read_message(first) == b""
    second = responder.write_message(b"hello initiator")
    assert initiator.read_message(second) == b"hello initiator"
    assert initiator.is_complete
    assert responder.is_complete
    assert initiator.handshake_hash == responder.handshake_hash
    assert len(initiator.handshake_hash) == 64
    assert initiator.remote_static == r_s.public
    assert responder.remote_static == i_s.public
    assert_transport_works(initiator, responder)


def test_xxpsk3_end_to_end_learns_statics() -> None:
    psk = bytes(range(32))
    initiator, responder, i_s, r_s = xx_pair(psk, psk)
    assert initiator.remote_static is None
    assert len(run(initiator, responder)) == 3
    assert initiator.remote_static == r_s.public
    assert responder.remote_static == i_s.public
    assert initiator.handshake_hash == responder.handshake_hash
    assert_transport_works(initiator, responder)


def test_fresh_ephemerals_every_run() -> None:
    first_i, first_r, _, _ = kk_pair()
    second_i, second_r, _, _ = kk_pair()
    assert run(first_i, first_r)[0][:32] != run(second_i, second_r)[0][:32]
    assert first_i.handshake_hash != second_i.handshake_hash


def test_prologue_mismatch_fails() -> None:
    i_s, r_s = KeyPair.generate(), KeyPair.generate()
    initiator = HandshakeState(KK, initiator=True, prologue=b"a", s=i_s, rs=r_s.public)
    responder = HandshakeState(KK, initiator=False, prologue=b"b", s=r_s, rs=i_s.public)
    with pytest.raises(CryptoError):
        responder.read_message(initiator.write_message())
    assert_failed_for_good(responder)


# -- wrong secrets fail closed -----------------------------------------------------


@pytest.mark.parametrize("wrong_side", ["initiator", "responder"])
def test_xxpsk3_wrong_psk_fails_closed_on_message_3(wrong_side: str) -> None:
    good, bad = b"\x01" * 32, b"\x02" * 32
    initiator, responder, _, _ = (
        xx_pair(bad, good) if wrong_side == "initiator" else xx_pair(good, bad)
    )
    # psk3 enters only with message 3, so messages 1 and 2 still agree; the
    # responder is the one that finds out, and it learns nothing else.
    responder.read_message(initiator.write_message())
    initiator.read_message(responder.write_message())
    third = initiator.write_message(b"pairing card")
    with pytest.raises(CryptoError):
        responder.read_message(third)
    assert_failed_for_good(responder)


def test_wrong_psk_fails_closed_on_initiator_read() -> None:
    # The other path: with psk2 the initiator is the side that reads the psk message.
    name = "Noise_NNpsk2_25519_ChaChaPoly_BLAKE2b"
    initiator = HandshakeState(name, initiator=True, psks=[b"\x01" * 32])
    responder = HandshakeState(name, initiator=False, psks=[b"\x02" * 32])
    responder.read_message(initiator.write_message())
    with pytest.raises(CryptoError):
        initiator.read_message(responder.write_message())
    assert_failed_for_good(initiator)


def test_kk_wrong_remote_static_fails() -> None:
    impostor = KeyPair.generate()
    initiator, responder, _, _ = kk_pair(initiator_rs=impostor.public)
    with pytest.raises(CryptoError):
        responder.read_message(initiator.write_message())
    assert_failed_for_good(responder)


def test_kk_responder_expecting_someone_else_fails() -> None:
    initiator, responder, _, _ = kk_pair(responder_rs=KeyPair.generate().public)
    with pytest.raises(CryptoError):
        responder.read_message(initiator.write_message())
    assert_failed_for_good(responder)


@pytest.mark.parametrize("protocol", [KK, XXPSK3])
def test_flip_any_byte_of_any_message_fails(protocol: str) -> None:
    psk = b"\x07" * 32

    def fresh() -> tuple[HandshakeState, HandshakeState]:
        return kk_pair()[:2] if protocol == KK else xx_pair(psk, psk)[:2]

    lengths = [len(message) for message in run(*fresh())]
    for index, length in enumerate(lengths):
        for position in range(length):
            sender, receiver = fresh()
            for _ in range(index):
                receiver.read_message(sender.write_message())
                sender, receiver = receiver, sender
            message = bytearray(sender.write_message())
            message[position] ^= 0x01
            with pytest.raises(CryptoError):
                receiver.read_message(bytes(message))
            assert_failed_for_good(receiver)


@pytest.mark.parametrize("cut", [0, 1, 31, 32, 47])
def test_short_message_fails(cut: int) -> None:
    initiator, responder, _, _ = kk_pair()
    message = initiator.write_message()
    assert len(message) == 48  # e (32) + tag of the empty payload (16)
    with pytest.raises(CryptoError):
        responder.read_message(message[:cut])
    assert_failed_for_good(responder)


# -- API misuse --------------------------------------------------------------------


def test_out_of_turn_is_usage_error_and_harmless() -> None:
    initiator, responder, _, _ = kk_pair()
    with pytest.raises(UsageError):
        responder.write_message()
    with pytest.raises(UsageError):
        initiator.read_message(b"\x00" * 48)
    first = initiator.write_message()
    with pytest.raises(UsageError):
        initiator.write_message()
    assert responder.read_message(first) == b""
    initiator.read_message(responder.write_message())
    with pytest.raises(UsageError):
        initiator.write_message()
    with pytest.raises(UsageError):
        responder.read_message(b"")
    assert_transport_works(initiator, responder)


def test_split_and_hash_need_completion_and_split_only_once() -> None:
    initiator, responder, _, _ = kk_pair()
    with pytest.raises(UsageError):
        initiator.split()
    with pytest.raises(UsageError):
        _ = initiator.handshake_hash
    run(initiator, responder)
    initiator.split()
    with pytest.raises(UsageError):
        initiator.split()


def test_oversized_messages() -> None:
    initiator, responder, _, _ = kk_pair()
    # KK message 1 carries e (32) + tag (16): 65535 - 48 is the largest payload.
    with pytest.raises(UsageError):
        initiator.write_message(bytes(65535 - 48 + 1))
    message = initiator.write_message(bytes(65535 - 48))
    assert len(message) == 65535
    assert responder.read_message(message) == bytes(65535 - 48)
    with pytest.raises(CryptoError):
        initiator.read_message(bytes(65536))
    assert_failed_for_good(initiator)


def test_missing_or_extra_keys_are_usage_errors() -> None:
    kp = KeyPair.generate()
    with pytest.raises(UsageError, match="rs"):
        HandshakeState(KK, initiator=True, s=kp)
    with pytest.raises(UsageError, match=r"\(s\)"):
        HandshakeState(KK, initiator=True, rs=kp.public)
    with pytest.raises(UsageError, match=r"\(s\)"):
        HandshakeState(XXPSK3, initiator=False, psks=[bytes(32)])
    with pytest.raises(UsageError, match="psk"):
        HandshakeState(XXPSK3, initiator=True, s=kp)
    with pytest.raises(UsageError, match="psk"):
        HandshakeState(XXPSK3, initiator=True, s=kp, psks=[bytes(31)])
    with pytest.raises(UsageError, match="do not pass rs"):
        HandshakeState(XXPSK3, initiator=True, s=kp, rs=kp.public, psks=[bytes(32)])
    with pytest.raises(UsageError, match="32 bytes"):
        HandshakeState(KK, initiator=True, s=kp, rs=bytes(31))
    # NN needs no keys at all.
    HandshakeState("Noise_NN_25519_ChaChaPoly_BLAKE2b", initiator=True)


# -- protocol names ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("Noise_XX_448_ChaChaPoly_BLAKE2b", "448"),
        ("Noise_XX_25519_AESGCM_BLAKE2b", "AESGCM"),
        ("Noise_XX_25519_ChaChaPoly_SHA256", "SHA256"),
        ("Noise_ZZ_25519_ChaChaPoly_BLAKE2b", "ZZ"),
        ("Noise_XXfallback_25519_ChaChaPoly_BLAKE2b", "fallback"),
        ("Noise_XXpsk4_25519_ChaChaPoly_BLAKE2b", "psk4"),
        ("Noise_XXpsk3+psk3_25519_ChaChaPoly_BLAKE2b", "twice"),
        ("Noise_XXpsk03_25519_ChaChaPoly_BLAKE2b", "psk03"),
        ("Noise_XX_25519_ChaChaPoly", "not a Noise protocol name"),
        ("Nois_XX_25519_ChaChaPoly_BLAKE2b", "not a Noise protocol name"),
        ("Noise_xx_25519_ChaChaPoly_BLAKE2b", "xx"),
    ],
)
def test_protocol_name_errors(name: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        parse_protocol_name(name)


def test_psk_modifiers_placement() -> None:
    assert parse_protocol_name(XXPSK3).messages == (
        ("e",),
        ("e", "ee", "s", "es"),
        ("s", "se", "psk"),
    )
    both = parse_protocol_name("Noise_NNpsk0+psk2_25519_ChaChaPoly_BLAKE2b")
    assert both.name == "NNpsk0+psk2"
    assert both.messages == (("psk", "e"), ("e", "ee", "psk"))
    assert both.psk_count == 2
    assert parse_protocol_name(KK) is PATTERNS["KK"]


def test_two_psks_end_to_end() -> None:
    name = "Noise_NNpsk0+psk2_25519_ChaChaPoly_BLAKE2b"
    psks = [b"\x01" * 32, b"\x02" * 32]
    initiator = HandshakeState(name, initiator=True, psks=psks)
    responder = HandshakeState(name, initiator=False, psks=psks)
    run(initiator, responder)
    assert initiator.handshake_hash == responder.handshake_hash


def test_pattern_table_is_complete() -> None:
    one_way = {"N", "K", "X"}
    fundamental = {"NN", "NK", "NX", "KN", "KK", "KX", "XN", "XK", "XX", "IN", "IK", "IX"}
    deferred_n_x = {"NK1", "NX1", "X1N", "X1K", "XK1", "X1K1", "X1X", "XX1", "X1X1"}
    deferred_k = {"K1N", "K1K", "KK1", "K1K1", "K1X", "KX1", "K1X1"}
    deferred_i = {"I1N", "I1K", "IK1", "I1K1", "I1X", "IX1", "I1X1"}
    assert set(PATTERNS) == one_way | fundamental | deferred_n_x | deferred_k | deferred_i
    assert len(PATTERNS) == 38


# -- primitives ----------------------------------------------------------------------

# Curve25519 points of small order (RFC 7748 section 6.1 lists why they matter).
LOW_ORDER_POINTS = [
    bytes(32),
    bytes([1]) + bytes(31),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p.hex()[:8])
def test_low_order_point_rejected(point: bytes) -> None:
    with pytest.raises(CryptoError):
        dh(KeyPair.generate(), point)


def test_low_order_ephemeral_fails_the_handshake() -> None:
    initiator, responder, _, _ = kk_pair()
    first = initiator.write_message()
    # Swap in a low-order ephemeral: the responder's "es" DH hits the zero check.
    with pytest.raises(CryptoError):
        responder.read_message(LOW_ORDER_POINTS[1] + first[32:])
    assert_failed_for_good(responder)


@pytest.mark.parametrize("size", [0, 31, 33])
def test_dh_rejects_wrong_sized_public_key(size: int) -> None:
    with pytest.raises(CryptoError):
        dh(KeyPair.generate(), bytes(size))


def test_key_pair_checks() -> None:
    kp = KeyPair.generate()
    assert kp.private.hex() not in repr(kp)
    assert KeyPair.from_private(kp.private) == kp
    assert KeyPair(kp.private, kp.public) == kp
    with pytest.raises(UsageError):
        KeyPair.from_private(bytes(31))
    with pytest.raises(UsageError):
        KeyPair(kp.private, KeyPair.generate().public)
    with pytest.raises(UsageError):
        KeyPair(kp.private, kp.public[:31])
    assert dh(kp, KeyPair.generate().public) != bytes(32)
    fixed = KeyPair.generate(lambda n: b"\x05" * n)
    assert fixed == KeyPair.from_private(b"\x05" * 32)


def test_cipher_state_nonce_exhaustion_and_rekey() -> None:
    cipher = CipherState(b"\x01" * 32)
    cipher.set_nonce(2**64 - 2)
    cipher.encrypt_with_ad(b"", b"last")
    with pytest.raises(CryptoError):
        cipher.encrypt_with_ad(b"", b"one too many")
    with pytest.raises(CryptoError):
        cipher.decrypt_with_ad(b"", bytes(16))

    sender, receiver = CipherState(b"\x02" * 32), CipherState(b"\x02" * 32)
    before = sender.encrypt_with_ad(b"", b"m")
    sender.rekey()
    receiver.rekey()
    assert sender.nonce == receiver.nonce + 1  # rekey leaves nonces alone
    receiver.set_nonce(0)
    with pytest.raises(CryptoError):
        receiver.decrypt_with_ad(b"", before)
    assert receiver.nonce == 0  # a failed decrypt does not advance the nonce
    with pytest.raises(UsageError):
        CipherState().rekey()


def test_key_less_cipher_passes_through_as_the_spec_says() -> None:
    assert CipherState().encrypt_with_ad(b"ad", b"clear") == b"clear"
    assert "has_key=False" in repr(CipherState())


def test_long_protocol_name_is_hashed() -> None:
    # Names longer than HASHLEN are hashed, shorter ones zero-padded (spec 5.2).
    long_name = b"N" * 65
    assert SymmetricState(long_name).get_handshake_hash() != long_name[:64]
    short = SymmetricState(b"abc").get_handshake_hash()
    assert short == b"abc" + bytes(61)
