"""Run the relay under uvicorn with the stack measured fastest, and stop it cleanly.

Stack: uvloop, the websockets-sansio protocol, per-message deflate **off**
(ciphertext does not compress, and deflate more than doubles memory per
connection). On SIGTERM/SIGINT every peer first gets a RESTARTING notice with a
jittered ``retry_after`` (so thousands of daemons do not reconnect in the same
millisecond), then uvicorn closes each socket with 1012.

Every accepted socket passes :class:`relay.admission.Admission` before any HTTP is
parsed (per-address cap and rate, a deadline until the WebSocket handshake). At
start the soft file-descriptor limit is raised to the hard one: each connection is
a descriptor, and the common soft default (1,024) would let a few hundred sockets
lock everyone out; under systemd raise the hard limit with ``LimitNOFILE=``.
An optional second listener serves ``/metrics`` alone (``metrics_port``), and a
third, answered by a thread, ``/livez`` alone (``livez_port``: relay/livez_listener.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import resource
import socket
import sys
import time
from collections.abc import Callable

import uvicorn
from starlette.applications import Starlette

from starmux.collector import settle_collector
from starmux.control import Notice, NoticeEvent
from starmux.frames import FrameType
from starmux.url_host import url_host

from .admission import Admission, guarded_protocols
from .app import StartupInfo, cluster_of, create_app, create_metrics_app, open_relay_state
from .config import RelayConfig
from .health import liveness
from .livez_listener import LivezListener
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


def raise_file_limit() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit; returns (soft, hard) afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if target == resource.RLIM_INFINITY:
        # Linux refuses an infinite soft limit for descriptors; fs.nr_open is the cap.
        target = 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("could not raise the file descriptor limit from %d: %s", soft, exc)
        return soft, hard
    return target, hard


class RelayServer(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        state: RelayState,
        on_listening: Callable[[str], None],
        metrics_config: uvicorn.Config | None = None,
        on_metrics_listening: Callable[[str], None] | None = None,
        on_livez_listening: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.relay_state = state
        self._on_listening = on_listening
        self._metrics_config = metrics_config
        self._on_metrics_listening = on_metrics_listening
        self._metrics_server: asyncio.Server | None = None
        self._on_livez_listening = on_livez_listening
        self._livez: LivezListener | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.should_exit or not self.servers:
            return
        if self._metrics_config is not None:
            await self._start_metrics_listener(self._metrics_config)
        if self.relay_state.config.livez_port is not None:
            await self._start_livez_listener()
        # With --port 0 the OS picks the port; clients (and /health) need the real one.
        port = self.servers[0].sockets[0].getsockname()[1]
        relay_config = self.relay_state.config
        self.relay_state.url = bound_url(relay_config, port)
        self._on_listening(self.relay_state.url)

    async def _start_metrics_listener(self, config: uvicorn.Config) -> None:
        if not config.loaded:
            config.load()

        def protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state={}
            )

        self._metrics_server = await asyncio.get_running_loop().create_server(
            protocol, host=config.host, port=config.port, backlog=64
        )
        port = self._metrics_server.sockets[0].getsockname()[1]
        host = url_host(config.host)
        if self._on_metrics_listening is not None:
            self._on_metrics_listening(f"http://{host}:{port}/metrics")

    async def _start_livez_listener(self) -> None:
        state = self.relay_state
        config = state.config
        assert config.livez_port is not None
        cluster = cluster_of(state)
        try:
            self._livez = LivezListener(
                config.livez_host, config.livez_port, lambda: liveness(state, cluster)
            )
        except OSError as exc:
            # As uvicorn does when the main port is taken: say why, and exit non-zero.
            log.error(  # noqa: TRY400 (the reason is the message; no traceback)
                "cannot listen for /livez on %s port %s: %s",
                config.livez_host,
                config.livez_port,
                exc.strerror or exc,
            )
            await self.lifespan.shutdown()
            sys.exit(1)
        self._livez.start(asyncio.get_running_loop())
        if self._on_livez_listening is not None:
            self._on_livez_listening(self._livez.url)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await announce_restart(self.relay_state)
        if self._metrics_server is not None:
            self._metrics_server.close()
        if self._livez is not None:
            await self._livez.close()
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


def uvicorn_config(
    config: RelayConfig, app: object, admission: Admission, *, fd: int | None = None
) -> uvicorn.Config:
    lim = config.limits
    http_protocol, ws_protocol = guarded_protocols(admission)
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=config.host,
        port=config.port,
        fd=fd,
        loop=_loop_name(),
        http=http_protocol,
        ws=ws_protocol,
        # X-Forwarded-For only from proxies named in trusted_proxies: uvicorn's own
        # default believes loopback, which would let anything on the host (or a
        # proxy that does not set the header) pick the address per-IP limits count.
        proxy_headers=bool(config.trusted_proxies),
        forwarded_allow_ips=list(config.trusted_proxies) or None,
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


def metrics_uvicorn_config(
    config: RelayConfig, app: Starlette, admission: Admission
) -> uvicorn.Config:
    http_protocol, _ = guarded_protocols(admission)
    assert config.metrics_port is not None
    return uvicorn.Config(
        app,
        host=config.metrics_host,
        port=config.metrics_port,
        http=http_protocol,
        ws="none",
        proxy_headers=False,
        log_level=config.log_level,
        access_log=False,
        lifespan="off",
    )


async def serve(
    config: RelayConfig,
    *,
    on_ready: Callable[[StartupInfo], None],
    on_listening: Callable[[str], None],
    on_metrics_listening: Callable[[str], None] | None = None,
    on_livez_listening: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> None:
    """Serve until stopped. ``clock`` (wall-clock seconds) times tickets, rate-limit
    windows and presence; tests pass one they move (tests/integration/relay_clock_host.py)."""
    soft, _ = raise_file_limit()
    log.info("file descriptor limit: %d", soft)
    state, info = await open_relay_state(config)
    state.clock = clock
    # Start-up objects (modules, the app) live for ever: keep the cycle collector off
    # them, and run it less often (what the hot path allocates is freed by refcount).
    settle_collector()
    on_ready(info)
    admission = Admission(config.limits, state.proxy_trust, state.metrics)
    app = create_app(state)
    metrics_config = None
    if config.metrics_port is not None:
        metrics_config = metrics_uvicorn_config(config, create_metrics_app(state), admission)
    server = RelayServer(
        uvicorn_config(config, app, admission),
        state,
        on_listening,
        metrics_config=metrics_config,
        on_metrics_listening=on_metrics_listening,
        on_livez_listening=on_livez_listening,
    )
    await server.serve()
