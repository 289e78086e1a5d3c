"""A load process of the end-to-end benchmark: N bare senders to one receiver.

``python -m bench.e2e.bare --url URL --count N --to HEX``

The bare counterpart of ``bench/e2e/daemons.py``: ``N`` connections to the bare
forwarder (``bench/common/bare_forwarder.py``), each announcing its 2-byte id (1..N) and
addressing every message to the receiver ``--to`` (a 2-byte id in hex, the parent's
connection). A message is the receiver's id and :data:`bench.common.targets.BODY` (1 KiB),
sent through the load generator's minimal client (``bench/common/wsclient.py``) on uvloop,
as ``bench/relay/loadgen.py`` does. Prints ``{"event": "connected"}``, then commands:

- ``flood``: every sender writes as fast as TCP takes it (it stops while its
  transport is paused, and the forwarder awaits each forward in the sender's own
  loop, so a slow receiver pushes back end to end); answers ``flooding``.
  ``stop-flood``: ``{"event": "flood-stopped", "sent": n}``.
- ``pace`` ``{"rate": R, "seconds": S}``: ``R`` messages/s round-robin over the
  senders, each carrying ``time.monotonic_ns()`` where MARKER is; answers
  ``{"event": "paced", "sent": n, "dropped": n}`` (dropped: the sender was paused).
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import time
from urllib.parse import urlsplit

import uvloop

from bench.common.pacing import paced
from bench.common.procs import commands, emit
from bench.common.targets import BODY, MARKER
from bench.common.wsclient import DISCARD, RawWebSocket, client_frame, connect

CHUNK = 16  # messages per write while flooding
MAX_WRITES = 64  # writes per call before yielding to the loop


class Senders:
    def __init__(self, sockets: list[RawWebSocket], to: bytes) -> None:
        self.sockets = sockets
        self.frame = client_frame(to + BODY)
        self.chunk = self.frame * CHUNK
        self.stamp_at = self.frame.find(MARKER)
        self.flooding = False
        self.sent = 0
        for ws in sockets:
            ws.mode = DISCARD
            ws.on_writable = self._top_up

    def _top_up(self, ws: RawWebSocket) -> None:
        writes = 0
        while self.flooding and ws.writable and writes < MAX_WRITES:
            ws.write(self.chunk)
            self.sent += CHUNK
            writes += 1
        if self.flooding and ws.writable:  # the kernel took it all: come back soon
            asyncio.get_running_loop().call_soon(self._top_up, ws)

    def start_flood(self) -> None:
        self.flooding, self.sent = True, 0
        for ws in self.sockets:
            self._top_up(ws)

    async def pace(self, rate: float, seconds: float) -> tuple[int, int]:
        head, tail = self.frame[: self.stamp_at], self.frame[self.stamp_at + 8 :]
        pack = struct.Struct("<q").pack
        sent = dropped = turn = 0
        async for due in paced(rate, seconds):
            for _ in range(due):
                ws = self.sockets[turn]
                turn = (turn + 1) % len(self.sockets)
                if ws.writable:
                    ws.write(head + pack(time.monotonic_ns()) + tail)
                else:
                    dropped += 1
            sent += due
        return sent, dropped


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--to", required=True, help="the receiver's 2-byte id, hex")
    args = parser.parse_args()
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    sockets = []
    for index in range(1, args.count + 1):
        ws = await connect(host, port, "/v1/ws")
        ws.send(index.to_bytes(2, "big"))
        sockets.append(ws)
    senders = Senders(sockets, bytes.fromhex(args.to))
    emit("connected")
    async for command in commands():
        name = command["cmd"]
        if name == "flood":
            senders.start_flood()
            emit("flooding")
        elif name == "stop-flood":
            senders.flooding = False
            emit("flood-stopped", sent=senders.sent)
        elif name == "pace":
            sent, dropped = await senders.pace(float(command["rate"]), float(command["seconds"]))
            emit("paced", sent=sent, dropped=dropped)
        elif name == "stop":
            break
    for ws in sockets:
        ws.abort()


if __name__ == "__main__":
    uvloop.run(main())
