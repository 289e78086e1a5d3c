"""What a cluster benchmark runs on: a fresh PostgreSQL database, a private
``redis-server``, relay nodes and HAProxy in front of them (as ``tests/cluster``).

Context managers: everything started is stopped (and the database dropped) on the
way out, also when the benchmark fails half way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg

from bench.relay.__main__ import RELAY_ENV, Server, server

POSTGRES = os.environ.get("STARMUX_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def _program(name: str, package: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise SystemExit(f"bench.cluster needs {name} (Debian: apt-get install {package})")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start listening on {port}")
        time.sleep(0.02)


@contextlib.contextmanager
def database() -> Iterator[str]:
    """A new database on the server at ``STARMUX_BENCH_POSTGRES``; dropped after."""
    name = f"starmux_bench_{secrets.token_hex(4)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(POSTGRES)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f"CREATE DATABASE {name}"))
    try:
        yield f"{POSTGRES.rsplit('/', 1)[0]}/{name}"
    finally:
        asyncio.run(admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@contextlib.contextmanager
def redis_server(workdir: str) -> Iterator[tuple[str, int]]:
    """A private Redis without persistence: (URL, pid)."""
    port = free_port()
    process = subprocess.Popen(
        [_program("redis-server", "redis-server"), "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, "redis-server")
        yield f"redis://127.0.0.1:{port}", process.pid
    finally:
        process.kill()
        process.wait()


def node_env(registry: str, bus: str, key_file: str) -> dict[str, str]:
    """A cluster node's settings through the environment (the flags' twins)."""
    return {
        **RELAY_ENV,
        "STARMUX_RELAY_REGISTRY": registry,
        "STARMUX_RELAY_BUS": bus,
        "STARMUX_RELAY_KEY_FILE": key_file,
    }


@contextlib.contextmanager
def nodes(registry: str, bus: str, workdir: str, count: int = 2) -> Iterator[list[Server]]:
    """``count`` relay nodes on the registry and bus, sharing one key, any free port."""
    # Private before any node starts: the key file's folder must be (a node creating
    # its data dir inside it first would leave it 0755, and the key is then refused).
    Path(workdir).mkdir(mode=0o700, exist_ok=True)
    with contextlib.ExitStack() as stack:
        started = []
        for index in range(count):
            command = [
                *(sys.executable, "-m", "starmux.cli", "relay", "serve", "--json", "--port", "0"),
                *("--data-dir", f"{workdir}/node{index}", "--open-registration"),
                *("--log-level", "warning"),
            ]
            env = node_env(registry, bus, f"{workdir}/relay.key")
            started.append(stack.enter_context(server(command, env)))
        yield started


#: deploy/haproxy.cfg's settings (/livez checked every second, two failures take a
#: node out; /livez does no round trip, so a loaded survivor does not flap), with
#: the connection cap below: two descriptors each (client and node side) under this
#: machine's hard limit of 20,000 open files; enough for the 5,000-machine storm.
HAPROXY_MAXCONN = 9500
HAPROXY_CONFIG = """\
global
    maxconn {maxconn}
defaults
    mode http
    maxconn {maxconn}
    timeout connect 5s
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
    default-server inter 1s fall 2 rise 2
{servers}
"""


@contextlib.contextmanager
def haproxy(workdir: Path, node_ports: list[int]) -> Iterator[tuple[str, int]]:
    """HAProxy round robin over the nodes, no stickiness: (ws:// URL, pid)."""
    port = free_port()
    servers = "\n".join(f"    server n{i} 127.0.0.1:{p} check" for i, p in enumerate(node_ports))
    config = workdir / "haproxy.cfg"
    config.write_text(HAPROXY_CONFIG.format(maxconn=HAPROXY_MAXCONN, port=port, servers=servers))
    with (workdir / "haproxy.log").open("wb") as log:  # read it when HAProxy fails
        process = subprocess.Popen(
            [_program("haproxy", "haproxy"), "-db", "-f", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        try:
            wait_for_port(port, "HAProxy")
        except RuntimeError:
            raise RuntimeError((workdir / "haproxy.log").read_text()) from None
        yield f"ws://127.0.0.1:{port}", process.pid
    finally:
        process.terminate()
        process.wait(timeout=10)


def load_average() -> str:
    with open("/proc/loadavg") as loadavg:
        return " ".join(loadavg.read().split()[:3])
