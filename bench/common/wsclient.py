"""The load generator's WebSocket client: an ``asyncio.Protocol`` that costs as little as possible.

The server under test and the load generator share two cores, so every microsecond
the client spends per message is taken from the server. A general client library
(masking, a message queue and a task per connection) would make the *client* the
bottleneck and flatten every difference between servers. This one:

- masks with the all-zero key, which is valid on the wire (RFC 6455 asks for an
  unpredictable key to protect proxy caches; there is no proxy on loopback), so a
  frame is built once and written many times;
- parses server frames in place and, once set up, only counts them or reads a
  timestamp out of them (``mode``), never building a message object;
- answers pings (the servers ping every 20 s) and records the close code it gets.

It speaks just enough of RFC 6455 for this: one unfragmented binary frame per message.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
from collections.abc import Callable
from typing import cast

ZERO_MASK = b"\x00\x00\x00\x00"
CONNECT_TIMEOUT = 10.0
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9

#: ``RawWebSocket.mode``: what to do with a binary message from the server.
QUEUE = 0  # put a copy on ``inbox`` (setup: auth, requests, probes)
COUNT = 1  # count it and tell ``on_count`` once per read
STAMP = 2  # read the send time at ``stamp_offset``, append the delay to ``delays``
DISCARD = 3


class HandshakeError(Exception):
    """The server did not switch protocols."""


def client_frame(payload: bytes, opcode: int = OP_BINARY) -> bytes:
    """One final client frame, masked with the zero key (so the payload is sent as is)."""
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, 0x80 | size))
    elif size < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    return header + ZERO_MASK + payload


class RawWebSocket(asyncio.Protocol):
    def __init__(self, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        self._request = request
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[int] = loop.create_future()
        self.close_code: int | None = None
        self._head = bytearray()
        self._buf = bytearray()
        self._open = False
        self.mode = QUEUE
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.tag = 0  # the caller's index for this connection
        # COUNT: only messages whose byte at check_offset is check_value count (-1: all).
        self.check_offset = -1
        self.check_value = 0
        self.count = 0
        self.on_count: Callable[[RawWebSocket, int], None] | None = None
        # STAMP: a little-endian int64 of perf_counter_ns at this offset of the payload.
        self.stamp_offset = 0
        self.delays: list[int] = []
        self.writable = True
        self.on_writable: Callable[[RawWebSocket], None] | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(HandshakeError("connection lost during the handshake"))
        if not self.closed.done():
            self.closed.set_result(self.close_code if self.close_code is not None else 1006)
        self.inbox.put_nowait(None)

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        if self.on_writable is not None:
            self.on_writable(self)

    def data_received(self, data: bytes) -> None:
        if not self._open:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self._head[: self._head.find(b"\r\n")])
            if not status.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(HandshakeError(status.decode("latin-1")))
                assert self.transport is not None
                self.transport.close()
                return
            rest = bytes(self._head[end + 4 :])
            self._head = bytearray()
            self._open = True
            self.opened.set_result(None)
            if not rest:
                return
            data = rest
        buf = self._buf
        if buf:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data
        self._frames(view)

    # the hot path

    def _frames(self, data: bytes | bytearray) -> None:
        size = len(data)
        pos = 0
        counted = 0
        mode = self.mode
        now = time.perf_counter_ns() if mode == STAMP else 0
        while size - pos >= 2:
            first = data[pos]
            length = data[pos + 1] & 0x7F  # server frames are never masked
            start = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                (length,) = struct.unpack_from("!Q", data, pos + 2)
                start = pos + 10
            end = start + length
            if end > size:
                break
            opcode = first & 0x0F
            if opcode == OP_BINARY:
                if mode == COUNT:
                    if self.check_offset < 0 or data[start + self.check_offset] == self.check_value:
                        counted += 1
                elif mode == STAMP:
                    (sent,) = struct.unpack_from("<q", data, start + self.stamp_offset)
                    self.delays.append(now - sent)
                elif mode == QUEUE:
                    self.inbox.put_nowait(bytes(data[start:end]))
            else:
                self._control(opcode, bytes(data[start:end]))
            pos = end
        if pos == size:
            self._buf = bytearray()
        elif data is self._buf:
            del self._buf[:pos]
        else:
            self._buf = bytearray(data[pos:])
        if counted:
            self.count += counted
            if self.on_count is not None:
                self.on_count(self, counted)

    def _control(self, opcode: int, payload: bytes) -> None:
        assert self.transport is not None
        if opcode == OP_PING:
            self.transport.write(client_frame(payload, 0xA))
        elif opcode == OP_CLOSE:
            self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            if not self.transport.is_closing():
                self.transport.write(client_frame(payload[:2], OP_CLOSE))
                self.transport.close()

    # the caller's API

    def send(self, payload: bytes) -> None:
        assert self.transport is not None
        self.transport.write(client_frame(payload))

    def write(self, frames: bytes | bytearray) -> None:
        """Write ready-made frames (from :func:`client_frame`)."""
        assert self.transport is not None
        self.transport.write(frames)

    async def recv(self) -> bytes:
        message = await self.inbox.get()
        if message is None:
            self.inbox.put_nowait(None)  # every later recv fails too
            raise ConnectionError(f"closed by the server ({self.close_code})")
        return message

    def pause_reading(self) -> None:
        assert self.transport is not None
        self.transport.pause_reading()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(struct.pack("!H", 1000), OP_CLOSE))
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def upgrade_request(host: str, port: int, path: str, *, offer_deflate: bool = False) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if offer_deflate:
        lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def connect(host: str, port: int, path: str, *, offer_deflate: bool = False) -> RawWebSocket:
    loop = asyncio.get_running_loop()
    request = upgrade_request(host, port, path, offer_deflate=offer_deflate)
    async with asyncio.timeout(CONNECT_TIMEOUT):
        _, protocol = await loop.create_connection(lambda: RawWebSocket(request), host, port)
        await protocol.opened
    return protocol
