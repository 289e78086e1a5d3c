"""Fuzz a file transfer's receiving end: APP messages from a hostile peer fed to a
:class:`~starmux.transfer.Receiver` (the chunk parser and its rules).

The input is a msgpack array of APP-encoded ``file-chunk`` / ``file-credit`` /
``file-failed`` messages for a 200-byte file in 16-byte chunks. Only
:class:`~starmux.errors.MessageError` (it does not decode) and
:class:`~starmux.transfer.TransferFailed` (it broke the rules) may escape; a transfer
that completes must hold exactly the file (the hash check cannot be fooled), and a
failed one takes nothing more.

    python fuzz/file_chunks.py [-atheris_runs=N] [libFuzzer flags] [CORPUS_DIR ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: make the ``fuzz`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgpack

from fuzz.harness import Target, fuzz_main
from starmux.errors import MessageError
from starmux.messages import APP
from starmux.transfer import Receiver, State, TransferFailed, file_digest
from starmux.transfer_messages import FileChunk, FileCredit, FileFailed

FILE = bytes(range(200))
CHUNK = 16
MAX_MESSAGES = 64


def _digest() -> bytes:
    hashed = file_digest()
    hashed.update(FILE)
    return hashed.digest()


DIGEST = _digest()


def check(data: bytes) -> None:
    try:
        items = msgpack.unpackb(data, raw=False, max_bin_len=1 << 16, max_array_len=MAX_MESSAGES)
    except Exception:  # hostile bytes make msgpack raise many types
        return
    if not isinstance(items, list) or not all(isinstance(i, bytes) for i in items):
        return
    receiver = Receiver(size=len(FILE), digest=DIGEST, cap=1 << 20, window=4, chunk_size=CHUNK)
    receiver.request()
    written = bytearray(len(FILE))
    for item in items:
        try:
            message = APP.decode(item)
        except MessageError:
            continue
        if not isinstance(message, FileChunk):
            continue
        try:
            accepted = receiver.on_chunk(message.index, message.data)
        except TransferFailed:
            assert receiver.state is State.FAILED
            return
        written[accepted.offset : accepted.offset + len(accepted.data)] = accepted.data
        if accepted.complete:
            assert bytes(written) == FILE, "a transfer completed with other bytes"
            return
    assert receiver.state in (State.WAITING, State.STREAMING)


def seeds() -> dict[str, bytes]:
    chunks = [
        APP.encode(FileChunk("t-1", index, FILE[index * CHUNK : (index + 1) * CHUNK]))
        for index in range(-(-len(FILE) // CHUNK))
    ]
    return {
        "whole-file": msgpack.packb(chunks),
        "out-of-order": msgpack.packb([chunks[1], chunks[0]]),
        "credit-and-failure": msgpack.packb(
            [APP.encode(FileCredit("t-1", 0, 4)), APP.encode(FileFailed("t-1", "no"))]
        ),
        "flipped": msgpack.packb([*chunks[:-1], chunks[-1][:-1] + b"\xff"]),
    }


TARGET = Target("file_chunks", check, seeds)

if __name__ == "__main__":
    fuzz_main(TARGET)
