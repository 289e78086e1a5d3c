"""A WebSocket man-in-the-middle standing where the relay is: it forwards every frame
between a node and the real relay, and can tamper with or replay DATA frames, as
a compromised relay could."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import websockets

from starmux.e2e import Kind
from starmux.frames import FrameType, encode_frame, parse_frame

#: Decides what to deliver for one relay → node frame: a list of frames (empty = drop).
Policy = Callable[[bytes], list[bytes]]


@dataclass
class TamperProxy:
    upstream: str  # ws://host:port of the real relay
    policy: Policy
    server: websockets.Server | None = None
    url: str = ""
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> TamperProxy:
        self.server = await websockets.serve(self._handle, "127.0.0.1", 0, compression=None)
        port = next(iter(self.server.sockets)).getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}"
        return self

    async def _handle(self, client: websockets.ServerConnection) -> None:
        async with websockets.connect(self.upstream + "/v1/ws", compression=None) as relay:

            async def down() -> None:
                async for data in relay:
                    assert isinstance(data, bytes)
                    for out in self.policy(data):
                        await client.send(out)

            async def up() -> None:
                async for data in client:
                    await relay.send(data)

            tasks = [asyncio.ensure_future(down()), asyncio.ensure_future(up())]
            with contextlib.suppress(websockets.ConnectionClosed):
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


class TamperOnce:
    """Flip a byte in the Nth session-transport frame, and replay the Mth one."""

    def __init__(self, *, flip_at: int, replay_at: int) -> None:
        self.flip_at = flip_at
        self.replay_at = replay_at
        self.seen = 0
        self.flipped = False
        self.replayed = False

    def __call__(self, data: bytes) -> list[bytes]:
        frame = parse_frame(data)
        if frame.type is not FrameType.DATA or frame.body[:1] != bytes((Kind.SESSION_TRANSPORT,)):
            return [data]
        self.seen += 1
        if self.seen == self.flip_at:
            self.flipped = True
            body = bytearray(frame.body)
            body[-1] ^= 0x01
            return [encode_frame(FrameType.DATA, frame.peer, bytes(body))]
        if self.seen == self.replay_at:
            self.replayed = True
            return [data, data]
        return [data]
