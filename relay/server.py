"""Run the relay under uvicorn with the stack measured fastest, and stop it cleanly.

Stack: uvloop, the websockets-sansio protocol, per-message deflate **off**
(ciphertext does not compress, and deflate more than doubles memory per
connection). On SIGTERM/SIGINT every peer first gets a RESTARTING notice with a
jittered ``retry_after`` (so thousands of daemons do not reconnect in the same
millisecond), then uvicorn closes each socket with 1012.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import random
import socket
import time
from collections.abc import Callable

import uvicorn

from starmux.control import Notice, NoticeEvent
from starmux.frames import FrameType

from .app import StartupInfo, create_app, open_relay_state
from .config import RelayConfig
from .requests import send_control
from .state import RelayState

log = logging.getLogger("starmux.relay")

#: Reconnections per second we ask clients to spread themselves over, at most.
RECONNECT_RATE = 1000.0
NOTICE_FLUSH_TIMEOUT = 1.0


def _loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover - only on platforms without uvloop
        return "asyncio"
    return "uvloop"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop where it exists. :func:`serve` runs inside the caller's loop, so
    the caller must create it this way: uvicorn's ``loop=`` only applies to
    ``Server.run``, which we do not use (we need the bound port and our shutdown)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


class RelayServer(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, state: RelayState, on_listening: Callable[[str], None]
    ) -> None:
        super().__init__(config)
        self.relay_state = state
        self._on_listening = on_listening

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.should_exit or not self.servers:
            return
        # With --port 0 the OS picks the port; clients (and /health) need the real one.
        port = self.servers[0].sockets[0].getsockname()[1]
        relay_config = self.relay_state.config
        self.relay_state.url = bound_url(relay_config, port)
        self._on_listening(self.relay_state.url)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await announce_restart(self.relay_state)
        await super().shutdown(sockets)


async def announce_restart(state: RelayState) -> None:
    """Tell every peer to come back after a random share of the reconnect window."""
    state.shutting_down = True
    peers = state.table.peers()
    window = max(1.0, len(peers) / RECONNECT_RATE)
    for peer in peers:
        send_control(
            peer,
            FrameType.NOTICE,
            Notice(NoticeEvent.RESTARTING, b"", b"", random.uniform(0, window)),  # noqa: S311 (jitter, not a secret)
        )
    deadline = time.monotonic() + NOTICE_FLUSH_TIMEOUT
    # Polling is fine here: it runs once per shutdown, for at most a second.
    while time.monotonic() < deadline and any(p.queue for p in peers):  # noqa: ASYNC110
        await asyncio.sleep(0.02)


def uvicorn_config(config: RelayConfig, app: object, *, fd: int | None = None) -> uvicorn.Config:
    lim = config.limits
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=config.host,
        port=config.port,
        fd=fd,
        loop=_loop_name(),
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        # Our own check answers oversize frames with 1009 and counts them; this cap is
        # the protocol layer's backstop so it never buffers a huge message first.
        ws_max_size=lim.max_frame_size + 1024,
        ws_ping_interval=lim.ping_interval,
        ws_ping_timeout=lim.ping_timeout,
        ssl_certfile=str(config.tls_cert) if config.tls_cert else None,
        ssl_keyfile=str(config.tls_key) if config.tls_key else None,
        log_level=config.log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
        backlog=4096,
    )


def bound_url(config: RelayConfig, port: int) -> str:
    if config.public_url:
        return config.public_url
    return dataclasses.replace(config, port=port).url


async def serve(
    config: RelayConfig,
    *,
    on_ready: Callable[[StartupInfo], None],
    on_listening: Callable[[str], None],
) -> None:
    state, info = await open_relay_state(config)
    # Start-up objects (modules, the app) live for ever: keep the cycle collector off
    # them, and run it less often (what the hot path allocates is freed by refcount).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    on_ready(info)
    app = create_app(state)
    server = RelayServer(uvicorn_config(config, app), state, on_listening)
    await server.serve()
