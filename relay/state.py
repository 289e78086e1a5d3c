"""Everything one relay process shares between connections."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from starmux.identity import IdentityCard, NodeKeys

from .config import RelayConfig
from .metrics import RelayMetrics
from .registry import Registry
from .routing import RoutingTable


class WindowCounter:
    """At most ``limit`` events per key in any ``window`` seconds (fixed windows)."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._counts: dict[str, tuple[float, int]] = {}

    def allow(self, key: str, now: float) -> bool:
        start, count = self._counts.get(key, (now, 0))
        if now - start >= self.window:
            start, count = now, 0
        if count >= self.limit:
            return False
        self._counts[key] = (start, count + 1)
        if len(self._counts) > 100_000:  # forget old windows rather than grow forever
            self._counts = {k: v for k, v in self._counts.items() if now - v[0] < self.window}
        return True


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
    connections_per_ip: dict[str, int] = field(default_factory=dict)
    pairing_by_ip: WindowCounter = field(default_factory=lambda: WindowCounter(20, 60.0))
    shutting_down: bool = False
    url: str = ""  # where this relay listens, known once bound

    def __post_init__(self) -> None:
        self.pairing_by_ip = WindowCounter(self.config.limits.pairing_requests_per_minute, 60.0)
        self.metrics.live_connections = self.table.counts_by_status
        self.url = self.url or self.config.url
