"""relay/direct_frames.py on a real uvicorn server and socket: which frames are
offered to the router as they are read, which wait for the connection's task, and
in what order.

The ASGI app here does what the relay's endpoint does with the protocol (route
what it can, handle the rest in its task, one message at a time), with a handler
the test holds open, so "a frame read while the task is busy" happens on cue
rather than by the luck of timing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
import websockets
from starlette.websockets import WebSocket

from starmux.relay.addresses import ProxyTrust
from starmux.relay.admission import Admission, guarded_protocols
from starmux.relay.config import Limits
from starmux.relay.direct_frames import DIRECT_EXTENSION, DirectFrames
from starmux.relay.metrics import RelayMetrics

from ..timeouts import scaled


@dataclass
class Router:
    """Declines frames that start with ``slow``; raises on ``boom``."""

    direct: DirectFrames | None = None
    #: (frame, True if offered as the socket was read, False if by the task)
    offers: asyncio.Queue[tuple[bytes, bool]] = field(default_factory=asyncio.Queue)
    handling: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    sent_after_close: list[bool] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def route(self, data: bytes) -> bool:
        assert self.direct is not None
        self.offers.put_nowait((bytes(data), self.direct.on_frame is not None))
        if data == b"boom":
            raise RuntimeError("a bug in the router")
        if data.startswith(b"echo"):
            assert self.direct.send_now(data)
        return not data.startswith(b"slow")

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        websocket = WebSocket(scope, receive, send)
        await websocket.accept()
        self.direct = scope["extensions"][DIRECT_EXTENSION]
        assert self.direct is not None
        while True:
            message = await self.direct.receive_routing(self.route)
            if message["type"] == "websocket.disconnect":
                self.sent_after_close.append(self.direct.send_now(b"late"))
                self.closed.set()
                return
            if self.route(message["bytes"]):
                continue
            self.handling.set()  # a declined frame: a slow request, say
            await self.release.wait()
            self.release.clear()


@contextlib.asynccontextmanager
async def serving(router: Router) -> AsyncIterator[str]:
    limits = Limits()
    admission = Admission(limits, ProxyTrust(()), RelayMetrics())
    http, ws = guarded_protocols(admission)
    config = uvicorn.Config(
        router.app,
        host="127.0.0.1",
        port=0,
        http=http,
        ws=ws,
        interface="asgi3",
        lifespan="off",
        log_level="critical",
        ws_per_message_deflate=False,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(scaled(10)):
            while not server.started:  # noqa: ASYNC110 - uvicorn has no event for it
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        await task


async def _offer(router: Router) -> tuple[bytes, bool]:
    return await asyncio.wait_for(router.offers.get(), scaled(10))


async def _all_read(client: websockets.ClientConnection) -> None:
    """Once the pong is back, the server has parsed everything sent before the ping."""
    await asyncio.wait_for(await client.ping(), scaled(10))


async def test_frames_are_offered_as_read_only_while_the_task_waits() -> None:
    router = Router()
    async with serving(router) as url, websockets.connect(url, compression=None) as client:
        await client.send(b"fast-1")
        assert await _offer(router) == (b"fast-1", True)
        # Declined as read: queued, then the task gets it (and asks again).
        await client.send(b"slow-1")
        assert await _offer(router) == (b"slow-1", True)
        assert await _offer(router) == (b"slow-1", False)
        await asyncio.wait_for(router.handling.wait(), scaled(10))
        # While the task is busy, frames read wait for it, in order.
        await client.send(b"fast-2")
        await client.send(b"fast-3")
        await _all_read(client)
        assert router.offers.empty()
        router.release.set()
        assert await _offer(router) == (b"fast-2", False)
        assert await _offer(router) == (b"fast-3", False)
        # The queue drained: offered as read again, and written back at once.
        await client.send(b"echo-4")
        assert await _offer(router) == (b"echo-4", True)
        assert await asyncio.wait_for(client.recv(), scaled(10)) == b"echo-4"
        # A frame behind a declined one in the same read is queued behind it (and
        # uvicorn reads no more until the task has taken both).
        router.handling.clear()
        client.protocol.send_binary(b"slow-2")
        client.protocol.send_binary(b"fast-5")
        client.transport.writelines(client.protocol.data_to_send())
        assert await _offer(router) == (b"slow-2", True)
        assert await _offer(router) == (b"slow-2", False)
        await asyncio.wait_for(router.handling.wait(), scaled(10))
        router.release.set()
        assert await _offer(router) == (b"fast-5", False)
    # After the close, nothing is written.
    await asyncio.wait_for(router.closed.wait(), scaled(10))
    assert router.sent_after_close == [False]


async def test_a_router_that_raises_ends_only_its_connection() -> None:
    router = Router()
    async with serving(router) as url:
        async with websockets.connect(url, compression=None) as client:
            await client.send(b"boom")
            assert await _offer(router) == (b"boom", True)
            with pytest.raises(websockets.ConnectionClosedError):
                await asyncio.wait_for(client.recv(), scaled(10))
        async with websockets.connect(url, compression=None) as other:
            await other.send(b"echo")
            assert await asyncio.wait_for(other.recv(), scaled(10)) == b"echo"
