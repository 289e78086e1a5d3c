"""One authenticated connection as the router sees it: identity, queue, limits.

Invariants:
- :meth:`Peer.deliver` never blocks and never buffers without bound: past
  ``send_queue_frames`` queued frames, or ``send_queue_bytes`` queued bytes plus
  the socket's write buffer, the peer is closed as a slow consumer; every queued
  byte is also counted in the relay-wide :class:`~relay.send_budget.SendBudget`.
- A frame to a peer with nothing queued, nothing being sent and an empty socket
  buffer is written at once by whatever routes it (the sender's task, or the read
  of the sender's socket: relay/direct_frames.py); only a peer that is behind gets
  its frames queued for its writer task.
  Frames are sent in the order delivered either way.
- The writer task exists only once something was queued (idle connections, the
  vast majority, cost no task).
- After :meth:`Peer.close` nothing more is queued or sent except the close.
- After :meth:`Peer.cut_off` the peer is unreachable at once (no account, no
  ticket link): nothing queued before is sent, only the final notice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from time import perf_counter

from starlette.websockets import WebSocket

from starmux.close_codes import CloseCode
from starmux.control import SessionStatus

from .direct_frames import DirectFrames
from .metrics import RelayMetrics
from .ratelimit import FrameLimiter
from .send_budget import SendBudget

CLOSE_TIMEOUT = 1.0


class Peer:
    __slots__ = (
        "_close_after",
        "_close_task",
        "_sending",
        "_transport",
        "_wake",
        "_writer",
        "account",
        "budget",
        "card",
        "closed",
        "direct",
        "ip",
        "key",
        "limiter",
        "max_queue",
        "max_queue_bytes",
        "metrics",
        "on_close",
        "opened_ticket",
        "queue",
        "queued_bytes",
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
        max_queue_bytes: int,
        budget: SendBudget,
        direct: DirectFrames | None,
        limiter: FrameLimiter,
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
        self.max_queue_bytes = max_queue_bytes
        self.budget = budget
        # The protocol under websocket (None: another server, and every frame goes
        # through the writer task), to write without ASGI and read its buffer.
        self.direct = direct
        self._transport = direct.transport if direct is not None else None
        self.limiter = limiter  # frames and bytes per second this connection sends
        self.metrics = metrics
        self.on_close = on_close
        #: the peer key this connection may reach through an open pairing ticket
        self.ticket_peer: bytes | None = None
        #: the ticket this connection opened: only it may report failures on it
        self.opened_ticket: bytes | None = None
        self.queue: deque[tuple[bytes, float]] = deque()
        self.queued_bytes = 0
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._sending = False  # the writer task is inside a send
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
        size = len(data)
        queue = self.queue
        transport = self._transport
        # Read once: nothing runs between this check and the send below.
        buffered = transport.get_write_buffer_size() if transport is not None else 0
        if (
            len(queue) >= self.max_queue
            or self.queued_bytes + size + buffered > self.max_queue_bytes
        ):
            self.metrics.drops["slow-consumer"] += 1
            self.close(CloseCode.SLOW_CONSUMER, "send queue full")
            return False
        # Written now if the socket takes it at once (relay/direct_frames.py); else
        # queued. Waking the writer task instead would send it one loop turn later,
        # after every other frame read in this turn: at thousands of frames per second
        # that wait is most of the relay's tail latency. (Inline, not a method: this
        # runs once per routed frame.)
        direct = self.direct
        if (
            not buffered
            and not queue
            and not self._sending
            and data
            and direct is not None
            and direct.send_now(data)
        ):
            self.metrics.latency.observe(perf_counter() - received_at)
            return True
        queue.append((data, received_at))
        self.queued_bytes += size
        self.budget.added(self, size)  # may shed this very peer
        if self.closed:
            return False
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())
        else:
            self._wake.set()
        return True

    def _write_buffer(self) -> int:
        transport = self._transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def buffered_bytes(self) -> int:
        return self.queued_bytes + self._write_buffer()

    def shed(self) -> None:
        """The relay is over its send budget and this queue is among the biggest."""
        self.metrics.drops["memory-budget"] += 1
        self.close(CloseCode.SLOW_CONSUMER, "relay send budget exceeded")

    def _clear_queue(self) -> None:
        self.queue.clear()
        size, self.queued_bytes = self.queued_bytes, 0
        self.budget.removed(self, size)  # also when 0: the budget must forget this peer

    async def _write_loop(self) -> None:
        queue = self.queue
        send = self.websocket.send_bytes
        latency = self.metrics.latency
        budget = self.budget
        clock = perf_counter
        while not self.closed:
            while queue:
                data, received_at = queue.popleft()
                self.queued_bytes -= len(data)
                budget.removed(self, len(data))
                if not data:
                    code, reason = self._close_after or (CloseCode.PROTOCOL_ERROR, "")
                    self._writer = None  # close() must not cancel the task running it
                    self.close(code, reason)
                    return
                self._sending = True
                try:
                    await send(data)
                finally:
                    self._sending = False
                latency.observe(clock() - received_at)
            self._wake.clear()
            await self._wake.wait()

    def close_after_flush(self, code: CloseCode, reason: str) -> None:
        """Send what is queued (e.g. a notice), then close with ``code``."""
        self.deliver(b"", perf_counter())  # b"" is the in-band close marker
        self._close_after = (code, reason)

    def cut_off(self, final: bytes, code: CloseCode, reason: str, *, then: bytes = b"") -> None:
        """Unroutable now (revoked): drop what is queued, send ``final``, then close.

        The caller has taken it out of the routing table; here it leaves its account
        (so :func:`relay.routing.may_route` refuses it either way), its queue is
        dropped, and a peer that does not read is closed after ``CLOSE_TIMEOUT``
        without its final frame."""
        if self.closed:
            return
        self.on_close = _detached
        self.account = b""
        self.status = SessionStatus.UNPAIRED
        self.ticket_peer = None
        self._clear_queue()
        self.deliver(final, perf_counter())
        if then:  # e.g. the signed revocation after the notice
            self.deliver(then, perf_counter())
        self.close_after_flush(code, reason)
        asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self.close, code, reason)

    def close(self, code: CloseCode, reason: str) -> None:
        """Stop routing to this peer now and close its socket in the background."""
        if self.closed:
            return
        self.closed = True
        self._clear_queue()
        self.metrics.closes[int(code)] += 1
        if self._writer is not None:
            self._writer.cancel()
        self.on_close(self)
        self._close_task = asyncio.get_running_loop().create_task(self._send_close(code, reason))

    async def _send_close(self, code: CloseCode, reason: str) -> None:
        # A stalled reader keeps the socket unwritable; then the close cannot be sent,
        # and waiting for the keepalive would hold its write buffer and its file
        # descriptor for another ping_interval + ping_timeout: drop it now.
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.websocket.close(int(code), reason)
        except Exception:
            if self._transport is not None:
                self._transport.abort()

    def close_silently(self) -> None:
        """The socket is already gone: stop routing to it without sending a close."""
        if not self.closed:
            self.closed = True
            self._clear_queue()
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


def _detached(peer: Peer) -> None:
    """The on_close of a peer already out of the routing table."""
