"""The relay envelope: round trips, size limits, strict parsing, and a golden wire table."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from starmux.errors import FrameError, UsageError
from starmux.frames import (
    MAX_BODY_SIZE,
    MAX_FRAME_SIZE,
    PEER_KEY_SIZE,
    Frame,
    FrameType,
    encode_frame,
    parse_frame,
)

KEY = bytes(range(32))
peers = st.one_of(st.just(b""), st.binary(min_size=PEER_KEY_SIZE, max_size=PEER_KEY_SIZE))


def _repeat(chunk: bytes, size: int) -> bytes:
    return (chunk * (size // len(chunk) + 1))[:size]


# Hypothesis draws bytes one at a time, so large bodies repeat a random chunk: every
# size up to MAX_BODY_SIZE (each msgpack length class) without 64 KiB of draws.
bodies = st.one_of(
    st.binary(max_size=300),
    st.builds(_repeat, st.binary(min_size=1, max_size=64), st.integers(0, MAX_BODY_SIZE)),
    st.builds(
        _repeat, st.binary(min_size=1, max_size=64), st.integers(MAX_BODY_SIZE - 2, MAX_BODY_SIZE)
    ),
)


@given(frame_type=st.sampled_from(FrameType), peer=peers, body=bodies)
def test_round_trip(frame_type: FrameType, peer: bytes, body: bytes) -> None:
    frame = Frame(frame_type, peer, body)
    encoded = frame.encode()
    assert encoded == encode_frame(frame_type, peer, body)
    assert len(encoded) <= MAX_FRAME_SIZE
    parsed = parse_frame(encoded)
    assert parsed == frame
    assert type(parsed.type) is FrameType
    assert type(parsed.peer) is bytes
    assert type(parsed.body) is bytes
    assert parse_frame(bytearray(encoded)) == frame
    assert parse_frame(memoryview(encoded)) == frame


def test_frame_type_numbers_are_fixed() -> None:
    assert {t.name: int(t) for t in FrameType} == {
        "CHALLENGE": 1,
        "AUTH": 2,
        "WELCOME": 3,
        "DATA": 16,
        "ERROR": 17,
        "PRESENCE": 18,
        "REQUEST": 32,
        "RESPONSE": 33,
        "NOTICE": 34,
    }


# Hand-assembled from the msgpack spec: fixarray of 3 (0x93), the type as a positive
# fixint, then peer and body as bin8 (0xc4 len) or bin16 (0xc5 len-hi len-lo).
GOLDEN: list[tuple[Frame, str]] = [
    (Frame(FrameType.DATA, b"", b""), "93 10 c400 c400"),
    (Frame(FrameType.CHALLENGE, b"", b"\x01\x02"), "93 01 c400 c402 0102"),
    (Frame(FrameType.NOTICE, b"", b"hi"), "93 22 c400 c402 6869"),
    (
        Frame(FrameType.DATA, KEY, b"hi"),
        "93 10 c420 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f c402 6869",
    ),
    (Frame(FrameType.REQUEST, b"", b"\xab" * 255), "93 20 c400 c4ff" + "ab" * 255),
    (Frame(FrameType.RESPONSE, b"", b"\xab" * 256), "93 21 c400 c50100" + "ab" * 256),
    (
        Frame(FrameType.PRESENCE, KEY, b"\x00" * MAX_BODY_SIZE),
        "93 12 c420 " + KEY.hex() + " c5ffff" + "00" * MAX_BODY_SIZE,
    ),
]


@pytest.mark.parametrize(
    ("frame", "wire"), GOLDEN, ids=[f"{f.type.name}-{len(f.body)}" for f, _ in GOLDEN]
)
def test_golden_wire_format(frame: Frame, wire: str) -> None:
    expected = bytes.fromhex(wire.replace(" ", ""))
    assert frame.encode() == expected
    assert parse_frame(expected) == frame


def test_largest_frame_fits_the_frame_limit() -> None:
    assert len(Frame(FrameType.DATA, KEY, b"\x00" * MAX_BODY_SIZE).encode()) <= MAX_FRAME_SIZE


@pytest.mark.parametrize("size", [1, 16, 31, 33, 64])
def test_constructor_refuses_a_bad_peer_size(size: int) -> None:
    with pytest.raises(UsageError, match="peer"):
        Frame(FrameType.DATA, b"\x01" * size, b"")


def test_constructor_refuses_an_oversize_body() -> None:
    Frame(FrameType.DATA, b"", b"\x00" * MAX_BODY_SIZE)
    with pytest.raises(UsageError, match=str(MAX_BODY_SIZE)):
        Frame(FrameType.DATA, b"", b"\x00" * (MAX_BODY_SIZE + 1))


def test_parse_refuses_an_oversize_body() -> None:
    data = encode_frame(FrameType.DATA, b"", b"\x00" * (MAX_BODY_SIZE + 1))
    assert len(data) <= MAX_FRAME_SIZE  # so it is the body check that refuses it
    with pytest.raises(FrameError):
        parse_frame(data)


def test_parse_refuses_more_than_max_size() -> None:
    data = encode_frame(FrameType.DATA, b"", b"\x00" * 100)
    assert parse_frame(data, max_size=len(data)).body == b"\x00" * 100
    with pytest.raises(FrameError, match="exceeds"):
        parse_frame(data, max_size=len(data) - 1)
    with pytest.raises(FrameError, match="exceeds"):
        parse_frame(b"\x00" * (MAX_FRAME_SIZE + 1))


def _pack(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x93", id="truncated"),
        pytest.param(bytes.fromhex("9310c400c400") + b"\x00", id="trailing-byte"),
        pytest.param(_pack([0, b"", b""]), id="type-0"),
        pytest.param(_pack([4, b"", b""]), id="type-4"),
        pytest.param(_pack([99, b"", b""]), id="type-99"),
        pytest.param(_pack([-16, b"", b""]), id="type-negative"),
        pytest.param(_pack([True, b"", b""]), id="type-bool"),
        pytest.param(_pack([16.0, b"", b""]), id="type-float"),
        pytest.param(_pack(["DATA", b"", b""]), id="type-str"),
        pytest.param(_pack([16, b"\x01" * 31, b""]), id="peer-31"),
        pytest.param(_pack([16, b"\x01" * 33, b""]), id="peer-33"),
        pytest.param(_pack([16, "k" * 32, b""]), id="peer-str"),
        pytest.param(_pack([16, None, b""]), id="peer-nil"),
        pytest.param(_pack([16, b"", "body"]), id="body-str"),
        pytest.param(_pack([16, b"", 7]), id="body-int"),
        pytest.param(_pack([16, b"", [b"x"]]), id="body-list"),
        pytest.param(_pack([16, b""]), id="two-elements"),
        pytest.param(_pack([16, b"", b"", b""]), id="four-elements"),
        pytest.param(_pack({"type": 16}), id="map"),
        pytest.param(_pack(16), id="bare-int"),
        pytest.param(_pack(b"frame"), id="bare-bin"),
        pytest.param(msgpack.packb([16, msgpack.ExtType(1, b"x"), b""]), id="ext"),
        pytest.param(b"\x91" * 5000 + b"\x10", id="deep-nesting"),
    ],
)
def test_parse_refuses_malformed_frames(data: bytes) -> None:
    with pytest.raises(FrameError):
        parse_frame(data)


@pytest.mark.parametrize("value", ["9310c400c400", None, 16, [16, b"", b""]])
def test_parse_refuses_non_bytes(value: object) -> None:
    with pytest.raises(FrameError, match="bytes"):
        parse_frame(value)  # type: ignore[arg-type]


@given(
    peer=st.binary(min_size=32, max_size=32),
    source=st.binary(min_size=32, max_size=32),
    body=st.binary(max_size=MAX_BODY_SIZE) | st.binary(max_size=300),
)
def test_readdress_fast_path_matches_the_full_parser(
    peer: bytes, source: bytes, body: bytes
) -> None:
    from starmux.frames import data_head, readdress_data_from

    wire = encode_frame(FrameType.DATA, peer, body)
    fast = readdress_data_from(wire, data_head(source))
    assert fast is not None
    assert fast == (peer, encode_frame(FrameType.DATA, source, parse_frame(wire).body))


@given(data=st.binary(max_size=200))
def test_readdress_fast_path_declines_anything_else(data: bytes) -> None:
    from starmux.frames import data_head, readdress_data_from

    head = data_head(b"\1" * 32)
    fast = readdress_data_from(data, head)
    if fast is not None:  # only canonical DATA frames take the fast path
        frame = parse_frame(data)
        assert frame.type is FrameType.DATA and fast[0] == frame.peer
    for truncated in (data[:-1], data + b"\0"):
        result = readdress_data_from(truncated, head)
        if result is not None:
            assert parse_frame(truncated).type is FrameType.DATA
