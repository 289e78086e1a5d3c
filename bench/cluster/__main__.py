"""Relay cluster benchmarks: split-node throughput and a reconnect storm after a node dies.

    python -m bench.cluster [--quick] [--skip-storm] [--skip-throughput] [--write]

Both parts run two relay nodes on a fresh PostgreSQL database and a private
``redis-server`` (as ``tests/cluster`` does), in one run, so their figures share
the machine's conditions (printed with them: load average, other processes' CPU).

1. **Throughput** with the load generator of ``bench/relay`` (the same pairs, 1 KiB
   bodies, throughput and latency windows, medians over rounds) in three layouts,
   measured *in turn within every round* so the ratios compare like with like on a
   shared machine:

   - *one node*: every pair's machine and controller on node A (the cluster's own
     routing table, nothing crosses the bus);
   - *two nodes, pairs local*: half the pairs on A, half on B, each pair on one node
     (aggregate msg/s of two nodes against one);
   - *split*: every machine on A, every controller on B: each message is one Redis
     publish from A and one delivery from Redis to B.

   Reported per layout: routed msg/s, p50/p99 latency at an offered rate, the CPU of
   both nodes and Redis per routed message, and each layout's ratio to one node.

2. **Storm** (``bench/cluster/storm.py``): ``--machines`` paired machines through
   HAProxy (round robin), the daemon's reconnect policy; node B is SIGKILLed; the
   time until every machine it held is back through HAProxy on node A, and the CPU
   of node A, Redis and HAProxy meanwhile.

On a 2-core machine the load generators, the nodes, Redis and HAProxy share two
cores, which is the ceiling; the figures say so. ``--write`` puts them in
``bench/RESULTS.md`` ("Relay cluster").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import uvloop

from bench.cluster.services import database, haproxy, load_average, nodes, redis_server
from bench.cluster.storm import SETTLE, fill, kill_storm
from bench.common.procs import cpu_seconds
from bench.common.results_file import add_results_option, shown, write_section
from bench.common.targets import Pair, StarmuxTarget, open_pairs
from bench.common.wsclient import DISCARD, RawWebSocket
from bench.relay.loadgen import (
    ARRIVAL,
    latency_window,
    summarize_latency,
    summarize_throughput,
    throughput_window,
)
from starmux.home import load_or_create_node_keys
from starmux.identity import NodeKeys, Role

HEADING = "## Relay cluster"
LAYOUTS: dict[str, Callable[[int, int], tuple[int, int]]] = {
    "one node": lambda i, half: (0, 0),
    "two nodes, pairs local": lambda i, half: (0, 0) if i < half else (1, 1),
    "split across two nodes": lambda i, half: (0, 1),
}
#: ``--quick`` only: the seconds a latency window waits for its last messages, and the
#: storm's pauses before the kill (connections settling, a first CPU sample).
QUICK_ARRIVAL = 0.05
QUICK_SETTLE = 0.1


class LayoutTarget(StarmuxTarget):
    """Pairs whose machine and controller connect to the nodes ``place(index)`` names."""

    def __init__(self, ports: list[int], place: Callable[[int], tuple[int, int]]) -> None:
        super().__init__("127.0.0.1", ports[0])
        self.ports, self.place = ports, place

    async def _node(self, role: Role, name: str) -> tuple[RawWebSocket, NodeKeys]:
        machine_node, controller_node = self.place(int(name.rsplit("-", 1)[1]))
        self.port = self.ports[machine_node if role is Role.MACHINE else controller_node]
        return await super()._node(role, name)  # reads self.port before its first await


def _placed(
    place: Callable[[int, int], tuple[int, int]], index: int, *, half: int
) -> tuple[int, int]:
    return place(index, half)


def cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


async def throughput(args: argparse.Namespace, ports: list[int], pids: list[int]) -> dict[str, Any]:
    half = args.pairs // 2
    layouts: dict[str, list[Pair]] = {}
    for name, place in LAYOUTS.items():
        target = LayoutTarget(ports, functools.partial(_placed, place, half=half))
        layouts[name] = await open_pairs(target, args.pairs)
        for pair in layouts[name]:
            pair.sender.mode = DISCARD
    shape = {"window": args.window, "warmup": args.warmup}
    arrival = QUICK_ARRIVAL if args.quick else ARRIVAL
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in layouts}
    windows: dict[str, list[Any]] = {name: [] for name in layouts}
    for pairs in layouts.values():
        await throughput_window(pairs, seconds=args.warmup, server_pid=pids[0], **shape)
    for _ in range(args.rounds):
        for name, pairs in layouts.items():  # in turn, every round: like with like
            before, start = cpu(pids), time.perf_counter()
            result = await throughput_window(
                pairs, seconds=args.seconds, server_pid=pids[0], **shape
            )
            # Every process that routes (both nodes and Redis), over the whole window.
            result["server_cpu"] = (cpu(pids) - before) / (time.perf_counter() - start)
            rounds[name].append(result)
            windows[name].append(
                await latency_window(
                    pairs, rate=args.rate, warmup=args.warmup, seconds=args.seconds,
                    server_pid=pids[0], arrival=arrival,
                )
            )  # fmt: skip
    results = {}
    for name, pairs in layouts.items():
        for pair in pairs:
            pair.abort()
        results[name] = {
            "throughput": summarize_throughput(rounds[name]),
            "latency": summarize_latency(windows[name], 2 * args.pairs),
        }
    return results


def throughput_lines(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    base = results["one node"]
    lines = [
        f"Throughput: {args.pairs} pairs, 1 KiB, {args.rounds} rounds, the three layouts in turn"
        f" within each round; latency at {args.rate:,.0f} msg/s offered. CPU: both nodes"
        " + Redis.",
        "",
        "| layout | msg/s (ratio to one node) | p50 / p99 ms | CPU µs/msg (ratio)"
        " | other processes, cores |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        t, lat = r["throughput"], r["latency"]
        ratio = t["messages_per_s"] / base["throughput"]["messages_per_s"]
        cost = t["server_us_per_message"] / base["throughput"]["server_us_per_message"]
        lines.append(
            f"| {name} | {t['messages_per_s']:,.0f} ({ratio:.2f}×) "
            f"| {lat['p50_ms']:.2f} / {lat['p99_ms']:.2f} "
            f"| {t['server_us_per_message']:.1f} ({cost:.2f}×) | {t['other_cpu']:.2f} |"
        )
    return lines


def storm_lines(r: dict[str, Any]) -> list[str]:
    held = r["held_before"]
    back = f"**{r['all_back_s']:.2f} s**" if r["back"] >= held[1] else f"{r['back']}/{held[1]}"
    cpu = ", ".join(f"{name} {pct:.0f} %" for name, pct in r["cpu"].items())
    return [
        f"Storm: {r['machines']:,} machines through HAProxy (connected in"
        f" {r['connect_s']:.1f} s: {held[0]:,} on node A, {held[1]:,} on node B); node B"
        " SIGKILLed.",
        "",
        "| node B killed | machines dropped | all back on node A | p50 / p90 |"
        " node A CPU per re-auth | on node A after |",
        "|---|---:|---:|---:|---:|---:|",
        f"| SIGKILL | {r['dropped']:,} | {back} | {r['p50_s']:.2f} / {r['p90_s']:.2f} s"
        f" | {r['survivor_ms_per_reauth']:.2f} ms | {r['on_survivor_after']:,} |",
        "",
        f"CPU over that window (% of one core): {cpu}; the machine was"
        f" {r['busy_cores']:.2f} cores busy. Node A RSS peak {r['survivor_rss_mib']:.0f} MiB.",
        f"HAProxy took a node out or back {len(r['haproxy_state_changes'])} times"
        f" (health checks; node B's own removal included); refusals the machines met:"
        f" {', '.join(f'{k} {v:,}' for k, v in r['stats'].items() if k.startswith('failed'))}"
        " (none if empty).",
    ]


METHOD = """\
How it is measured (`python -m bench.cluster`). Two `starmux relay serve` nodes on a fresh
PostgreSQL database and a private `redis-server` (no persistence), one shared key file.
*Throughput*: the load generator of `bench/relay` (one process; real keys, real relay auth,
pairs made through the ticket flow), 1 KiB bodies; the three layouts each have their own
pairs, opened up front, and every round measures them in turn (throughput window, then
latency window), so a drift in the machine's other load touches all three alike; medians
over rounds. CPU is utime+stime of both nodes and Redis over the window, per routed
message. *Storm*: the registry filled through the real `PostgresRegistry` API (one
account; per machine create_ticket → open_ticket → grant_machine with a real grant
signature), the machines in `bench/storm/clients.py` load processes (the shipped
`RelayLink` and the daemon's reconnect policy) connecting through HAProxy 2.6 (round
robin, no stickiness, `option redispatch`, `retries 3`, `/livez` checked every second,
2 failures = down, as in `deploy/haproxy.cfg`); node B is SIGKILLed; the clock runs from
the SIGKILL until the last machine node B held authenticated again (load processes'
CLOCK_MONOTONIC timestamps).
The machine is shared with other sessions: the load average before and after each part
is printed with the figures, and "other processes" is the CPU the rest of the machine used
during the throughput windows."""


def run_throughput(args: argparse.Namespace, workdir: str) -> tuple[list[str], dict[str, Any]]:
    with (
        database() as registry,
        redis_server(workdir) as (bus, redis_pid),
        nodes(registry, bus, f"{workdir}/throughput") as started,
    ):
        ports = [int(s.url.rsplit(":", 1)[1]) for s in started]
        pids = [*(s.pid for s in started), redis_pid]
        before = load_average()
        results = uvloop.run(throughput(args, ports, pids))
        lines = throughput_lines(results, args)
        lines += ["", f"Load average before / after: {before} / {load_average()}."]
    return lines, results


def run_storm(args: argparse.Namespace, workdir: str) -> tuple[list[str], dict[str, Any]]:
    tmp = Path(workdir) / "storm"
    tmp.mkdir(mode=0o700)
    salt = os.urandom(16)
    keys, _ = load_or_create_node_keys(tmp / "relay.key")
    with database() as registry, redis_server(workdir) as (bus, redis_pid):
        filled = asyncio.run(fill(registry, args.machines, salt))
        print(f"storm: {args.machines} machines granted in {filled:.1f} s", file=sys.stderr)
        with (
            nodes(registry, bus, str(tmp)) as started,
            haproxy(tmp, [int(s.url.rsplit(":", 1)[1]) for s in started]) as (url, proxy_pid),
        ):
            before = load_average()
            result = uvloop.run(
                kill_storm(
                    url=url,
                    relay_key=keys.sign_public,
                    salt=salt,
                    machines=args.machines,
                    load_processes=args.load_processes,
                    nodes=started,
                    other_pids={"Redis": redis_pid, "HAProxy": proxy_pid},
                    tmp=tmp,
                    give_up_after=args.storm_timeout,
                    settle=QUICK_SETTLE if args.quick else SETTLE,
                )
            )
            # HAProxy's own word on the nodes' health checks during the storm.
            log = (tmp / "haproxy.log").read_text(errors="replace").splitlines()
            result["haproxy_state_changes"] = [
                line.strip() for line in log if " is DOWN" in line or " is UP" in line
            ]
            lines = storm_lines(result)
            lines += ["", f"Load average before / after: {before} / {load_average()}."]
    return lines, result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run; figures mean little")
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--rate", type=float, default=2_000, help="offered msg/s for latency")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--machines", type=int, default=5000, help="storm machines [5000]")
    parser.add_argument("--load-processes", type=int, default=2)
    parser.add_argument("--storm-timeout", type=float, default=180.0)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-storm", action="store_true")
    parser.add_argument(
        "--write",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write the results file (default: only for a full run of both parts)",
    )
    add_results_option(parser)
    args = parser.parse_args()
    if args.quick:
        args.pairs, args.rounds, args.seconds, args.warmup = 4, 1, 0.1, 0.05
        args.machines, args.load_processes, args.storm_timeout = 20, 1, 60.0
    started = time.monotonic()
    lines: list[str] = []
    results: dict[str, Any] = {"settings": vars(args)}
    with tempfile.TemporaryDirectory(prefix="starmux-bench-cluster-") as workdir:
        throughput_part = storm_part = None
        if args.quick and not (args.skip_throughput or args.skip_storm):
            # --quick only: both parts at once (each has its own database, Redis and
            # nodes), as a smoke run's figures mean nothing; a full run keeps them apart
            # so that neither loads the machine while the other measures.
            with ThreadPoolExecutor(max_workers=1) as pool:
                pending = pool.submit(run_throughput, args, workdir)
                storm_part = run_storm(args, workdir)
                throughput_part = pending.result()
        if not args.skip_throughput:
            part, results["throughput"] = throughput_part or run_throughput(args, workdir)
            lines += part
        if not args.skip_storm:
            part, results["storm"] = storm_part or run_storm(args, workdir)
            lines += ["", *part] if lines else part
    print("\n".join(lines))
    print(json.dumps(results, default=str), file=sys.stderr)
    print(f"done in {time.monotonic() - started:.0f} s", file=sys.stderr)
    full = not (args.quick or args.skip_storm or args.skip_throughput)
    if args.write if args.write is not None else full:
        command = " ".join(["python -m bench.cluster", *sys.argv[1:]])
        write_section(HEADING, lines, command, METHOD, args.results)
        print(f"wrote {shown(args.results)}", file=sys.stderr)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
