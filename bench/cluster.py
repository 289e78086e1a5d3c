"""Relay cluster: pairs on one node against pairs split across two nodes.

``python bench/cluster.py [--quick]`` starts two relay nodes on a fresh PostgreSQL
database and a private ``redis-server`` (as ``tests/cluster`` does), then drives them
with the load generator of ``bench/relay`` (``bench/relay/loadgen.py``: the same pairs,
1 KiB bodies, throughput and latency windows, medians over rounds) in three layouts:

- *one node*: every pair's machine and controller on node A (the cluster's own
  routing table, nothing crosses the bus);
- *two nodes, pairs local*: half the pairs on A, half on B, each pair on one node
  (aggregate msg/s of two nodes against one);
- *split*: every machine on A, every controller on B: each message is one Redis
  publish from A and one delivery from Redis to B.

Reported per layout: routed msg/s, p50/p99 latency at an offered rate, and the CPU
of the relay nodes and Redis per routed message. Prints a table and JSON; on a
2-core machine the load generator, two nodes and Redis share two cores, which is
the ceiling, and the figures say so (``other_cpu``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import uvloop  # noqa: E402

from bench.common.procs import cpu_seconds  # noqa: E402
from bench.common.targets import Pair, StarmuxTarget, open_pairs  # noqa: E402
from bench.common.wsclient import DISCARD, RawWebSocket  # noqa: E402
from bench.relay.__main__ import RELAY_ENV, Server, server  # noqa: E402
from bench.relay.loadgen import (  # noqa: E402
    latency_window,
    summarize_latency,
    summarize_throughput,
    throughput_window,
)
from starmux.identity import NodeKeys, Role  # noqa: E402

POSTGRES = os.environ.get("STARMUX_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


class LayoutTarget(StarmuxTarget):
    """Pairs whose machine and controller connect to the nodes ``place(index)`` names."""

    def __init__(self, ports: list[int], place: Callable[[int], tuple[int, int]]) -> None:
        super().__init__("127.0.0.1", ports[0])
        self.ports, self.place = ports, place

    async def _node(self, role: Role, name: str) -> tuple[RawWebSocket, NodeKeys]:
        machine_node, controller_node = self.place(int(name.rsplit("-", 1)[1]))
        self.port = self.ports[machine_node if role is Role.MACHINE else controller_node]
        return await super()._node(role, name)  # reads self.port before its first await


@contextlib.contextmanager
def database() -> Iterator[str]:
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
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("bench/cluster.py needs redis-server (apt-get install redis-server)")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}", process.pid
    finally:
        process.kill()
        process.wait()


@contextlib.contextmanager
def nodes(registry: str, bus: str, workdir: str) -> Iterator[list[Server]]:
    with contextlib.ExitStack() as stack:
        started = []
        for index in range(2):
            command = [
                *(sys.executable, "-m", "starmux.cli", "relay", "serve", "--json", "--port", "0"),
                *("--data-dir", f"{workdir}/node{index}", "--open-registration"),
                *("--log-level", "warning", "--bus", bus, "--key-file", f"{workdir}/relay.key"),
            ]
            env = {**RELAY_ENV, "STARMUX_RELAY_REGISTRY": registry}
            started.append(stack.enter_context(server(command, env)))
        yield started


def cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


async def measure(
    name: str,
    target: LayoutTarget,
    args: argparse.Namespace,
    pids: list[int],
) -> dict[str, Any]:
    pairs: list[Pair] = await open_pairs(target, args.pairs)
    for pair in pairs:
        pair.sender.mode = DISCARD
    rounds, windows = [], []
    shape = {"window": args.window, "warmup": args.warmup}
    await throughput_window(pairs, seconds=args.warmup, server_pid=pids[0], **shape)
    for _ in range(args.rounds):
        before, start = cpu(pids), time.perf_counter()
        result = await throughput_window(pairs, seconds=args.seconds, server_pid=pids[0], **shape)
        # Every process that routes (both nodes and Redis), over the whole window call.
        result["server_cpu"] = (cpu(pids) - before) / (time.perf_counter() - start)
        rounds.append(result)
        windows.append(
            await latency_window(
                pairs, rate=args.rate, warmup=args.warmup, seconds=args.seconds,
                server_pid=pids[0],
            )
        )  # fmt: skip
    for pair in pairs:
        pair.abort()
    throughput = summarize_throughput(rounds)
    latency = summarize_latency(windows, 2 * args.pairs)
    print(
        f"  {name:<28} {throughput['messages_per_s']:>9,.0f} msg/s"
        f"  p50 {latency['p50_ms']:6.2f} ms  p99 {latency['p99_ms']:6.2f} ms"
        f"  relay+redis CPU {throughput['server_us_per_message']:5.1f} µs/msg"
        f"  (other CPU {throughput['other_cpu']:.2f} cores)",
        flush=True,
    )
    return {"throughput": throughput, "latency": latency}


async def run(args: argparse.Namespace, ports: list[int], pids: list[int]) -> dict[str, Any]:
    half = args.pairs // 2
    layouts: dict[str, Callable[[int], tuple[int, int]]] = {
        "one node": lambda i: (0, 0),
        "two nodes, pairs local": lambda i: (0, 0) if i < half else (1, 1),
        "split across two nodes": lambda i: (0, 1),
    }
    results = {}
    for name, place in layouts.items():
        results[name] = await measure(name, LayoutTarget(ports, place), args, pids)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run; figures mean little")
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--rate", type=float, default=2_000, help="offered msg/s for latency")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--warmup", type=float, default=0.5)
    args = parser.parse_args()
    if args.quick:
        args.pairs, args.rounds, args.seconds, args.warmup = 20, 1, 0.5, 0.2
    with (
        tempfile.TemporaryDirectory(prefix="starmux-bench-cluster-") as workdir,
        database() as registry,
        redis_server(workdir) as (bus, redis_pid),
        nodes(registry, bus, workdir) as started,
    ):
        ports = [int(s.url.rsplit(":", 1)[1]) for s in started]
        pids = [*(s.pid for s in started), redis_pid]
        print(f"two relay nodes {ports} on PostgreSQL and Redis; {args.pairs} pairs, 1 KiB")
        results = uvloop.run(run(args, ports, pids))
    print(json.dumps({"settings": vars(args), "results": results}, default=str))


if __name__ == "__main__":
    main()
