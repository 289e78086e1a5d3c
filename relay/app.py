"""The Starlette application: ``/v1/ws``, ``/health``, ``/metrics``.

:func:`open_relay_state` does the start-up I/O (data dir, relay key, registry,
first registration token); :func:`create_app` wires routes around a state.

The first registration token is a secret: it goes to a 0600 file in the data
directory (removed once an account exists), never to stdout, where a journal or a
container log would keep it. ``/health`` is public and says only whether a routed
round trip worked; ``/metrics`` can move to its own listener and can require a
bearer token.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from starmux.home import ensure_private_dir, load_or_create_node_keys, write_private_file
from starmux.identity import NodeKeys, Role

from .config import RelayConfig
from .endpoint import websocket_endpoint
from .health import HealthProbe
from .requests import new_registration_token, token_hash
from .routing import LocalRoutingTable
from .sqlite_registry import SqliteRegistry
from .state import RelayState

log = logging.getLogger("starmux.relay")

RELAY_KEY_FILE = "relay.key"
REGISTRY_FILE = "registry.sqlite3"
REGISTRATION_TOKEN_FILE = "registration-token"


@dataclass(frozen=True)
class StartupInfo:
    fingerprint: str
    key_created: bool
    #: where the one-time registration token was written (0600); None if not needed
    registration_token_file: Path | None


async def open_relay_state(config: RelayConfig) -> tuple[RelayState, StartupInfo]:
    data_dir = ensure_private_dir(config.data_dir)
    keys, created = load_or_create_node_keys(data_dir / RELAY_KEY_FILE)
    registry = SqliteRegistry(data_dir / REGISTRY_FILE)
    await registry.open()
    state = RelayState(
        config=config,
        registry=registry,
        table=LocalRoutingTable(),
        keys=keys,
        card=keys.card(Role.RELAY, "starmux-relay"),
        # A fresh probe identity each start: it exists only inside this process.
        probe_keys=NodeKeys.generate(),
    )
    token_file = data_dir / REGISTRATION_TOKEN_FILE
    state.registration_token_file = token_file
    if not config.open_registration and not await registry.has_accounts():
        token = await issue_registration_token(state)
        write_private_file(token_file, token.encode() + b"\n")
        return state, StartupInfo(keys.fingerprint, created, token_file)
    token_file.unlink(missing_ok=True)  # spent: an account exists (or none is needed)
    return state, StartupInfo(keys.fingerprint, created, None)


async def issue_registration_token(state: RelayState) -> str:
    """A new one-time token; only its hash is stored."""
    token = new_registration_token()
    await state.registry.add_registration_token(token_hash(token), now=state.clock())
    await state.registry.audit(
        "registration-token.issued", actor=b"", subject=b"", detail="", now=state.clock()
    )
    return token


def metrics_endpoint(state: RelayState) -> Route:
    expected = f"Bearer {state.config.metrics_token}".encode()

    async def metrics(request: Request) -> Response:
        if state.config.metrics_token:
            supplied = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(supplied, expected):
                state.metrics.refused["metrics-token"] += 1
                return Response(
                    "a bearer token is required\n",
                    status_code=401,
                    headers={"WWW-Authenticate": 'Bearer realm="starmux-relay-metrics"'},
                )
        return Response(
            state.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    return Route("/metrics", metrics)


def create_metrics_app(state: RelayState) -> Starlette:
    """``/metrics`` alone, for its own listener (``metrics_port``)."""
    return Starlette(routes=[metrics_endpoint(state)])


def create_app(state: RelayState) -> Starlette:
    probe = HealthProbe(state)

    async def health(request: Request) -> Response:
        # Public: whether routing works and the relay's public key, nothing about
        # who is connected or why a probe failed (that goes to the log).
        healthy, detail, rtt = await probe.check()
        if not healthy:
            log.warning("health probe failed: %s", detail)
        body = {
            "ok": healthy,
            "detail": "ok" if healthy else "the routed round trip failed",
            "round_trip_ms": round(rtt * 1000, 3),
            "relay_fingerprint": state.keys.fingerprint,
        }
        return JSONResponse(body, status_code=200 if healthy else 503)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.relay = state
        try:
            yield
        finally:
            await state.registry.close()

    routes: list[Route | WebSocketRoute] = [
        WebSocketRoute("/v1/ws", websocket_endpoint),
        Route("/health", health),
    ]
    if state.config.metrics_port is None:
        routes.append(metrics_endpoint(state))
    return Starlette(routes=routes, lifespan=lifespan)
