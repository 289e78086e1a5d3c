"""deploy/compose.yml and deploy/haproxy.cfg, checked by parsing (no Docker engine
here): the relay nodes' settings load as a real relay config, every node shares one
key file, and HAProxy balances over exactly those nodes without stickiness."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from starmux.relay.config import load_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def compose() -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / "compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def relay_services() -> dict[str, dict[str, Any]]:
    services = compose()["services"]
    return {name: s for name, s in services.items() if name.startswith("relay")}


def haproxy_lines() -> list[str]:
    lines = (DEPLOY / "haproxy.cfg").read_text().splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def test_two_relay_nodes_postgres_redis_and_haproxy() -> None:
    services = compose()["services"]
    assert set(services) == {"relay1", "relay2", "haproxy", "postgres", "redis"}
    for service in relay_services().values():
        assert service["build"]["dockerfile"] == "Dockerfile"
        assert (DEPLOY / service["build"]["context"] / "Dockerfile").exists()
        for dependency in ("postgres", "redis"):
            assert service["depends_on"][dependency]["condition"] == "service_healthy"
            assert "healthcheck" in services[dependency]


def test_node_settings_load_as_a_cluster_config() -> None:
    for name, service in relay_services().items():
        env = {k: str(v) for k, v in service["environment"].items()}
        # Expand the ${VAR:-default} forms the way compose does with nothing set.
        env = {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", v) for k, v in env.items()}
        config = load_config({}, env=env)  # unknown or invalid settings raise
        assert config.registry is not None and config.registry.startswith("postgresql://")
        assert config.bus is not None and config.bus.startswith("redis://redis:")
        assert "@postgres:5432/" in config.registry, name
        assert config.key_file == Path("/keys/relay.key")
        assert config.trusted_proxies  # HAProxy's X-Forwarded-For counts real clients
        # The balancer's check on the thread-answered listener, reachable by HAProxy.
        assert config.livez_port == 8766 and config.livez_host == "0.0.0.0"


def test_every_node_shares_one_key_file_and_keeps_its_own_data() -> None:
    mounts = {name: s["volumes"] for name, s in relay_services().items()}
    key_volumes = {next(v for v in m if v.endswith(":/keys")) for m in mounts.values()}
    assert key_volumes == {"relay-key:/keys"}
    data_volumes = [next(v for v in m if v.endswith(":/data")) for m in mounts.values()]
    assert len(set(data_volumes)) == len(data_volumes)
    declared = set(compose()["volumes"])
    for volume_list in mounts.values():
        assert {v.split(":")[0] for v in volume_list} <= declared


def test_haproxy_round_robin_over_the_nodes_without_stickiness() -> None:
    lines = haproxy_lines()
    assert "balance roundrobin" in lines
    assert not [line for line in lines if line.split()[0] in ("cookie", "stick", "stick-table")]
    servers = [line.split() for line in lines if line.startswith("server ")]
    assert {s[2] for s in servers} == {f"{name}:8765" for name in relay_services()}
    assert all(s[3:] == ["check", "port", "8766"] for s in servers)  # the livez listener
    # The cheap liveness check, not the full round trip of /health (README).
    assert "option httpchk GET /livez" in lines
    assert "timeout tunnel 1h" in lines  # WebSockets outlive the HTTP timeouts
    assert "option forwardfor" in lines
    haproxy = compose()["services"]["haproxy"]
    assert "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in haproxy["volumes"]
    assert "bind :8765" in lines and haproxy["ports"] == ["8765:8765"]
