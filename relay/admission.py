"""Raw sockets, before any HTTP is parsed: a per-address cap, a rate, a deadline.

A client that opens sockets and sends half an upgrade request (slowloris) holds a
file descriptor each for as long as the server waits. Limits that apply after the
WebSocket upgrade never see those sockets. So every accepted TCP connection goes
through :class:`Admission` first:

- **cap**: at most ``connections_per_ip`` open sockets per address bucket (IPv6:
  per /64), HTTP and WebSocket alike; one over gets a fixed ``429`` and is dropped
  within ``REFUSAL_LINGER``, its input never parsed (clients see a refused upgrade
  and back off).
- **rate**: at most ``connection_rate_per_ip`` new sockets per second per bucket
  (burst ``connection_burst_per_ip``); over it, the same.
- **deadline**: a socket that has not completed its WebSocket handshake
  ``upgrade_timeout`` seconds after accept is dropped (plain HTTP requests such as
  ``/health`` are served well within it).

Sockets from a trusted proxy are exempt from the cap and the rate (the proxy
carries many clients; the endpoint counts those by X-Forwarded-For) but not from
the deadline.

The hooks are two subclasses of uvicorn's protocols (:func:`guarded_protocols`):
the HTTP one sees accept, and the WebSocket one, which takes the same transport
over at the upgrade, sees the final close. The endpoint reports the handshake
complete (a callable in the ASGI scope, called right after ``accept``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from uvicorn.protocols.http.h11_impl import H11Protocol
from websockets.http11 import Request

from .addresses import ProxyTrust, ip_bucket
from .config import Limits
from .direct_frames import DirectFrames
from .metrics import RelayMetrics
from .ratelimit import KeyedBuckets

#: the ASGI scope extension the endpoint calls once the WebSocket is accepted
UPGRADED_EXTENSION = "starmux.upgraded"
#: the whole answer to a socket over a limit: it fits any socket buffer
REFUSAL = (
    b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\nConnection: close\r\n"
    b"Retry-After: 1\r\n\r\n"
)
#: how long a refused socket may linger after its 429 (so the answer is read, not
#: lost to the reset a close with unread input causes); bounded by the rate limit
REFUSAL_LINGER = 0.5


class _Refused(asyncio.Protocol):
    """A socket over a limit: answer 429, half-close, discard input, drop soon."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        transport.write(REFUSAL)
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(REFUSAL_LINGER, transport.abort)

    def data_received(self, data: bytes) -> None:
        pass  # never parsed

    def eof_received(self) -> bool:
        return False  # the client read the answer and closed: close too

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()


class Admission:
    def __init__(self, limits: Limits, trust: ProxyTrust, metrics: RelayMetrics) -> None:
        self.max_per_ip = limits.connections_per_ip
        self.upgrade_timeout = limits.upgrade_timeout
        self.trust = trust
        self.metrics = metrics
        self.rate = KeyedBuckets(limits.connection_rate_per_ip, limits.connection_burst_per_ip)
        self.per_ip: dict[str, int] = {}
        #: admitted transport → its address bucket ("" when exempt)
        self._open: dict[asyncio.BaseTransport, str] = {}
        self._deadlines: dict[asyncio.BaseTransport, asyncio.TimerHandle] = {}
        metrics.open_sockets = lambda: len(self._open)

    def admit(self, transport: asyncio.BaseTransport) -> bool:
        """Count a freshly accepted socket, or drop it; False if dropped."""
        peer = transport.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        bucket = "" if self.trust.trusts(host) else ip_bucket(host)
        if bucket:
            if self.per_ip.get(bucket, 0) >= self.max_per_ip:
                return self._refuse(transport, "sockets-per-ip")
            if not self.rate.take(bucket, time.monotonic()):
                return self._refuse(transport, "connection-rate")
            self.per_ip[bucket] = self.per_ip.get(bucket, 0) + 1
        self._open[transport] = bucket
        self._deadlines[transport] = asyncio.get_running_loop().call_later(
            self.upgrade_timeout, self._expire, transport
        )
        return True

    def upgraded(self, transport: asyncio.BaseTransport) -> None:
        """The WebSocket handshake completed: from here the endpoint's timeouts apply."""
        deadline = self._deadlines.pop(transport, None)
        if deadline is not None:
            deadline.cancel()

    def released(self, transport: asyncio.BaseTransport) -> None:
        """The socket is gone (whichever protocol held it last)."""
        self.upgraded(transport)
        bucket = self._open.pop(transport, None)
        if bucket:
            remaining = self.per_ip[bucket] - 1
            if remaining:
                self.per_ip[bucket] = remaining
            else:
                del self.per_ip[bucket]

    def _refuse(self, transport: asyncio.BaseTransport, limit: str) -> bool:
        self.metrics.refused[limit] += 1
        refused = _Refused()
        transport.set_protocol(refused)
        refused.connection_made(transport)
        return False

    def _expire(self, transport: asyncio.BaseTransport) -> None:
        self._deadlines.pop(transport, None)
        self.metrics.refused["upgrade-timeout"] += 1
        transport.abort()  # type: ignore[attr-defined]


def guarded_protocols(
    admission: Admission,
) -> tuple[type[H11Protocol], type[DirectFrames]]:
    """uvicorn's HTTP and WebSocket protocols, reporting to ``admission``; the
    WebSocket one also routes frames directly (:mod:`relay.direct_frames`)."""

    class GuardedHTTP(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            # Decided before uvicorn sees the socket: a refused one never reaches h11.
            if admission.admit(transport):
                super().connection_made(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            admission.released(self.transport)
            super().connection_lost(exc)

    class GuardedWebSocket(DirectFrames):
        def handle_connect(self, event: Request) -> None:
            super().handle_connect(event)
            if hasattr(self, "scope"):
                extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
                transport = self.transport
                extensions[UPGRADED_EXTENSION] = lambda: admission.upgraded(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            admission.released(self.transport)
            super().connection_lost(exc)

    return GuardedHTTP, GuardedWebSocket
