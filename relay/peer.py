"""One authenticated connection as the router sees it: identity, queue, limits.

Invariants:
- :meth:`Peer.deliver` never blocks and never buffers without bound: past
  ``send_queue_frames`` queued frames the peer is closed as a slow consumer.
- The writer task exists only once something was delivered (idle connections,
  the vast majority, cost no task).
- After :meth:`Peer.close` nothing more is queued or sent except the close.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable

from starlette.websockets import WebSocket

from starmux.close_codes import CloseCode
from starmux.control import SessionStatus

from .metrics import RelayMetrics

CLOSE_TIMEOUT = 1.0


class TokenBucket:
    """Classic token bucket; ``take`` is O(1) and reads a monotonic clock."""

    __slots__ = ("capacity", "last", "rate", "tokens")

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.last = time.monotonic()

    def take(self, amount: float, now: float) -> bool:
        elapsed = now - self.last
        if elapsed > 0:
            self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
            self.last = now
        if self.tokens < amount:
            return False
        self.tokens -= amount
        return True


class Peer:
    __slots__ = (
        "_close_after",
        "_close_task",
        "_wake",
        "_writer",
        "account",
        "bytes_",
        "card",
        "closed",
        "frames",
        "ip",
        "key",
        "max_queue",
        "metrics",
        "on_close",
        "queue",
        "status",
        "ticket_peer",
        "websocket",
    )

    def __init__(
        self,
        websocket: WebSocket,
        *,
        key: bytes,
        card: bytes,
        status: SessionStatus,
        account: bytes,
        ip: str,
        max_queue: int,
        frames: TokenBucket,
        bytes_: TokenBucket,
        metrics: RelayMetrics,
        on_close: Callable[[Peer], None],
    ) -> None:
        self.websocket = websocket
        self.key = key
        self.card = card  # the encoded, verified identity card
        self.status = status
        self.account = account
        self.ip = ip
        self.max_queue = max_queue
        self.frames = frames
        self.bytes_ = bytes_
        self.metrics = metrics
        self.on_close = on_close
        #: the peer key this connection may reach through an open pairing ticket
        self.ticket_peer: bytes | None = None
        self.queue: deque[tuple[bytes, float]] = deque()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self.closed = False
        self._close_after: tuple[CloseCode, str] | None = None
        self._close_task: asyncio.Task[None] | None = None

    @property
    def is_controller(self) -> bool:
        return self.status is SessionStatus.CONTROLLER

    def deliver(self, data: bytes, received_at: float) -> bool:
        """Queue ``data`` for sending; False (and the peer closed) if it cannot keep up."""
        if self.closed:
            return False
        if len(self.queue) >= self.max_queue:
            self.metrics.drops["slow-consumer"] += 1
            self.close(CloseCode.SLOW_CONSUMER, "send queue full")
            return False
        self.queue.append((data, received_at))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())
        else:
            self._wake.set()
        return True

    async def _write_loop(self) -> None:
        queue = self.queue
        send = self.websocket.send_bytes
        latency = self.metrics.latency
        clock = time.perf_counter
        while not self.closed:
            while queue:
                data, received_at = queue.popleft()
                if not data:
                    code, reason = self._close_after or (CloseCode.PROTOCOL_ERROR, "")
                    self._writer = None  # close() must not cancel the task running it
                    self.close(code, reason)
                    return
                await send(data)
                latency.observe(clock() - received_at)
            self._wake.clear()
            await self._wake.wait()

    def close_after_flush(self, code: CloseCode, reason: str) -> None:
        """Send what is queued (e.g. a notice), then close with ``code``."""
        self.deliver(b"", time.perf_counter())  # b"" is the in-band close marker
        self._close_after = (code, reason)

    def close(self, code: CloseCode, reason: str) -> None:
        """Stop routing to this peer now and close its socket in the background."""
        if self.closed:
            return
        self.closed = True
        self.queue.clear()
        self.metrics.closes[int(code)] += 1
        if self._writer is not None:
            self._writer.cancel()
        self.on_close(self)
        self._close_task = asyncio.get_running_loop().create_task(self._send_close(code, reason))

    async def _send_close(self, code: CloseCode, reason: str) -> None:
        # A stalled reader keeps the socket unwritable; then the close cannot be sent
        # and the WebSocket keepalive (ping timeout) tears the transport down.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.websocket.close(int(code), reason)

    def close_silently(self) -> None:
        """The socket is already gone: stop routing to it without sending a close."""
        if not self.closed:
            self.closed = True
            self.queue.clear()
            self.on_close(self)

    async def finish(self) -> None:
        """Called when the connection's reader ends: stop the writer."""
        self.closed = True
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(BaseException):
                await self._writer
        if self._close_task is not None:
            with contextlib.suppress(BaseException):
                await self._close_task
