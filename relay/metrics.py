"""Relay metrics: plain counters on the hot path, Prometheus text on scrape.

Incrementing a Python int costs nanoseconds; a locked client-library counter costs
far more per routed frame. So the hot path bumps fields of :class:`RelayMetrics`
and a custom collector turns them into metric families when ``/metrics`` is read.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

#: Routing latency buckets in seconds (receive → handed to the peer's socket).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


class LatencyHistogram:
    __slots__ = ("buckets", "counts", "first", "total")

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        #: the first bucket's bound: nearly every routed frame falls below it
        self.first = buckets[0] if buckets else -math.inf

    def observe(self, seconds: float) -> None:
        # Once per routed frame: the common case skips the bisect (same bucket).
        if seconds <= self.first:
            self.counts[0] += 1
        else:
            self.counts[bisect_left(self.buckets, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*map(str, self.buckets), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out


class RelayMetrics:
    def __init__(self) -> None:
        self.frames_routed = 0
        self.bytes_routed = 0
        self.drops: Counter[str] = Counter()  # by reason
        self.auth_failures: Counter[str] = Counter()
        #: connections and requests refused by a limit before any work, by limit
        self.refused: Counter[str] = Counter()
        self.closes: Counter[int] = Counter()  # by close code
        #: Web Push forwards by outcome (sent, gone, failed, rate-limited, no-subscription)
        self.pushes: Counter[str] = Counter()
        self.connections_total = 0
        self.latency = LatencyHistogram()
        #: filled in by the app: role → live connection count
        self.live_connections: Callable[[], dict[str, int]] = dict
        #: filled in by the app: bytes queued for sending, all peers together
        self.send_buffer_bytes: Callable[[], int] = int
        #: filled in by the server: raw sockets open (before and after the upgrade)
        self.open_sockets: Callable[[], int] = int

    def collect(self) -> Iterator[Metric]:
        live = GaugeMetricFamily(
            "starmux_relay_connections", "Live authenticated connections", labels=["role"]
        )
        for role, count in sorted(self.live_connections().items()):
            live.add_metric([role], count)
        yield live
        yield CounterMetricFamily(
            "starmux_relay_connections_accepted",
            "WebSocket connections accepted",
            value=self.connections_total,
        )
        yield GaugeMetricFamily(
            "starmux_relay_send_buffer_bytes",
            "Bytes queued for sending to peers, all peers together",
            value=self.send_buffer_bytes(),
        )
        yield GaugeMetricFamily(
            "starmux_relay_open_sockets",
            "TCP connections open, from accept to close (HTTP, upgrading, WebSocket)",
            value=self.open_sockets(),
        )
        yield CounterMetricFamily(
            "starmux_relay_frames_routed",
            "DATA frames delivered to a peer",
            value=self.frames_routed,
        )
        yield CounterMetricFamily(
            "starmux_relay_bytes_routed",
            "DATA frame bytes delivered to a peer",
            value=self.bytes_routed,
        )
        for name, doc, label, counter in (
            ("starmux_relay_drops", "Frames not delivered, by reason", "reason", self.drops),
            ("starmux_relay_auth_failures", "Failed authentications", "reason", self.auth_failures),
            (
                "starmux_relay_refused",
                "Connections and requests refused by a rate or count limit, by limit",
                "limit",
                self.refused,
            ),
            (
                "starmux_relay_pushes",
                "Web Push requests from machines, by outcome (rate-limited: per device)",
                "outcome",
                self.pushes,
            ),
            (
                "starmux_relay_closes",
                "Connections closed by the relay, by code",
                "code",
                self.closes,
            ),
        ):
            family = CounterMetricFamily(name, doc, labels=[label])
            for key, count in sorted(counter.items()):
                family.add_metric([str(key)], count)
            yield family
        histogram = HistogramMetricFamily(
            "starmux_relay_routing_latency_seconds",
            "Time from receiving a DATA frame to handing it to the receiver's socket",
        )
        histogram.add_metric([], self.latency.cumulative(), sum_value=self.latency.total)
        yield histogram

    def exposition(self) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return generate_latest(registry)
