"""Fuzz :func:`starmux.frames.parse_frame`, the relay's hot-path parser.

Only :class:`~starmux.errors.FrameError` may escape. A frame it accepts must encode
within the relay's size limit, and decode again to the same frame.

    python fuzz/frames.py [-atheris_runs=N] [libFuzzer flags] [CORPUS_DIR ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: make the ``fuzz`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.harness import Target, fuzz_main
from starmux.control import CONTROL, CreateTicket, Presence
from starmux.errors import FrameError
from starmux.frames import MAX_FRAME_SIZE, Frame, FrameType, parse_frame


def check(data: bytes) -> None:
    try:
        frame = parse_frame(data)
    except FrameError:
        return
    assert parse_frame(memoryview(data)) == frame, "memoryview parses differently"
    wire = frame.encode()
    # The relay re-encodes every frame it forwards; the receiver applies this limit.
    assert len(wire) <= MAX_FRAME_SIZE, f"re-encoded frame of {len(wire)} bytes"
    again = parse_frame(wire)
    assert again == frame, f"{frame!r} re-parsed as {again!r}"
    assert again.encode() == wire, "encoding is not a fixed point"


def seeds() -> dict[str, bytes]:
    peer = bytes(range(32))
    return {
        "data": Frame(FrameType.DATA, peer, b"\x02" + b"ciphertext" * 8).encode(),
        "data-empty": Frame(FrameType.DATA, peer, b"").encode(),
        "request": Frame(FrameType.REQUEST, b"", CONTROL.encode(CreateTicket(7))).encode(),
        "presence": Frame(FrameType.PRESENCE, peer, CONTROL.encode(Presence(True, 1.5))).encode(),
        "challenge": Frame(FrameType.CHALLENGE, b"", b"\x00" * 100).encode(),
    }


TARGET = Target("frames", check, seeds)

if __name__ == "__main__":
    fuzz_main(TARGET)
