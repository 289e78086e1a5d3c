"""The relay-visible envelope: the only bytes the relay parses on the hot path.

A frame is the msgpack array ``[type, peer, body]``:

- ``type``: a :class:`FrameType` (small int);
- ``peer``: 32 bytes, the Ed25519 key of the other end: the *destination* on frames a
  node sends, the *source* on frames the relay delivers; empty for frames between a
  node and the relay itself;
- ``body``: opaque bytes. For ``DATA`` they are Noise ciphertext the relay cannot
  read; for relay control frames they are a :mod:`starmux.control` message.

:func:`parse_frame` accepts any bytes and returns a :class:`Frame` or raises
:class:`~starmux.errors.FrameError`; no other exception escapes it.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

import msgpack

from .errors import FrameError, UsageError

PEER_KEY_SIZE = 32
#: A Noise message is at most 65535 bytes; a body never needs more.
MAX_BODY_SIZE = 65535
#: Envelope overhead: array header, type, two bin headers, the peer key.
MAX_FRAME_SIZE = MAX_BODY_SIZE + 64


class FrameType(enum.IntEnum):
    CHALLENGE = 1  # relay → node: the one-time auth nonce and the relay's card
    AUTH = 2  # node → relay: identity card and signature over the transcript
    WELCOME = 3  # relay → node: authenticated; the relay's signature over both nonces
    DATA = 16  # routed, opaque end-to-end ciphertext
    ERROR = 17  # relay → node: something about ``peer`` (or the relay itself) failed
    PRESENCE = 18  # relay → controller: ``peer`` came online or went offline
    REQUEST = 32  # node → relay: a control request (register, ticket, grant, revoke...)
    RESPONSE = 33  # relay → node: the answer to a REQUEST
    NOTICE = 34  # relay → node: unsolicited news (revoked, paired, shutting down)


_VALID_TYPES = frozenset(int(t) for t in FrameType)


@dataclass(frozen=True, slots=True)
class Frame:
    type: FrameType
    peer: bytes
    body: bytes

    def __post_init__(self) -> None:
        if len(self.peer) not in (0, PEER_KEY_SIZE):
            raise UsageError("a frame's peer is empty or a 32-byte key")
        if len(self.body) > MAX_BODY_SIZE:
            raise UsageError(f"a frame body is at most {MAX_BODY_SIZE} bytes")

    def encode(self) -> bytes:
        return encode_frame(self.type, self.peer, self.body)


def encode_frame(frame_type: FrameType, peer: bytes, body: bytes) -> bytes:
    """Encode without building a :class:`Frame` first (the relay's forwarding path)."""
    return msgpack.packb([int(frame_type), peer, body], use_bin_type=True)


def parse_frame(data: bytes | bytearray | memoryview, *, max_size: int = MAX_FRAME_SIZE) -> Frame:
    """Parse untrusted bytes into a :class:`Frame`; raises only :class:`FrameError`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FrameError("a frame must be bytes")
    if len(data) > max_size:
        raise FrameError(f"frame of {len(data)} bytes exceeds the {max_size}-byte limit")
    try:
        value = msgpack.unpackb(
            data,
            raw=True,
            use_list=True,
            max_array_len=3,
            max_map_len=0,
            max_str_len=0,
            max_ext_len=0,
            max_bin_len=MAX_BODY_SIZE,
        )
    except Exception as exc:  # msgpack raises several types for hostile bytes
        raise FrameError("frame is not valid msgpack") from exc
    if type(value) is not list or len(value) != 3:
        raise FrameError("a frame is a 3-element array")
    frame_type, peer, body = value
    if type(frame_type) is not int or frame_type not in _VALID_TYPES:
        raise FrameError("unknown frame type")
    if type(peer) is not bytes or len(peer) not in (0, PEER_KEY_SIZE):
        raise FrameError("a frame's peer must be empty or a 32-byte key")
    if type(body) is not bytes:
        raise FrameError("a frame's body must be bytes")
    return Frame(FrameType(frame_type), peer, body)


_DATA_HEAD = bytes((0x93, int(FrameType.DATA), 0xC4, PEER_KEY_SIZE))
_PEER_END = len(_DATA_HEAD) + PEER_KEY_SIZE
#: A DATA frame's envelope up to its body's length, read in one call: the four fixed
#: bytes, the peer key, the body's bin marker and (for bin16) its length.
_ENVELOPE = struct.Struct(f">{len(_DATA_HEAD)}s{PEER_KEY_SIZE}sBH")
_BIN8_EMPTY = _PEER_END + 2  # the one canonical frame shorter than _ENVELOPE


def data_head(source: bytes) -> bytes:
    """What precedes the body of a DATA frame from ``source``: build it once per
    connection and pass it to :func:`readdress_data_from`."""
    return _DATA_HEAD + source


def readdress_data_from(data: bytes, head: bytes) -> tuple[bytes, bytes] | None:
    """The relay's fast path for a DATA frame: ``(destination, the frame from source)``,
    where ``head`` is :func:`data_head` of the source (built once per connection).

    Byte-identical to :func:`parse_frame` then ``encode_frame(DATA, source, body)`` for
    the canonical encoding every node produces, with one copy instead of an unpack
    and a pack; ``None`` for anything else, which then takes the full parser (and is
    rejected there if malformed). Per routed frame: one struct unpack reads the
    envelope (cheaper than slicing it byte by byte), one concatenation builds the
    re-addressed frame.
    """
    size = len(data)
    if size < _ENVELOPE.size:
        if size == _BIN8_EMPTY and data.startswith(_DATA_HEAD) and data[_PEER_END:] == b"\xc4\0":
            return data[len(_DATA_HEAD) : _PEER_END], head + data[_PEER_END:]
        return None
    start, destination, marker, length = _ENVELOPE.unpack_from(data)
    if start != _DATA_HEAD:
        return None
    if marker == 0xC5:  # bin16 body; length is its size
        if size != _PEER_END + 3 + length:
            return None
    elif marker != 0xC4 or size != _PEER_END + 2 + (length >> 8):  # bin8: the high byte
        return None
    return destination, head + data[_PEER_END:]
