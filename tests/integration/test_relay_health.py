"""/health needs a real routed round trip; /metrics speaks Prometheus."""

from __future__ import annotations

import json
import socket
import urllib.request

from ..timeouts import scaled
from .conftest import RelayFactory
from .relay_process import RelayProcess


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=scaled(10)) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_health_reports_a_real_round_trip(relay: RelayProcess) -> None:
    status, body = _get(relay.http_url + "/health")
    report = json.loads(body)
    assert status == 200, report
    assert report["ok"] is True
    assert report["round_trip_ms"] > 0
    assert report["relay_fingerprint"] == relay.fingerprint


def test_livez_answers_without_a_round_trip(relay: RelayProcess) -> None:
    """The load balancer's check on the embedded relay: 200 while serving, and no
    connection behind it (unlike /health, whose probe is one)."""
    before = _accepted(relay)
    for _ in range(5):
        status, body = _get(relay.http_url + "/livez")
        assert (status, json.loads(body)) == (200, {"ok": True, "detail": "ok"})
    assert _accepted(relay) == before
    assert _get(relay.http_url + "/health")[0] == 200
    assert _accepted(relay) == before + 1


def _accepted(relay: RelayProcess) -> float:
    text = _get(relay.http_url + "/metrics")[1].decode()
    line = next(
        x for x in text.splitlines() if x.startswith("starmux_relay_connections_accepted_total ")
    )
    return float(line.split()[1])


def test_health_fails_when_routing_is_broken(relay_factory: RelayFactory) -> None:
    # A relay that cannot route (no connections allowed from loopback) is unhealthy
    # even though its HTTP server answers: the check really goes through /v1/ws.

    assert callable(relay_factory)
    factory: RelayFactory = relay_factory
    # Two sockets per IP, counted at accept: the hog's and the /health request's; the
    # probe's own WebSocket is the third and is refused.
    broken = factory(
        env={"STARMUX_RELAY_CONNECTIONS_PER_IP": "2", "STARMUX_RELAY_HANDSHAKE_TIMEOUT": "1"}
    )

    # Hold the spare connection slot with a socket that never authenticates.
    with socket.create_connection(("127.0.0.1", broken.port)) as hog:
        hog.sendall(
            b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        hog.recv(1024)  # the 101 response: the slot is taken from here on
        status, body = _get(broken.http_url + "/health")
    assert status == 503
    assert json.loads(body)["ok"] is False


def test_metrics_exposition(relay: RelayProcess) -> None:
    _get(relay.http_url + "/health")  # one probe connection, authenticated and routed
    status, body = _get(relay.http_url + "/metrics")
    text = body.decode()
    assert status == 200
    for name in (
        "starmux_relay_connections{role=",
        "starmux_relay_frames_routed_total",
        "starmux_relay_bytes_routed_total",
        "starmux_relay_routing_latency_seconds_bucket",
        "starmux_relay_connections_accepted_total",
    ):
        assert name in text, name
    routed = [
        line for line in text.splitlines() if line.startswith("starmux_relay_frames_routed_total")
    ]
    assert float(routed[0].split()[-1]) >= 1
