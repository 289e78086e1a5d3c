"""The floor the relay is measured against: the least router that can run on its stack.

``python -m bench.common.bare_forwarder --port 0`` serves ``/v1/ws`` on the relay's own stack
(Starlette on uvicorn; by default uvloop, websockets-sansio, per-message deflate off,
the same size cap and keepalive as ``relay/server.py``). No auth, no limits, no
queues: a client's first binary message is its 2-byte connection id; the first two
bytes of every later message name the connection it is forwarded to, unchanged. The
forward is awaited in the sender's own loop, so a stalled receiver pushes back on
its sender through TCP instead of being buffered or disconnected.

``--loop``, ``--ws`` and ``--deflate`` switch the stack, for the stack comparison in
``python -m bench.relay``. ``--direct`` reads and writes frames as the relay does
(:mod:`relay.direct_frames`): a frame whose receiver takes it at once is forwarded as
the socket is read; anything else waits for the sender's task, as above. It prints
``{"event": "listening", "url": ...}`` once bound.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import sys
from functools import partial

import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from starmux.frames import MAX_FRAME_SIZE
from starmux.relay.direct_frames import DIRECT_EXTENSION, DirectFrames

#: connection id (the 2 bytes as sent) → its WebSocket
CONNECTIONS: dict[bytes, WebSocket] = {}
#: the same, as the protocol under it, with --direct
DIRECT: dict[bytes, DirectFrames] = {}


def route_now(data: bytes) -> bool:
    """Forward ``data`` as read if its receiver takes it now (or is gone: dropped)."""
    destination = DIRECT.get(data[:2])
    return destination is None or destination.send_now(data)


async def forward(websocket: WebSocket) -> None:
    await websocket.accept()
    hello = await websocket.receive()
    me = hello.get("bytes")
    if not me:
        return
    me = me[:2]
    CONNECTIONS[me] = websocket
    receive = websocket.receive
    direct = (websocket.scope.get("extensions") or {}).get(DIRECT_EXTENSION)
    if direct is not None:
        DIRECT[me] = direct
        receive = partial(direct.receive_routing, route_now)
    try:
        while True:
            message = await receive()
            data = message.get("bytes")
            if data is None:
                return
            destination = CONNECTIONS.get(data[:2])
            if destination is not None:
                # If the receiver just left, drop the message, as a router would.
                with contextlib.suppress(Exception):
                    await destination.send_bytes(data)
    finally:
        if CONNECTIONS.get(me) is websocket:
            del CONNECTIONS[me]
            DIRECT.pop(me, None)


class Forwarder(uvicorn.Server):
    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.servers:
            port = self.servers[0].sockets[0].getsockname()[1]
            print(json.dumps({"event": "listening", "url": f"ws://127.0.0.1:{port}"}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    parser.add_argument(
        "--ws", default="websockets-sansio", choices=["websockets-sansio", "websockets", "wsproto"]
    )
    parser.add_argument("--deflate", action="store_true", help="per-message deflate on")
    parser.add_argument(
        "--direct", action="store_true", help="frames read and written as the relay does"
    )
    args = parser.parse_args()
    if args.direct and args.ws != "websockets-sansio":
        parser.error("--direct is a websockets-sansio protocol")
    app = Starlette(routes=[WebSocketRoute("/v1/ws", forward)])
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=args.port,
        loop=args.loop,
        ws=DirectFrames if args.direct else args.ws,
        ws_per_message_deflate=args.deflate,
        ws_max_size=MAX_FRAME_SIZE + 1024,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        log_level="warning",
        access_log=False,
        lifespan="off",
        backlog=4096,
    )
    Forwarder(config).run()
    sys.exit(0)


if __name__ == "__main__":
    main()
