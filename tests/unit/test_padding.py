"""Padding inside the live channel: the relay learns a size bucket, never a size.

Through the real pieces: a Noise_KK live channel between a controller's and a
machine's keys (``starmux.live_channel``), and the SecureChannel it pads in.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from starmux import padding
from starmux.channel import SecureChannel
from starmux.codec import Message
from starmux.e2e import Kind, unwrap, wrap
from starmux.errors import CryptoError, UsageError
from starmux.frames import MAX_BODY_SIZE, FrameType, encode_frame, parse_frame
from starmux.identity import NodeKeys, Role
from starmux.live_channel import LiveChannel, finish, initiate, respond
from starmux.messages import APP, CommandAck, Output, OutputStream

from .test_channel import assert_dead_for_good, completed_kk

RELAY_KEY = b"r" * 32


def live_pair() -> tuple[LiveChannel, LiveChannel]:
    controller, machine = NodeKeys.generate(), NodeKeys.generate()
    hs, first = initiate(controller, machine.card(Role.MACHINE, "m"), relay_key=RELAY_KEY)
    machine_side, reply = respond(
        machine, controller.card(Role.CONTROLLER, "c"), unwrap(first)[1], relay_key=RELAY_KEY
    )
    return finish(hs, unwrap(reply)[1]), machine_side


def frame_size(channel: LiveChannel, message: Message) -> int:
    """What the relay sees: the length of the DATA frame carrying ``message``."""
    return len(encode_frame(FrameType.DATA, b"k" * 32, channel.seal(message)))


# --- the bucket function ------------------------------------------------------------


def test_buckets_by_hand() -> None:
    assert padding.padded_size(0) == padding.MIN_PADDED
    assert padding.padded_size(254) == 256
    assert padding.padded_size(255) == 272  # 257 rounds up to a 16-byte step
    assert padding.padded_size(16384 + 80) == 17408  # a full output chunk: +5.7 %, not x2
    assert padding.padded_size(padding.MAX_UNPADDED) == padding.MAX_PADDED


@given(st.integers(min_value=0, max_value=padding.MAX_UNPADDED))
def test_bucket_bounds(size: int) -> None:
    bucket = padding.padded_size(size)
    assert size + 2 <= bucket <= padding.MAX_PADDED
    assert (
        bucket == padding.MIN_PADDED
        or bucket == padding.MAX_PADDED
        or bucket < (size + 2) * 17 / 16
    )
    # a bucket is a fixed point: every size in it pads to it
    assert padding.padded_size(bucket - 2) == bucket


def test_few_distinct_sizes() -> None:
    sizes = {padding.padded_size(n) for n in range(padding.MAX_UNPADDED + 1)}
    assert len(sizes) <= 16 * 8 + 2  # 16 per power of two from 256 B to 64 KiB


@given(st.binary(max_size=4096))
def test_pad_round_trip(plaintext: bytes) -> None:
    padded = padding.pad(plaintext)
    assert len(padded) == padding.padded_size(len(plaintext))
    assert padding.unpad(padded) == plaintext


def test_pad_refuses_what_cannot_fit() -> None:
    padding.pad(bytes(padding.MAX_UNPADDED))
    with pytest.raises(UsageError):
        padding.pad(bytes(padding.MAX_UNPADDED + 1))


def _non_canonical() -> list[bytes]:
    good = padding.pad(b"hello")
    return [
        good[:-1],  # one byte short of the bucket
        good + b"\x00",  # one byte past it
        good[:-1] + b"\x01",  # a non-zero padding byte
        (300).to_bytes(2, "big") + good[2:],  # a length past the end
        (4).to_bytes(2, "big") + good[2:],  # a length that leaves content in the padding
        padding.pad(bytes(300))[:256],  # a length from another bucket
        b"",
        b"\xff\xff" + bytes(padding.MAX_PADDED - 2),  # length beyond any message
    ]


@pytest.mark.parametrize("bad", [*_non_canonical(), bytes(padding.MAX_PADDED + 1)])
def test_unpad_accepts_only_what_pad_makes(bad: bytes) -> None:
    with pytest.raises(CryptoError):
        padding.unpad(bad)


# --- through the live channel -------------------------------------------------------


@given(st.binary(max_size=20000), st.binary(max_size=20000))
def test_frame_sizes_leak_only_the_bucket(a: bytes, b: bytes) -> None:
    controller, _machine = live_pair()
    first, second = Output(OutputStream.STDOUT, a), Output(OutputStream.STDOUT, b)
    same_bucket = padding.padded_size(len(APP.encode(first))) == padding.padded_size(
        len(APP.encode(second))
    )
    assert (frame_size(controller, first) == frame_size(controller, second)) == same_bucket


def test_small_messages_all_look_alike() -> None:
    controller, machine = live_pair()
    sizes = {
        frame_size(controller, CommandAck("c-1", True, "", "", "")),
        frame_size(machine, Output(OutputStream.PTY, b"l")),
        frame_size(machine, Output(OutputStream.STDOUT, b"x" * 150)),
        frame_size(controller, CommandAck("c-2" * 20, False, "refused" * 10, "", "")),
    }
    assert sizes == {padding.MIN_PADDED + 56}  # the overhead PROTOCOL.md documents


def test_round_trip_through_the_live_channel() -> None:
    controller, machine = live_pair()
    for size in (0, 1, 255, 4096, 16384, 60000):
        message = Output(OutputStream.STDOUT, bytes(size))
        kind, payload = unwrap(controller.seal(message))
        assert kind is Kind.SESSION_TRANSPORT
        assert machine.open(payload) == message


def test_the_largest_padded_message_fits_a_frame() -> None:
    initiator, _responder = completed_kk()
    sender = SecureChannel.from_handshake(initiator, pad=True)
    body = wrap(Kind.SESSION_TRANSPORT, sender.encrypt(bytes(padding.MAX_UNPADDED)))
    assert len(body) == MAX_BODY_SIZE
    assert parse_frame(encode_frame(FrameType.DATA, b"k" * 32, body)).body == body


def test_tampered_ciphertext_kills_the_live_channel() -> None:
    controller, machine = live_pair()
    _, payload = unwrap(controller.seal(Output(OutputStream.STDOUT, b"hello")))
    tampered = payload[:-20] + bytes([payload[-20] ^ 1]) + payload[-19:]  # inside the padding
    with pytest.raises(CryptoError):
        machine.open(tampered)
    assert machine.closed
    with pytest.raises(CryptoError):  # even the untampered message is refused now
        machine.open(payload)


@pytest.mark.parametrize("bad", _non_canonical())
def test_bad_padding_from_an_authenticated_peer_fails_closed(bad: bytes) -> None:
    """A peer holding the keys (or a bug) sends padding pad() would not make: the
    receiver fails for good, exactly as for a failed decryption."""
    initiator, responder = completed_kk()
    sender = SecureChannel.from_handshake(initiator)  # unpadded: writes raw plaintexts
    receiver = SecureChannel.from_handshake(responder, pad=True)
    with pytest.raises(CryptoError):
        receiver.decrypt(sender.encrypt(bad))
    assert_dead_for_good(receiver, sender.encrypt(padding.pad(b"fine")))
