"""SecureChannel: round trips, tamper and replay tests, rekey sync, fail-closed."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from starmux.channel import MAX_PLAINTEXT_LEN, SecureChannel
from starmux.errors import CryptoError, UsageError
from starmux.noise import HandshakeState, KeyPair

KK = "Noise_KK_25519_ChaChaPoly_BLAKE2b"


def completed_kk() -> tuple[HandshakeState, HandshakeState]:
    i_s, r_s = KeyPair.generate(), KeyPair.generate()
    initiator = HandshakeState(KK, initiator=True, s=i_s, rs=r_s.public)
    responder = HandshakeState(KK, initiator=False, s=r_s, rs=i_s.public)
    responder.read_message(initiator.write_message())
    initiator.read_message(responder.write_message())
    return initiator, responder


def channel_pair(rekey_every: int = 2**16) -> tuple[SecureChannel, SecureChannel]:
    initiator, responder = completed_kk()
    return (
        SecureChannel.from_handshake(initiator, rekey_every=rekey_every),
        SecureChannel.from_handshake(responder, rekey_every=rekey_every),
    )


def assert_dead_for_good(channel: SecureChannel, valid_next: bytes | None = None) -> None:
    """A failed channel refuses everything, even the message it would have accepted."""
    assert channel.closed
    with pytest.raises(CryptoError):
        channel.encrypt(b"anything")
    with pytest.raises(CryptoError):
        channel.decrypt(valid_next if valid_next is not None else bytes(32))


messages = st.lists(st.binary(max_size=2048), max_size=20)


# -- round trips -------------------------------------------------------------------


@given(traffic=st.lists(st.tuples(st.booleans(), st.binary(max_size=2048)), max_size=40))
def test_interleaved_round_trips(traffic: list[tuple[bool, bytes]]) -> None:
    alice, bob = channel_pair()
    for from_alice, plaintext in traffic:
        sender, receiver = (alice, bob) if from_alice else (bob, alice)
        ciphertext = sender.encrypt(plaintext)
        assert len(ciphertext) == len(plaintext) + 16
        assert receiver.decrypt(ciphertext) == plaintext
    assert not alice.closed
    assert not bob.closed


@given(
    traffic=st.lists(st.tuples(st.booleans(), st.binary(max_size=64)), max_size=60),
    rekey_every=st.integers(min_value=1, max_value=5),
)
def test_round_trips_across_rekeys(traffic: list[tuple[bool, bytes]], rekey_every: int) -> None:
    alice, bob = channel_pair(rekey_every)
    for from_alice, plaintext in traffic:
        sender, receiver = (alice, bob) if from_alice else (bob, alice)
        assert receiver.decrypt(sender.encrypt(plaintext)) == plaintext


def test_handshake_facts_carried_over() -> None:
    initiator, responder = completed_kk()
    expected_hash = initiator.handshake_hash
    initiator_static, responder_static = responder.remote_static, initiator.remote_static
    alice = SecureChannel.from_handshake(initiator)
    bob = SecureChannel.from_handshake(responder)
    assert alice.handshake_hash == bob.handshake_hash == expected_hash
    assert alice.remote_static == responder_static
    assert bob.remote_static == initiator_static


def test_max_plaintext() -> None:
    alice, bob = channel_pair()
    assert MAX_PLAINTEXT_LEN == 65535 - 16
    with pytest.raises(UsageError):
        alice.encrypt(bytes(MAX_PLAINTEXT_LEN + 1))
    assert not alice.closed  # misuse changes nothing
    ciphertext = alice.encrypt(bytes(MAX_PLAINTEXT_LEN))
    assert len(ciphertext) == 65535
    assert bob.decrypt(ciphertext) == bytes(MAX_PLAINTEXT_LEN)
    with pytest.raises(CryptoError):
        bob.decrypt(bytes(65536))
    assert_dead_for_good(bob)


# -- tampering ---------------------------------------------------------------------


@settings(max_examples=200)
@given(data=st.data(), plaintext=st.binary(max_size=256), bit=st.integers(0, 7))
def test_flip_any_bit_fails_closed(data: st.DataObject, plaintext: bytes, bit: int) -> None:
    alice, bob = channel_pair()
    ciphertext = alice.encrypt(plaintext)
    position = data.draw(st.integers(0, len(ciphertext) - 1), label="position")
    tampered = bytearray(ciphertext)
    tampered[position] ^= 1 << bit
    with pytest.raises(CryptoError):
        bob.decrypt(bytes(tampered))
    assert_dead_for_good(bob, valid_next=ciphertext)


def test_flip_every_byte_position_fails_closed() -> None:
    alice, bob = channel_pair()
    bob.decrypt(alice.encrypt(b"warm-up"))  # tamper mid-stream, not only at nonce 0
    ciphertext = alice.encrypt(bytes(range(64)))
    for position in range(len(ciphertext)):
        receiver = copy.deepcopy(bob)
        tampered = bytearray(ciphertext)
        tampered[position] ^= 0xFF
        with pytest.raises(CryptoError):
            receiver.decrypt(bytes(tampered))
        assert_dead_for_good(receiver, valid_next=ciphertext)
    assert bob.decrypt(ciphertext) == bytes(range(64))


@given(history=messages)
def test_replay_fails_closed(history: list[bytes]) -> None:
    alice, bob = channel_pair()
    sent = [alice.encrypt(m) for m in [*history, b"replayed"]]
    for ciphertext in sent:
        bob.decrypt(ciphertext)
    with pytest.raises(CryptoError):
        bob.decrypt(sent[-1])
    assert_dead_for_good(bob)


@given(history=messages)
def test_reorder_fails_closed(history: list[bytes]) -> None:
    alice, bob = channel_pair()
    for plaintext in history:
        bob.decrypt(alice.encrypt(plaintext))
    first, second = alice.encrypt(b"first"), alice.encrypt(b"second")
    with pytest.raises(CryptoError):
        bob.decrypt(second)
    assert_dead_for_good(bob, valid_next=first)


def test_dropped_message_fails_closed() -> None:
    alice, bob = channel_pair()
    alice.encrypt(b"lost in transit")
    following = alice.encrypt(b"following")
    with pytest.raises(CryptoError):
        bob.decrypt(following)
    assert_dead_for_good(bob)


@given(plaintext=st.binary(max_size=256), data=st.data())
def test_truncation_fails_closed(plaintext: bytes, data: st.DataObject) -> None:
    alice, bob = channel_pair()
    ciphertext = alice.encrypt(plaintext)
    cut = data.draw(st.integers(0, len(ciphertext) - 1), label="cut")
    with pytest.raises(CryptoError):
        bob.decrypt(ciphertext[:cut])
    assert_dead_for_good(bob, valid_next=ciphertext)


def test_wrong_key_fails_closed() -> None:
    alice, _ = channel_pair()
    _, stranger = channel_pair()
    ciphertext = alice.encrypt(b"for bob only")
    with pytest.raises(CryptoError):
        stranger.decrypt(ciphertext)
    assert_dead_for_good(stranger)


def test_own_message_reflected_back_fails() -> None:
    # Each direction has its own key, so a message bounced back by the relay fails.
    alice, _ = channel_pair()
    with pytest.raises(CryptoError):
        alice.decrypt(alice.encrypt(b"echo"))
    assert_dead_for_good(alice)


# -- rekey -------------------------------------------------------------------------


@pytest.mark.parametrize("rekey_every", [1, 2, 3, 7])
def test_rekey_keeps_both_sides_in_sync(rekey_every: int) -> None:
    alice, bob = channel_pair(rekey_every)
    for n in range(4 * rekey_every + 1):
        assert bob.decrypt(alice.encrypt(b"a%d" % n)) == b"a%d" % n
        assert alice.decrypt(bob.encrypt(b"b%d" % n)) == b"b%d" % n


def test_message_under_old_key_fails_after_rekey() -> None:
    initiator, responder = completed_kk()
    # A twin of the sender that never rekeys: same keys and nonces, no REKEY.
    twin = SecureChannel.from_handshake(copy.deepcopy(initiator), rekey_every=2**40)
    alice = SecureChannel.from_handshake(initiator, rekey_every=4)
    bob = SecureChannel.from_handshake(responder, rekey_every=4)
    for n in range(4):
        ciphertext = alice.encrypt(b"m%d" % n)
        assert twin.encrypt(b"m%d" % n) == ciphertext  # same key and nonce before the rekey
        assert bob.decrypt(ciphertext) == b"m%d" % n
    # alice and bob have both rekeyed. The twin's next message carries the right
    # nonce (4) under the old key, so the key alone decides.
    bob_copy = copy.deepcopy(bob)
    assert bob_copy.decrypt(alice.encrypt(b"m4")) == b"m4"
    with pytest.raises(CryptoError):
        bob.decrypt(twin.encrypt(b"m4"))
    assert_dead_for_good(bob)


def test_rekey_every_must_be_positive() -> None:
    initiator, _ = completed_kk()
    with pytest.raises(UsageError):
        SecureChannel.from_handshake(initiator, rekey_every=0)


# -- lifecycle ---------------------------------------------------------------------


def test_close_is_final_and_idempotent() -> None:
    alice, bob = channel_pair()
    alice.close()
    alice.close()
    assert alice.closed
    with pytest.raises(UsageError):
        alice.encrypt(b"x")
    with pytest.raises(UsageError):
        alice.decrypt(bob.encrypt(b"x"))


def test_failed_channel_stays_failed_after_close() -> None:
    alice, _ = channel_pair()
    with pytest.raises(CryptoError):
        alice.decrypt(b"garbage but long enough to hold a tag")
    alice.close()
    assert_dead_for_good(alice)


def test_needs_a_complete_handshake_and_only_one_channel() -> None:
    i_s, r_s = KeyPair.generate(), KeyPair.generate()
    pending = HandshakeState(KK, initiator=True, s=i_s, rs=r_s.public)
    with pytest.raises(UsageError):
        SecureChannel.from_handshake(pending)
    initiator, _ = completed_kk()
    SecureChannel.from_handshake(initiator)
    # A second channel would reuse (key, nonce) pairs: refused.
    with pytest.raises(UsageError):
        SecureChannel.from_handshake(initiator)


def test_one_way_pattern_only_initiator_sends() -> None:
    r_s = KeyPair.generate()
    name = "Noise_N_25519_ChaChaPoly_BLAKE2b"
    initiator = HandshakeState(name, initiator=True, rs=r_s.public)
    responder = HandshakeState(name, initiator=False, s=r_s)
    responder.read_message(initiator.write_message())
    sender = SecureChannel.from_handshake(initiator)
    receiver = SecureChannel.from_handshake(responder)
    assert receiver.decrypt(sender.encrypt(b"one way")) == b"one way"
    refused: list[Callable[[], bytes]] = [
        lambda: receiver.encrypt(b"back"),
        lambda: sender.decrypt(bytes(16)),
    ]
    for call in refused:
        with pytest.raises(UsageError):
            call()
