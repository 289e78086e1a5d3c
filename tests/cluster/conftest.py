"""A relay cluster on loopback: relay processes on one PostgreSQL and one Redis,
behind HAProxy (round robin, no stickiness)."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.conftest import stop_controller_agents
from tests.integration.daemon_process import DaemonProcess
from tests.integration.relay_process import RelayProcess, free_port

from .services import HaProxy, RedisServer, fresh_database

# Controller commands start a controller agent per home: stop them after each test.
__all__ = ["stop_controller_agents"]


@dataclass
class RelayCluster:
    workdir: Path
    registry: str
    redis: RedisServer
    nodes: list[RelayProcess] = field(default_factory=list)
    proxy: HaProxy | None = None
    #: each node's /livez listener, the port HAProxy checks (kept across restarts)
    livez_ports: dict[int, int] = field(default_factory=dict)

    @property
    def key_file(self) -> Path:
        return self.workdir / "secrets" / "relay.key"

    @property
    def url(self) -> str:
        assert self.proxy is not None
        return self.proxy.url

    @property
    def registration_token(self) -> str:
        tokens = [n.registration_token for n in self.nodes if n.registration_token]
        assert len(tokens) == 1, f"expected exactly one node to show a token: {tokens}"
        return tokens[0]

    def start_node(self, index: int, port: int | None = None) -> RelayProcess:
        livez_port = self.livez_ports.setdefault(index, free_port())
        node = RelayProcess(
            self.workdir / f"node{index}",
            # The registry through the environment, the bus as a flag: both paths.
            env={
                "STARMUX_RELAY_REGISTRY": self.registry,
                # Every test client comes from 127.0.0.1 (a fleet of hundreds
                # reconnecting at once): the per-IP guards would count them as one.
                "STARMUX_RELAY_CONNECTIONS_PER_IP": "5000",
                "STARMUX_RELAY_CONNECTION_RATE_PER_IP": "100000",
                "STARMUX_RELAY_CONNECTION_BURST_PER_IP": "100000",
                "STARMUX_RELAY_REQUESTS_PER_SECOND_PER_IP": "100000",
                "STARMUX_RELAY_REQUEST_BURST_PER_IP": "100000",
            },
            extra_args=["--bus", self.redis.url, "--key-file", str(self.key_file),
                        "--livez-port", str(livez_port)],
        )  # fmt: skip
        if port is not None:
            node.port = port
        if index < len(self.nodes):
            self.nodes[index] = node
        else:
            self.nodes.append(node)
        return node.start()

    def metric(self, index: int, name: str) -> float:
        with urllib.request.urlopen(self.nodes[index].http_url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    def holder_of_machines(self) -> list[int]:
        """Indexes of the nodes holding at least one paired machine connection."""
        return [
            i
            for i, node in enumerate(self.nodes)
            if node.process is not None
            and self.metric(i, 'starmux_relay_connections{role="machine"}') >= 1
        ]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def cluster(tmp_path: Path, redis_server: RedisServer) -> Iterator[RelayCluster]:
    """Two relay nodes behind HAProxy."""
    with fresh_database() as registry:
        group = RelayCluster(tmp_path, registry, redis_server)
        try:
            for index in range(2):
                group.start_node(index)
            group.proxy = HaProxy(
                tmp_path, [n.port for n in group.nodes], [group.livez_ports[i] for i in range(2)]
            ).start()
            yield group
        finally:
            if group.proxy is not None:
                group.proxy.stop()
            for node in group.nodes:
                node.kill()


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.stop()
