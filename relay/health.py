"""``GET /health``: a real round trip through the relay's own WebSocket routing;
``GET /livez``: the cheap check for load balancers (:func:`liveness`).

The relay keeps a probe identity. A health check connects to its own listening
socket, authenticates like any node (pinning the relay's key), sends a DATA frame
addressed to itself with a random marker and waits for it to come back through
:func:`relay.routing.may_route` and a send queue. Only then is the relay healthy.
Results are cached for a second, and one probe runs at a time, so hammering
``/health`` cannot multiply connections.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Protocol

import nacl.utils
import websockets

from starmux.frames import FrameType, encode_frame, parse_frame
from starmux.identity import Role
from starmux.relay_auth import NodeAuth

from .state import RelayState

CACHE_SECONDS = 1.0
PROBE_TIMEOUT = 5.0


class HealthProbe:
    def __init__(self, state: RelayState) -> None:
        self._state = state
        self._card = state.probe_keys.card(Role.CONTROLLER, "health-probe")
        self._lock = asyncio.Lock()
        self._last: tuple[float, bool, str, float] | None = None

    async def check(self) -> tuple[bool, str, float]:
        """Returns (healthy, detail, round-trip seconds)."""
        async with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last[0] < CACHE_SECONDS:
                return self._last[1:]
            healthy, detail, rtt = await self._probe()
            self._last = (time.monotonic(), healthy, detail, rtt)
            return healthy, detail, rtt

    @property
    def _url(self) -> str:
        return self._state.url.rstrip("/") + "/v1/ws"

    async def _probe(self) -> tuple[bool, str, float]:
        start = time.perf_counter()
        ssl_context = None
        if self._url.startswith("wss://"):
            # Talking to ourselves over loopback: the relay key pin below is the check.
            ssl_context = ssl.create_default_context()
            ssl_context.check_hostname = False
            ssl_context.verify_mode = ssl.CERT_NONE
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                async with websockets.connect(
                    self._url, compression=None, ssl=ssl_context, open_timeout=PROBE_TIMEOUT
                ) as ws:
                    auth = NodeAuth(
                        self._state.probe_keys,
                        self._card,
                        pinned_relay_key=self._state.keys.sign_public,
                    )
                    await ws.send(auth.receive_challenge(parse_frame(await _binary(ws))))
                    auth.receive_welcome(parse_frame(await _binary(ws)))
                    marker = nacl.utils.random(16)
                    me = self._state.probe_keys.sign_public
                    await ws.send(encode_frame(FrameType.DATA, me, marker))
                    echoed = parse_frame(await _binary(ws))
                    if echoed.type is not FrameType.DATA or echoed.body != marker:
                        return False, "routed frame did not come back intact", 0.0
        except Exception as exc:  # any failure is "unhealthy"; say which
            return False, f"round trip failed: {type(exc).__name__}: {exc}"[:200], 0.0
        return True, "ok", time.perf_counter() - start


class ClusterHealth(Protocol):
    def health(self) -> tuple[bool, str, str]: ...


def liveness(state: RelayState, cluster: ClusterHealth | None) -> tuple[bool, str]:
    """(live, what ``/livez`` may say publicly). No I/O, no crypto: answered means the
    event loop runs; then a node that is shutting down (it refuses new connections
    with RESTARTING) or lost its bus or registry (the flags the bus supervisor and
    the registry watch keep) is not live, so the balancer sends clients elsewhere."""
    if state.shutting_down:
        return False, "this node is shutting down"
    if cluster is not None:
        healthy, public, _ = cluster.health()
        return healthy, "ok" if healthy else public
    return True, "ok"


async def _binary(ws: websockets.ClientConnection) -> bytes:
    data = await ws.recv()
    if isinstance(data, str):
        raise TypeError("text frame from relay")
    return data
