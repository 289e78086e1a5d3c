"""Routed frames straight from and to uvicorn's WebSocket protocol.

Through ASGI, every frame a connection sends is queued for the connection's task
(``asyncio.Queue``: a put, a wake-up, a get; uvicorn also pauses reading the socket
at each queued message and resumes it when the queue drains) and then climbs
Starlette's ``receive``; every frame sent goes down Starlette's ``send``, its error
wrapper and uvicorn's ``send``, one coroutine each. For the relay's hot path, a DATA
frame routed to a peer that keeps up, that is most of the work per frame besides
the socket's own. So the endpoint may hand the protocol a router
(:attr:`DirectFrames.on_frame`) while its task waits for the next message: a
complete binary message that arrives then is offered to it as the socket is read,
before any queueing, and anything it declines (requests, malformed frames, frames
over the size limit: the endpoint's task handles those, and closes for them) takes
the ASGI path as before. Frames are offered only while the task waits in
:meth:`DirectFrames.receive_routing` and only when nothing is queued ahead of them,
so they are still handled in the order they were sent.
:meth:`DirectFrames.send_now` writes one binary message at once if the connection
is open and its writes are not paused; else it sends nothing and says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, cast

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.frames import Frame
from websockets.http11 import Request

log = logging.getLogger("starmux.relay")

#: the ASGI scope extension carrying the connection's :class:`DirectFrames`
DIRECT_EXTENSION = "starmux.direct"


class DirectFrames(WebSocketsSansIOProtocol):
    #: set only during receive_routing
    on_frame: Callable[[bytes], bool] | None = None

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if hasattr(self, "scope"):  # not there if uvicorn refused the request
            extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
            extensions[DIRECT_EXTENSION] = self

    async def receive_routing(self, route: Callable[[bytes], bool]) -> dict[str, Any]:
        """The connection's next ASGI message; meanwhile every complete binary
        message read with nothing queued ahead of it is offered to ``route`` first,
        which returns True if it handled it (routed, refused or dropped) and False to
        have it queued, and so returned here, instead."""
        self.on_frame = route
        try:
            return cast(dict[str, Any], await self.receive())  # as Starlette's receive types it
        finally:
            self.on_frame = None

    def handle_bytes(self, event: Frame) -> None:
        on_frame = self.on_frame
        if on_frame is not None and event.fin and not self.close_sent and self.queue.empty():
            try:
                if on_frame(event.data):  # type: ignore[arg-type] # bytes, as parsed
                    return
            except Exception:
                # The task's own path would have ended the connection on this too.
                log.exception("routing a frame failed; closing the connection")
                self.on_frame = None
                self.transport.abort()
                return
        super().handle_bytes(event)

    def send_now(self, data: bytes) -> bool:
        """Write ``data`` as one binary message now; False (nothing sent) if it cannot."""
        if self.close_sent or self.disconnected or not self.writable.is_set():
            return False
        try:
            self.conn.send_binary(data)
        except InvalidState:
            return False
        self.transport.write(b"".join(self.conn.data_to_send()))
        return True
