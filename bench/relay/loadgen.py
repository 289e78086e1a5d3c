"""The load generator of ``python -m bench.relay``; runs in its own process, on uvloop.

``python -m bench.relay.loadgen traffic --server NAME=KIND,URL,PID ...`` (KIND: ``bare`` or
``starmux``) opens sender → receiver pairs on every server given, checks that each
pair routes, then measures in *rounds*: each round gives every server, one after
the other, the same short window of each scenario. On a shared machine whose speed
drifts (other processes, a busy host), alternating windows put the servers under the
same conditions; the medians over rounds are reported.

- *throughput*: each of ``--pairs`` senders keeps ``--window`` messages (1 KiB bodies)
  in flight to its receiver and tops up as they arrive; routed messages/s is what
  the receivers count after a short warm-up;
- *latency*: ``--rate`` messages/s round-robin over ``--latency-pairs`` senders, each
  carrying ``perf_counter_ns`` at send time; receivers (same process, same clock)
  record the delay;
- *stalled*: the latency window again (longer), plus one fresh receiver per round that
  never reads while its sender keeps sending ``--stall-rate`` messages/s to it; the
  server's RSS is sampled and, for starmux, its 4011 (slow consumer) closes are read
  from ``/metrics``.

``python -m bench.relay.loadgen idle --kind KIND --url URL --server-pid PID --connections N``
measures the server's RSS per idle connection: RSS after N connections
(authenticated, or with their id announced) minus RSS before, over N.

Each command prints its results as one JSON object on the last line of stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import struct
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import uvloop

from bench.common.targets import Pair, bounded_gather, make_target, open_pairs
from bench.common.wsclient import COUNT, DISCARD, STAMP, RawWebSocket
from starmux.frames import FrameType

#: Latency runs send what is due every TICK; uvloop rounds timers to whole milliseconds.
TICK = 0.001
RSS_SAMPLE = 0.25  # seconds between samples of the server's RSS in a latency window
ARRIVAL = 0.3  # seconds a latency window waits after its last send for the last ones to arrive
AFTER_STALL = 1.0  # seconds after a stalled window before the server's RSS is read again
QUIET = 0.15  # cores busy on the machine below which it counts as quiet


def log(message: str) -> None:
    print(f"  loadgen: {message}", file=sys.stderr, flush=True)


# --- facts about the server and the machine ------------------------------------------------


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time spent by everything on the machine (all cores), from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(f) for f in stat.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def closes_4011(url: str) -> int:
    metrics = url.replace("ws://", "http://", 1) + "/metrics"
    with urllib.request.urlopen(metrics, timeout=5) as response:
        text = response.read().decode()
    match = re.search(r'^starmux_relay_closes_total\{code="4011"\} (\S+)', text, re.M)
    return int(float(match.group(1))) if match else 0


class CpuMeter:
    """Cores used by the server, this process and everything else, over a window."""

    def __init__(self, server_pid: int) -> None:
        self.pid = server_pid
        self.start = time.perf_counter()
        self.server = cpu_seconds(server_pid)
        self.own = time.process_time()
        self.machine = machine_busy_seconds()

    def read(self) -> dict[str, float]:
        span = time.perf_counter() - self.start
        server = cpu_seconds(self.pid) - self.server
        own = time.process_time() - self.own
        others = machine_busy_seconds() - self.machine - server - own
        return {
            "server_cpu": server / span,
            "loadgen_cpu": own / span,
            "other_cpu": max(0.0, others / span),
        }


async def quiet(limit: float) -> None:
    """Wait (at most ``limit`` s) until the rest of the machine has been idle for 0.5 s."""
    deadline = time.monotonic() + limit
    calm = 0
    while time.monotonic() < deadline and calm < 2:
        before = machine_busy_seconds()
        await asyncio.sleep(0.25)
        calm = calm + 1 if (machine_busy_seconds() - before) / 0.25 < QUIET else 0


def percentile(ordered: list[int], fraction: float) -> float:
    """Nearest-rank percentile of sorted nanoseconds, in milliseconds."""
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1e6


# --- one window of each scenario -----------------------------------------------------------


async def throughput_window(
    pairs: list[Pair], *, window: int, warmup: float, seconds: float, server_pid: int
) -> dict[str, Any]:
    outstanding = [0] * len(pairs)
    received = [0]
    running = [True]
    low = window // 2

    def top_up(index: int) -> None:
        pair = pairs[index]
        missing = window - outstanding[index]
        if running[0] and missing > 0 and pair.sender.writable:
            pair.sender.write(pair.frame * missing)
            outstanding[index] += missing

    def on_count(receiver: RawWebSocket, count: int) -> None:
        received[0] += count
        outstanding[receiver.tag] -= count
        if outstanding[receiver.tag] <= low:
            top_up(receiver.tag)

    for index, pair in enumerate(pairs):
        pair.receiver.tag = pair.sender.tag = index
        pair.receiver.mode = COUNT
        pair.receiver.on_count = on_count
        pair.receiver.check_offset, pair.receiver.check_value = pair.check_offset, pair.check_value
        pair.sender.on_writable = lambda ws: top_up(ws.tag)
    for index in range(len(pairs)):
        top_up(index)
    await asyncio.sleep(warmup)
    start_count, meter = received[0], CpuMeter(server_pid)
    await asyncio.sleep(seconds)
    count, cpu = received[0], meter.read()
    elapsed = time.perf_counter() - meter.start
    running[0] = False
    deadline = time.monotonic() + 3.0
    while any(outstanding) and time.monotonic() < deadline:  # noqa: ASYNC110 - bounded drain
        await asyncio.sleep(0.02)
    for pair in pairs:
        pair.receiver.mode = DISCARD
        pair.receiver.on_count = None
        pair.sender.on_writable = None
    rate = (count - start_count) / elapsed
    return {"messages_per_s": rate, "lost": sum(outstanding), **cpu}


@dataclass
class LatencyWindow:
    delays: list[int]  # sorted, nanoseconds
    facts: dict[str, Any] = field(default_factory=dict)


async def latency_window(
    pairs: list[Pair],
    *,
    rate: float,
    warmup: float,
    seconds: float,
    server_pid: int,
    stall: Pair | None = None,
    stall_rate: float = 0.0,
    arrival: float = ARRIVAL,
    after_stall: float = AFTER_STALL,
) -> LatencyWindow:
    """``rate`` stamped messages/s round-robin over ``pairs``; delays after the warm-up.

    ``arrival``: seconds the window waits after its last send for the last messages;
    ``after_stall``: with ``stall``, seconds after that before the RSS is read again."""
    delays: list[int] = []
    for pair in pairs:
        pair.receiver.mode = STAMP
        pair.receiver.stamp_offset = pair.recv_stamp_at
        pair.receiver.delays = delays
    cut_off: list[float] = []  # when the stalled receiver's sender first heard it is gone
    if stall is not None:
        stall.receiver.pause_reading()  # its socket fills up; it never reads again
        if stall.check_offset >= 0:  # starmux: the relay answers ERROR once the peer is gone
            stall.sender.mode = COUNT
            stall.sender.check_offset = stall.check_offset
            stall.sender.check_value = int(FrameType.ERROR)
            stall.sender.on_count = lambda ws, n: cut_off.append(time.perf_counter())
    senders = [(p.frame[: p.stamp_at], p.frame[p.stamp_at + 8 :], p.sender) for p in pairs]
    clock, pack = time.perf_counter_ns, struct.Struct("<q").pack
    rss_before = rss_peak = rss_kib(server_pid)
    sent = dropped = stall_sent = stall_dropped = window_sent = 0
    index, count = 0, len(senders)
    meter: CpuMeter | None = None
    next_sample = 0.0
    start = time.perf_counter()
    # Until the window has run: a loaded machine can stall one pass past its end.
    while (elapsed := time.perf_counter() - start) < warmup + seconds or meter is None:
        if meter is None and elapsed >= warmup:
            delays.clear()
            window_sent = sent
            meter = CpuMeter(server_pid)
        due = int(elapsed * rate) - sent
        for _ in range(due):
            head, tail, ws = senders[index]
            index = (index + 1) % count
            if ws.writable:
                ws.write(head + pack(clock()) + tail)
            else:
                dropped += 1
        sent += due
        if stall is not None:
            due = int(elapsed * stall_rate) - stall_sent
            if stall.sender.writable:
                stall.sender.write(stall.frame * due)
            else:
                stall_dropped += due
            stall_sent += due
        if elapsed >= next_sample:
            rss_peak = max(rss_peak, rss_kib(server_pid))
            next_sample = elapsed + RSS_SAMPLE
        await asyncio.sleep(TICK)
    assert meter is not None
    cpu = meter.read()
    window_sent = sent - window_sent
    await asyncio.sleep(arrival)  # let the last ones arrive
    for pair in pairs:
        pair.receiver.mode = DISCARD
    facts: dict[str, Any] = {
        "sent": window_sent,
        "received": len(delays),
        "dropped_not_writable": dropped,
        "rss_before_kib": rss_before,
        "rss_peak_kib": rss_peak,
        **cpu,
    }
    if stall is not None:
        await asyncio.sleep(after_stall)
        facts.update(
            stall_sent=stall_sent - stall_dropped,
            rss_after_kib=rss_kib(server_pid),
            unreachable_after_s=round(cut_off[0] - start, 2) if cut_off else None,
        )
        stall.abort()
    return LatencyWindow(sorted(delays), facts)


# --- rounds over several servers -----------------------------------------------------------


@dataclass
class Server:
    name: str
    kind: str
    url: str
    pid: int
    pairs: list[Pair] = field(default_factory=list)
    stalls: list[Pair] = field(default_factory=list)  # one fresh staller per round

    @classmethod
    def parse(cls, spec: str) -> Server:
        name, rest = spec.split("=", 1)
        kind, url, pid = rest.split(",")
        return cls(name, kind, url, int(pid))


def _median(rounds: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(r[key]) for r in rounds)


def summarize_throughput(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "messages_per_s": _median(rounds, "messages_per_s"),
        "best_messages_per_s": max(r["messages_per_s"] for r in rounds),
        "rounds": [round(r["messages_per_s"]) for r in rounds],
        "server_us_per_message": statistics.median(
            r["server_cpu"] / r["messages_per_s"] * 1e6 for r in rounds
        ),
        **{k: _median(rounds, k) for k in ("server_cpu", "loadgen_cpu", "other_cpu")},
        "lost": sum(r["lost"] for r in rounds),
        "other_rounds": [round(r["other_cpu"], 2) for r in rounds],
    }


def summarize_latency(windows: list[LatencyWindow], connections: int) -> dict[str, Any]:
    pooled = sorted(d for w in windows for d in w.delays)
    facts = [w.facts for w in windows]
    p99s = [percentile(w.delays, 0.99) for w in windows]
    return {
        "connections": connections,
        "p50_ms": statistics.median(percentile(w.delays, 0.50) for w in windows),
        "p99_ms": statistics.median(p99s),
        "p99_rounds": [round(p, 3) for p in p99s],
        "best_p99_ms": min(p99s),
        "p999_ms": percentile(pooled, 0.999),
        "max_ms": pooled[-1] / 1e6 if pooled else float("nan"),
        "sent": sum(f["sent"] for f in facts),
        "received": len(pooled),
        "dropped_not_writable": sum(f["dropped_not_writable"] for f in facts),
        **{k: _median(facts, k) for k in ("server_cpu", "loadgen_cpu", "other_cpu")},
        "other_rounds": [round(f["other_cpu"], 2) for f in facts],
    }


def summarize_stalled(
    windows: list[LatencyWindow], plain: list[LatencyWindow], connections: int
) -> dict[str, Any]:
    summary = summarize_latency(windows, connections)
    facts = [w.facts for w in windows]
    changes = [
        percentile(w.delays, 0.99) / percentile(p.delays, 0.99) - 1
        for w, p in zip(windows, plain, strict=False)
    ]
    summary.update(
        p99_change=statistics.median(changes) if changes else float("nan"),
        p99_change_rounds=[round(c, 3) for c in changes],
        stall_sent=sum(f["stall_sent"] for f in facts),
        unreachable_after_s=[f["unreachable_after_s"] for f in facts],
        rss_before_kib=min(f["rss_before_kib"] for f in facts),
        rss_peak_kib=max(f["rss_peak_kib"] for f in facts),
        rss_after_kib=max(f["rss_after_kib"] for f in facts),
    )
    return summary


async def traffic(args: argparse.Namespace) -> dict[str, Any]:
    scenarios = set(args.scenarios.split(","))
    servers = [Server.parse(spec) for spec in args.server]
    count = max(
        args.pairs if "throughput" in scenarios else 0,
        args.latency_pairs if scenarios & {"latency", "stalled"} else 0,
    )
    stalls = args.rounds if "stalled" in scenarios else 0
    for srv in servers:
        started = time.perf_counter()
        pairs = await open_pairs(make_target(srv.kind, srv.url), count + stalls)
        for pair in pairs:
            pair.sender.mode = DISCARD  # relay errors and notices to senders are not measured
        srv.pairs, srv.stalls = pairs[:count], pairs[count:]
        log(f"{srv.name}: {len(pairs)} pairs routing after {time.perf_counter() - started:.1f} s")
    results: dict[str, dict[str, Any]] = {srv.name: {"kind": srv.kind} for srv in servers}

    if "throughput" in scenarios:
        rounds: dict[str, list[dict[str, Any]]] = {srv.name: [] for srv in servers}
        shape = {"window": args.window, "warmup": args.warmup}
        for srv in servers:  # one unrecorded window each: first-use costs, allocator growth
            await throughput_window(
                srv.pairs[: args.pairs], seconds=args.warmup, server_pid=srv.pid, **shape
            )
        for _ in range(args.rounds):
            await quiet(args.quiet_wait)
            for srv in servers:
                rounds[srv.name].append(
                    await throughput_window(
                        srv.pairs[: args.pairs], seconds=args.seconds, server_pid=srv.pid, **shape
                    )
                )
        for srv in servers:
            results[srv.name]["throughput"] = summary = summarize_throughput(rounds[srv.name])
            log(f"{srv.name}: throughput {summary['messages_per_s']:,.0f} msg/s")

    if scenarios & {"latency", "stalled"}:
        plain: dict[str, list[LatencyWindow]] = {srv.name: [] for srv in servers}
        stalled: dict[str, list[LatencyWindow]] = {srv.name: [] for srv in servers}
        closes = {srv.name: 0 for srv in servers}
        load = {"rate": args.rate, "warmup": args.warmup, "arrival": args.arrival}
        connections = 2 * args.latency_pairs
        for number in range(args.rounds):
            await quiet(args.quiet_wait)
            for srv in servers:
                pairs = srv.pairs[: args.latency_pairs]
                plain[srv.name].append(
                    await latency_window(pairs, seconds=args.seconds, server_pid=srv.pid, **load)
                )
            if "stalled" not in scenarios:
                continue
            await quiet(args.quiet_wait)
            for srv in servers:
                before = await asyncio.to_thread(closes_4011, srv.url) if srv.kind != "bare" else 0
                stalled[srv.name].append(
                    await latency_window(
                        srv.pairs[: args.latency_pairs],
                        seconds=args.stall_seconds,
                        server_pid=srv.pid,
                        stall=srv.stalls[number],
                        stall_rate=args.stall_rate,
                        after_stall=args.after_stall,
                        **load,
                    )
                )
                if srv.kind != "bare":
                    closes[srv.name] += await asyncio.to_thread(closes_4011, srv.url) - before
        for srv in servers:
            results[srv.name]["latency"] = summary = summarize_latency(plain[srv.name], connections)
            log(f"{srv.name}: latency p99 {summary['p99_ms']:.2f} ms")
            if "stalled" in scenarios:
                summary = summarize_stalled(stalled[srv.name], plain[srv.name], connections)
                summary["stall_rate"] = args.stall_rate
                summary["closes_4011"] = closes[srv.name] if srv.kind != "bare" else None
                results[srv.name]["stalled"] = summary
                log(f"{srv.name}: stalled p99 {summary['p99_ms']:.2f} ms")
    for srv in servers:
        for pair in (*srv.pairs, *srv.stalls):
            pair.abort()
    return results


async def idle(args: argparse.Namespace) -> dict[str, Any]:
    target = make_target(args.kind, args.url, offer_deflate=args.offer_deflate)
    # Warm the server's code paths and allocator first, so the baseline is a warm server.
    for ws in await bounded_gather(50, 50, target.idle):
        ws.close()
    await asyncio.sleep(args.settle)
    rss_zero = rss_kib(args.server_pid)
    meter = CpuMeter(args.server_pid)
    sockets = await bounded_gather(args.connections, 200, target.idle)
    connect_s = time.perf_counter() - meter.start
    cpu = meter.read()
    await asyncio.sleep(args.settle)  # let the server finish with the last hellos
    rss_full = rss_kib(args.server_pid)
    alive = sum(not ws.closed.done() for ws in sockets)
    for ws in sockets:
        ws.abort()
    return {
        "kind": args.kind,
        "connections": args.connections,
        "alive": alive,
        "connect_per_s": args.connections / connect_s,
        "server_cpu_ms_per_connect": cpu["server_cpu"] * connect_s / args.connections * 1000,
        "rss_zero_kib": rss_zero,
        "rss_full_kib": rss_full,
        "kib_per_connection": (rss_full - rss_zero) / args.connections,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("traffic", help="throughput, latency and stalled-receiver rounds")
    run.add_argument("--server", action="append", required=True, help="NAME=KIND,URL,PID")
    run.add_argument("--scenarios", default="throughput,latency,stalled")
    run.add_argument("--rounds", type=int, default=5)
    run.add_argument("--pairs", type=int, default=100, help="throughput sender→receiver pairs")
    run.add_argument("--window", type=int, default=32, help="messages in flight per pair")
    run.add_argument("--latency-pairs", type=int, default=250)
    run.add_argument("--rate", type=float, default=10_000, help="offered msg/s, latency windows")
    run.add_argument("--stall-rate", type=float, default=2_000, help="msg/s to the staller")
    run.add_argument("--warmup", type=float, default=0.5, help="seconds before each window")
    run.add_argument("--seconds", type=float, default=1.5, help="throughput and latency windows")
    run.add_argument("--stall-seconds", type=float, default=3.0, help="stalled windows")
    run.add_argument(
        "--arrival", type=float, default=ARRIVAL, help="seconds for a window's last messages"
    )
    run.add_argument(
        "--after-stall", type=float, default=AFTER_STALL, help="seconds to the RSS after a stall"
    )
    run.add_argument(
        "--quiet-wait", type=float, default=0.0, help="max seconds to wait for a quiet machine"
    )
    idle_run = commands.add_parser("idle", help="server RSS per idle connection")
    idle_run.add_argument("--kind", choices=["bare", "starmux"], required=True)
    idle_run.add_argument("--url", required=True, help="ws://127.0.0.1:PORT")
    idle_run.add_argument("--server-pid", type=int, required=True)
    idle_run.add_argument("--connections", type=int, default=5000)
    idle_run.add_argument("--offer-deflate", action="store_true")
    idle_run.add_argument("--settle", type=float, default=1.0, help="seconds before RSS reads")
    parser.add_argument("--time-limit", type=float, default=400.0, help="seconds, then stop")
    args = parser.parse_args()
    command = traffic if args.command == "traffic" else idle

    async def bounded() -> dict[str, Any]:
        async with asyncio.timeout(args.time_limit):
            return await command(args)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        results = runner.run(bounded())
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
