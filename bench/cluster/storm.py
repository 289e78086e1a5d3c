"""Reconnect storm on a cluster: one node of two killed, its machines come back through
the load balancer to the other.

``--machines`` paired machines (the registry filled through the real
``PostgresRegistry`` API, as ``bench.storm`` fills SQLite) connect through HAProxy
(round robin: about half on each node), each one the shipped ``RelayLink`` driven
by the daemon's reconnect policy (``bench/storm/clients.py``). Node B is then
SIGKILLed: its machines' connections drop, they back off as the daemon does, and
HAProxy sends them to node A (connect retries and redispatch at once, /livez checks
within ~0.6 s). Measured from the SIGKILL until every machine node B held has
authenticated again; node A's, Redis's and HAProxy's CPU over that window.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common.procs import LoadProcess, Sampler
from bench.relay.__main__ import Server
from bench.storm.__main__ import fill_registry
from bench.storm.report import quantile
from starmux.relay.pg_registry import PostgresRegistry

MACHINES_METRIC = 'starmux_relay_connections{role="machine"}'
#: Seconds for the last welcomes once every machine connected, before the kill.
SETTLE = 1.0


async def fill(registry_url: str, machines: int, salt: bytes) -> float:
    """The registry before any node starts (the first open applies the migrations)."""
    started = time.monotonic()
    registry = PostgresRegistry(registry_url, pool_size=8)
    await registry.open()
    try:
        await fill_registry(registry, machines, salt, parallel=8)
    finally:
        await registry.close()
    return time.monotonic() - started


def machines_on(node: Server) -> int:
    url = node.url.replace("ws://", "http://", 1) + "/metrics"
    with urllib.request.urlopen(url, timeout=60) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(MACHINES_METRIC + " "):
                return int(float(line.rsplit(" ", 1)[1]))
    return 0


async def reports(loads: list[LoadProcess]) -> list[dict[str, Any]]:
    for load in loads:
        await load.send("report")
    return [await load.expect("report", within=60) for load in loads]


async def kill_storm(
    *,
    url: str,
    relay_key: bytes,
    salt: bytes,
    machines: int,
    load_processes: int,
    nodes: list[Server],
    other_pids: dict[str, int],
    tmp: Path,
    give_up_after: float,
    settle: float = SETTLE,
) -> dict[str, Any]:
    """``settle``: seconds for the last welcomes after every machine connected; the
    samplers get at most that (half a second by default) for a first sample."""
    loads: list[LoadProcess] = []
    try:
        share = -(-machines // load_processes)
        for n in range(load_processes):
            first, count = n * share, min(share, machines - n * share)
            if count <= 0:
                break
            args = ["--url", url, "--relay-key", relay_key.hex(), "--salt", salt.hex()]
            args += ["--first", str(first), "--count", str(count)]
            loads.append(
                await LoadProcess.start(
                    f"load {n}", "bench.storm.clients", *args, log_path=tmp / f"load{n}.log"
                )
            )
        connect_started = time.monotonic()
        for load in loads:
            await load.expect("connected", within=900)
        connect_s = time.monotonic() - connect_started
        await asyncio.sleep(settle)  # the last welcomes and presence settle
        held = [await asyncio.to_thread(machines_on, node) for node in nodes]
        survivor, victim = nodes
        since = time.monotonic()
        for load in loads:
            await load.send("arm", since=since, dropped_only=True)
        for load in loads:
            await load.expect("armed", within=30)
        samplers = {
            "node A": Sampler(survivor.pid),
            **{name: Sampler(pid) for name, pid in other_pids.items()},
            **{load.name: Sampler(load.pid) for load in loads},
        }
        await asyncio.sleep(min(0.5, settle))  # a first sample of each before the kill
        killed_at = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        deadline = killed_at + give_up_after
        while True:
            await asyncio.sleep(0.25)
            got = await reports(loads)
            back = sum(len(r["times"]) for r in got)
            dropped = sum(int(r["dropped"]) for r in got)
            if back >= held[1] or time.monotonic() > deadline:
                break
        times = sorted(t - killed_at for r in got for t in r["times"])
        end = killed_at + (times[-1] if times else 0.0)
        windows = {name: s.between(killed_at, end) for name, s in samplers.items()}
        for sampler in samplers.values():
            await sampler.stop()
        after = await asyncio.to_thread(machines_on, survivor)
        stats: dict[str, int] = {}
        for report in got:
            for name, value in report["stats"].items():
                stats[name] = stats.get(name, 0) + int(value)
        node_a = windows["node A"]
        return {
            "machines": machines,
            "connect_s": connect_s,
            "held_before": held,
            "dropped": dropped,
            "back": len(times),
            "all_back_s": times[-1] if len(times) >= held[1] else math.inf,
            "p50_s": quantile(times, 0.5),
            "p90_s": quantile(times, 0.9),
            "on_survivor_after": after,
            "cpu": {name: w["cpu_pct"] for name, w in windows.items()},
            "survivor_ms_per_reauth": 1000 * node_a["cpu_s"] / max(1, len(times)),
            "busy_cores": node_a["busy_cores"],
            "survivor_rss_mib": node_a["rss_peak_mib"],
            "stats": stats,
        }
    finally:
        for load in loads:
            await load.stop()
