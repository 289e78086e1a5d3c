"""The Starlette application: ``/v1/ws``, ``/health``, ``/metrics``.

:func:`open_relay_state` does the start-up I/O (data dir, relay key, registry,
first registration token); :func:`create_app` wires routes around a state.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from starmux.home import ensure_private_dir, load_or_create_node_keys
from starmux.identity import NodeKeys, Role

from .config import RelayConfig
from .endpoint import websocket_endpoint
from .health import HealthProbe
from .requests import token_hash
from .routing import LocalRoutingTable
from .sqlite_registry import SqliteRegistry
from .state import RelayState

log = logging.getLogger("starmux.relay")

RELAY_KEY_FILE = "relay.key"
REGISTRY_FILE = "registry.sqlite3"


@dataclass(frozen=True)
class StartupInfo:
    fingerprint: str
    key_created: bool
    registration_token: str | None  # printed once; None if not needed


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
    token = None
    if not config.open_registration and not await registry.has_accounts():
        token = await issue_registration_token(state)
    return state, StartupInfo(keys.fingerprint, created, token)


async def issue_registration_token(state: RelayState) -> str:
    """A new one-time token; only its hash is stored."""
    token = secrets.token_urlsafe(18)
    await state.registry.add_registration_token(token_hash(token), now=state.clock())
    await state.registry.audit(
        "registration-token.issued", actor=b"", subject=b"", detail="", now=state.clock()
    )
    return token


def create_app(state: RelayState) -> Starlette:
    probe = HealthProbe(state)

    async def health(request: Request) -> Response:
        healthy, detail, rtt = await probe.check()
        body = {
            "ok": healthy,
            "detail": detail,
            "round_trip_ms": round(rtt * 1000, 3),
            "relay_fingerprint": state.keys.fingerprint,
            "connections": len(state.table),
        }
        return JSONResponse(body, status_code=200 if healthy else 503)

    async def metrics(request: Request) -> Response:
        return Response(
            state.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.relay = state
        try:
            yield
        finally:
            await state.registry.close()

    return Starlette(
        routes=[
            WebSocketRoute("/v1/ws", websocket_endpoint),
            Route("/health", health),
            Route("/metrics", metrics),
        ],
        lifespan=lifespan,
    )
