"""Real PostgreSQL, Redis and HAProxy for the cluster tests, all on loopback.

- PostgreSQL: the machine's server; each test gets a fresh database, dropped after.
- Redis: a private ``redis-server`` per test on a free port (no persistence), so a
  test can restart it without touching anyone else's.
- HAProxy: round robin over the nodes, no stickiness, health checks on ``/livez``;
  its stats socket tells which node each client connection went to.

A missing service FAILS the test with what to install or start; never a skip.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.relay_process import free_port
from tests.timeouts import scaled

POSTGRES_ADMIN = os.environ.get(
    "STARMUX_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


def _psql(sql: str) -> None:
    """Run one admin statement (CREATE/DROP DATABASE cannot run in a transaction)."""
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    name = f"starmux_cluster_{secrets.token_hex(5)}"
    try:
        _psql(f"CREATE DATABASE {name}")
    except Exception as exc:  # what matters is that it is not usable
        pytest.fail(
            f"PostgreSQL is needed for the cluster tests and is not usable at {POSTGRES_ADMIN}"
            f" ({type(exc).__name__}: {exc}). Start it (Debian: `service postgresql start`,"
            " or `.ci/services`), or point STARMUX_TEST_POSTGRES at a server where this user"
            " may CREATE DATABASE.",
            pytrace=False,
        )
    base = POSTGRES_ADMIN.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        _psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _require(program: str, package: str) -> str:
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["sh", "-c", f"(apt-get update -qq && apt-get install -y -qq {package}) >/dev/null"],
            check=False,
            timeout=600,
        )
        path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail(
            f"the cluster tests need `{program}`: install it (Debian: apt-get install"
            f" {package}); as root the tests install it themselves.",
            pytrace=False,
        )
    return path


def wait_for_port(port: int, *, timeout: float = 10.0) -> None:
    """``timeout`` in unscaled seconds (tests/timeouts.py)."""
    timeout = scaled(timeout)
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing listens on port {port} after {timeout} s")
        time.sleep(0.02)  # polling a port that has no event to wait on


@dataclass
class RedisServer:
    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        binary = _require("redis-server", "redis-server")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


HAPROXY_CONFIG = """\
global
    stats socket {stats} mode 600 level admin
    maxconn 4000
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    option redispatch
    retries 3
frontend relay
    bind 127.0.0.1:{port}
    default_backend nodes
backend nodes
    balance roundrobin
    option httpchk GET /livez
    http-check expect status 200
    timeout check 1s
    default-server inter 300ms fall 2 rise 1
{servers}
"""


@dataclass
class HaProxy:
    workdir: Path
    node_ports: list[int]
    #: where each node answers HAProxy's /livez check (its --livez-port), as in deploy/
    check_ports: list[int]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def stats_socket(self) -> Path:
        return self.workdir / "haproxy.sock"

    def start(self) -> HaProxy:
        binary = _require("haproxy", "haproxy")
        servers = "\n".join(
            f"    server n{i} 127.0.0.1:{port} check port {check}"
            for i, (port, check) in enumerate(zip(self.node_ports, self.check_ports, strict=True))
        )
        config = self.workdir / "haproxy.cfg"
        config.write_text(
            HAPROXY_CONFIG.format(stats=self.stats_socket, port=self.port, servers=servers)
        )
        log = (self.workdir / "haproxy.log").open("wb")
        self.process = subprocess.Popen(
            [binary, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        try:
            wait_for_port(self.port)
        except AssertionError:
            self.stop()
            raise AssertionError(
                "HAProxy did not start:\n" + (self.workdir / "haproxy.log").read_text()
            ) from None
        self.wait_up(range(len(self.node_ports)))
        return self

    def _command(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.stats_socket))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def servers(self) -> dict[str, tuple[str, int]]:
        """Server name → (status, connections it got so far)."""
        lines = self._command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        status, total = header.index("status"), header.index("stot")
        out = {}
        for line in lines[1:]:
            row = line.split(",")
            if len(row) > total and row[0] == "nodes" and row[1].startswith("n"):
                out[row[1]] = (row[status], int(row[total]))
        return out

    def wait_up(self, nodes: range | list[int], *, timeout: float = 15.0) -> None:
        """``timeout`` in unscaled seconds (tests/timeouts.py)."""
        deadline = time.monotonic() + scaled(timeout)
        while True:
            try:  # the stats socket appears a moment after the frontend listens
                servers = self.servers()
            except (FileNotFoundError, ConnectionRefusedError):
                servers = {}
            if all(servers.get(f"n{i}", ("", 0))[0] == "UP" for i in nodes):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"HAProxy does not see the nodes up: {servers}")
            time.sleep(0.05)  # HAProxy's check state has no event to wait on

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


def steer(proxy: HaProxy, node: int) -> None:
    """Make the *next* client connection through ``proxy`` go to node ``node``.

    Round robin hands out servers in turn; a throwaway request tells which server
    got the last turn, and one more is made until that was the other node. So a test
    can put the daemon and the controller on different nodes through the balancer
    without any stickiness or per-node URL.
    """
    import urllib.request

    for _ in range(len(proxy.node_ports) + 1):
        before = proxy.servers()
        with urllib.request.urlopen(f"http://127.0.0.1:{proxy.port}/metrics", timeout=10):
            pass
        after = proxy.servers()
        used = [name for name in after if after[name][1] > before.get(name, ("", 0))[1]]
        order = sorted(name for name, (status, _) in after.items() if status == "UP")
        if len(used) == 1 and order[(order.index(used[0]) + 1) % len(order)] == f"n{node}":
            return
    raise AssertionError(f"could not steer HAProxy to n{node}: {proxy.servers()}")
