"""The Starlette application: ``/v1/ws``, ``/health``, ``/livez``, ``/metrics``, ``/app``.

:func:`open_relay_state` does the start-up I/O (data dir, relay key, registry,
first registration token); :func:`create_app` wires routes around a state.

The first registration token is a secret: it goes to a 0600 file in the data
directory (removed once an account exists), never to stdout, where a journal or a
container log would keep it. ``/health`` is public and says only whether a routed
round trip worked; ``/livez`` is the load balancer's cheap check (no I/O: the
loop answers, the node is not shutting down, its bus and registry are connected);
``/metrics`` can move to its own listener and can require a bearer token.

Two shapes, chosen by the config: the embedded relay (SQLite registry, an
in-process routing table) and a cluster node (``--registry postgresql://...``,
``--bus redis://...``): PostgreSQL registry and a :class:`ClusterRoutingTable`
over the bus. Everything after that (endpoint, requests, the registration token,
``/health`` and ``/metrics``) is one code path for both.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hmac
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from starmux.home import (
    encode_node_keys,
    ensure_private_dir,
    load_node_keys,
    load_or_create_node_keys,
    write_private_file,
)
from starmux.identity import NodeKeys, Role

from .config import RelayConfig
from .endpoint import websocket_endpoint
from .health import HealthProbe, liveness
from .registry import Registry
from .requests import new_registration_token, token_hash
from .routing import LocalRoutingTable, RoutingTable
from .sqlite_registry import SqliteRegistry
from .state import RelayState
from .web_app import web_app_routes
from .web_push import VAPID_KEY_FILE, WebPush

if TYPE_CHECKING:
    from .cluster_table import ClusterRoutingTable

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
    cluster_node: str | None = None  # this node's id on the bus, if clustered
    cluster_detail: str = ""  # where the registry and bus are (passwords redacted)


def load_or_create_shared_key(path: Path) -> tuple[NodeKeys, bool]:
    """The relay key at ``path`` (``--key-file``), created 0600 if missing.

    Every node of a cluster is given the same file, and several may start at once
    on a missing one: the new key is written to a temporary file and *linked* into
    place, which fails if another node got there first, and then that node's key
    is loaded. So all nodes end up with one key, never one each.
    """
    if path.exists() or path.is_symlink():
        return load_node_keys(path), False
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys = NodeKeys.generate()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:  # mkstemp made it 0600
            handle.write(encode_node_keys(keys))
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)
    except FileExistsError:
        return load_node_keys(path), False
    finally:
        os.unlink(tmp)
    return keys, True


def _open_parts(config: RelayConfig, data_dir: Path) -> tuple[Registry, RoutingTable]:
    if config.registry is None or config.bus is None:
        return SqliteRegistry(data_dir / REGISTRY_FILE), LocalRoutingTable()
    # Imported here: asyncpg and redis are the optional `cluster` extra.
    from .cluster_table import ClusterRoutingTable
    from .pg_registry import PostgresRegistry
    from .redis_bus import RedisBus

    registry = PostgresRegistry(config.registry, pool_size=config.registry_pool_size)
    return registry, ClusterRoutingTable(RedisBus(config.bus), registry)


def cluster_of(state: RelayState) -> ClusterRoutingTable | None:
    if not state.config.bus:
        return None
    from .cluster_table import ClusterRoutingTable  # only ever loaded by a cluster node

    return state.table if isinstance(state.table, ClusterRoutingTable) else None


async def open_relay_state(config: RelayConfig) -> tuple[RelayState, StartupInfo]:
    data_dir = ensure_private_dir(config.data_dir)
    if config.key_file is not None:
        keys, created = load_or_create_shared_key(config.key_file)
    else:
        keys, created = load_or_create_node_keys(data_dir / RELAY_KEY_FILE)
    registry, table = _open_parts(config, data_dir)
    await registry.open()
    # The VAPID key is made at first start, 0600, next to the relay's key (shared by
    # a cluster's nodes when given as --key-file).
    key_dir = config.key_file.parent if config.key_file is not None else data_dir
    push = WebPush(key_dir / VAPID_KEY_FILE)
    state = RelayState(
        config=config,
        registry=registry,
        table=table,
        keys=keys,
        card=keys.card(Role.RELAY, "starmux-relay"),
        # A fresh probe identity each start: it exists only inside this process.
        probe_keys=NodeKeys.generate(),
        push=push,
    )
    cluster = cluster_of(state)
    if cluster is not None:
        try:
            await cluster.start(state)
        except BaseException:
            await registry.close()
            raise
    info = StartupInfo(keys.fingerprint, created, None)
    if cluster is not None:
        from .pg_schema import redact_url

        where = f"registry {redact_url(config.registry or '')}, bus {redact_url(config.bus or '')}"
        info = StartupInfo(keys.fingerprint, created, None, cluster.bus.node_id, where)
    token_file = data_dir / REGISTRATION_TOKEN_FILE
    state.registration_token_file = token_file
    if not config.open_registration and not await registry.has_accounts():
        token = await issue_registration_token(state, first_only=cluster is not None)
        if token is not None:
            write_private_file(token_file, token.encode() + b"\n")
            return state, dataclasses.replace(info, registration_token_file=token_file)
        # Another node (or this one, earlier) holds the unused token: keep its file.
        return state, info
    token_file.unlink(missing_ok=True)  # spent: an account exists (or none is needed)
    return state, info


async def issue_registration_token(state: RelayState, *, first_only: bool = False) -> str | None:
    """A new one-time token; only its hash is stored.

    ``first_only`` (cluster nodes): only if no unused token exists yet, so that of
    the nodes starting on an empty registry exactly one writes a token file.
    """
    token = new_registration_token()
    if first_only:
        if not await state.registry.add_first_registration_token(
            token_hash(token), now=state.clock()
        ):
            return None
    else:
        await state.registry.add_registration_token(token_hash(token), now=state.clock())
    await state.registry.audit(
        "registration-token.issued", actor=b"", subject=b"", detail="", now=state.clock()
    )
    return token


class ClusterMetrics:
    """``/metrics`` families of a cluster node: can it reach the bus and registry?"""

    def __init__(self, cluster: ClusterRoutingTable) -> None:
        self._cluster = cluster

    def collect(self) -> Iterator[Metric]:
        cluster = self._cluster
        for name, doc, value in (
            ("bus_up", "1 if this node is connected to the cluster bus", cluster.bus.connected),
            ("registry_up", "1 if this node reaches the registry", cluster.registry_up),
            ("remote_peers", "Peers held by other nodes, as this node sees them",
             cluster.remote_count),
        ):  # fmt: skip
            yield GaugeMetricFamily(f"starmux_relay_cluster_{name}", doc, value=float(value))
        counters = cluster.bus.counters()
        yield GaugeMetricFamily(
            "starmux_relay_cluster_nodes", "Live nodes this node knows of (itself included)",
            value=counters.pop("nodes", 1),
        )  # fmt: skip
        family = CounterMetricFamily(
            "starmux_relay_cluster_bus_events", "Cluster bus events, by kind", labels=["event"]
        )
        for event, count in sorted(counters.items()):
            family.add_metric([event], count)
        family.add_metric(["revocations_applied"], cluster.revocations_applied)
        family.add_metric(["device_removals_applied"], cluster.device_removals_applied)
        yield family


def exposition(state: RelayState) -> bytes:
    cluster = cluster_of(state)
    if cluster is None:
        return state.metrics.exposition()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(state.metrics)
    registry.register(ClusterMetrics(cluster))
    return generate_latest(registry)


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
        return Response(exposition(state), media_type="text/plain; version=0.0.4; charset=utf-8")

    return Route("/metrics", metrics)


def create_metrics_app(state: RelayState) -> Starlette:
    """``/metrics`` alone, for its own listener (``metrics_port``)."""
    return Starlette(routes=[metrics_endpoint(state)])


def create_app(state: RelayState) -> Starlette:
    probe = HealthProbe(state)
    cluster = cluster_of(state)

    async def health(request: Request) -> Response:
        # Public: whether routing works and the relay's public key, nothing about
        # who is connected or why a probe failed (that goes to the log).
        healthy, detail, rtt = await probe.check()
        public = "the routed round trip failed"
        if healthy and cluster is not None:
            # A node cut off from the bus or registry cannot route to other nodes or
            # pair: 503, so the load balancer sends new connections elsewhere.
            healthy, public, detail = cluster.health()
        if not healthy:
            log.warning("health probe failed: %s", detail)
        body = {
            "ok": healthy,
            "detail": "ok" if healthy else public,
            "round_trip_ms": round(rtt * 1000, 3),
            "relay_fingerprint": state.keys.fingerprint,
        }
        return JSONResponse(body, status_code=200 if healthy else 503)

    async def livez(request: Request) -> Response:
        # For load balancers, checked every second: what /health proves with a full
        # authenticated round trip (crypto, a second connection), this reads from
        # flags the node keeps anyway. On a CPU-starved node /health took over a
        # second, and with `fall 2` the last surviving node was taken out.
        live, public = liveness(state, cluster)
        return JSONResponse({"ok": live, "detail": public}, status_code=200 if live else 503)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.relay = state
        try:
            yield
        finally:
            if cluster is not None:
                await cluster.close()
            if isinstance(state.push, WebPush):
                await state.push.close()
            await state.registry.close()

    async def vapid_public_key(request: Request) -> Response:
        # What a browser passes to pushManager.subscribe as applicationServerKey.
        assert isinstance(state.push, WebPush)
        key = base64.urlsafe_b64encode(state.push.public_key).rstrip(b"=").decode()
        return JSONResponse({"vapid_public_key": key})

    routes: list[BaseRoute] = [
        WebSocketRoute("/v1/ws", websocket_endpoint),
        Route("/health", health),
        Route("/livez", livez),
        Route("/v1/push/vapid-public-key", vapid_public_key),
        *web_app_routes(),
    ]
    if state.config.metrics_port is None:
        routes.append(metrics_endpoint(state))
    return Starlette(routes=routes, lifespan=lifespan)
