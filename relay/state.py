"""Everything one relay process shares between connections."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from starmux.identity import IdentityCard, NodeKeys

from .addresses import ProxyTrust
from .config import RelayConfig
from .metrics import RelayMetrics
from .ratelimit import KeyedBuckets, WindowCounter
from .registry import Registry
from .routing import RoutingTable
from .send_budget import SendBudget
from .verified_logs import VerifiedLogs


@dataclass
class RelayState:
    config: RelayConfig
    registry: Registry
    table: RoutingTable
    keys: NodeKeys
    card: IdentityCard
    probe_keys: NodeKeys
    metrics: RelayMetrics = field(default_factory=RelayMetrics)
    clock: Callable[[], float] = time.time
    #: authenticated WebSocket connections per client address bucket (after any
    #: trusted proxy's X-Forwarded-For); raw sockets are counted in relay.admission
    connections_per_ip: dict[str, int] = field(default_factory=dict)
    shutting_down: bool = False
    url: str = ""  # where this relay listens, known once bound
    #: the one-time registration token's file, removed once an account exists
    registration_token_file: Path | None = None
    #: Web Push (relay.web_push.WebPush), set up by the app; typed loosely so this
    #: module does not import pywebpush's dependencies
    push: object = None
    #: device logs verified from the registry's rows (relay/verified_logs.py)
    verified_logs: VerifiedLogs = field(default_factory=VerifiedLogs)

    def __post_init__(self) -> None:
        lim = self.config.limits
        self.pairing_by_key = WindowCounter(lim.pairing_requests_per_minute, 60.0)
        self.pairing_by_ip = WindowCounter(lim.pairing_requests_per_minute_per_ip, 60.0)
        self.registrations_by_ip = WindowCounter(lim.registrations_per_minute_per_ip, 60.0)
        self.auths_by_key = KeyedBuckets(lim.auth_rate_per_key, lim.auth_burst_per_key)
        self.requests_by_key = KeyedBuckets(lim.requests_per_second, lim.request_burst)
        self.requests_by_ip = KeyedBuckets(lim.requests_per_second_per_ip, lim.request_burst_per_ip)
        self.send_budget = SendBudget(lim.send_buffer_budget)
        self.proxy_trust = ProxyTrust(self.config.trusted_proxies)
        self.metrics.live_connections = self.table.counts_by_status
        self.metrics.send_buffer_bytes = lambda: self.send_budget.total
        self.url = self.url or self.config.url
