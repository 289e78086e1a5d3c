"""The end-to-end benchmark's figures: the printed table and its section of ``bench/RESULTS.md``."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from bench.common.results_file import write_section
from bench.e2e.stacks import FLOW_BUDGET
from bench.relay.loadgen import percentile

HEADING = "## End-to-end"
#: Other processes' CPU (cores) above which a window's figures are marked noisy.
NOISY = 0.3

METHOD = """\
How it is measured (`python -m bench.e2e`). *starmux*: a relay process (`starmux relay
serve`, shipped limits except the per-IP ones, since every machine connects from 127.0.0.1);
N real `daemon.runtime.Daemon`s spread over K load processes (N × K in the tables; K = 1 is
the old one-process shape) on the daemon's own event loop (uvloop,
`starmux.node.event_loop`; `bench/e2e/daemons.py`, built on `bench/common/daemon_host.py`),
each with its own keys, SQLite event log and relay link, paired for real with a controller
(`client.actions.pair`, code read from the daemon's terminal); the controller's
`client.live.LiveController` runs alone in its own process (`bench/e2e/controller.py`;
uvloop, as the controller agent) over Noise_KK channels and counts the events it has applied
to its SQLite cache (`on_event`, after the commit). Every event is `Output("stdout", 1 KiB)`
(1,056-byte body) appended to the daemon's real `EventLog` (group commit); the live service
pushes committed events as pages. *Throughput*: each daemon appends in bursts (window/4 per
call, at most two bursts uncommitted) while fewer than its window of events are unapplied by
the controller (the controller reports its cursors every 10 ms, relayed by the parent to the
load processes; 1,024 events per machine, as one machine alone has, so each of N machines
floods as the one machine does), so the figure is a steady state. What reaches the
controller is paced by starmux's own flow control: each machine pushes within its share of
the controller's live window (`live-ack`), and one further ahead pages through its log on
the controller's requests. Without the harness's window the daemons would append faster than
anything applies them and take the CPU the controller needs. With K = 1 all N daemons share
one process, so at N = 100 their combined cost sits on one core, which 100 real machines
would not. *Latency*: a fixed total rate, round-robin over the daemons, each event stamped
with `time.monotonic_ns()` (CLOCK_MONOTONIC, one clock for every process of the host) when
it is appended, read by the controller after its cache commit: log commit, live push, Noise,
relay and cache apply are all inside. *Bare*: the same N senders → 1 receiver through
`bench/common/bare_forwarder.py` (the relay's stack, no auth, no crypto, no logs), senders
in one load process with `bench/common/wsclient.py` on uvloop (`bench/e2e/bare.py`),
flooding as fast as TCP takes (the forwarder awaits each forward in the sender's loop, so
the receiver pushes back end to end), receiver in the parent; messages are the 2-byte
address and the same 1 KiB, stamped with `time.monotonic_ns()` for latency (the receiver
reads `perf_counter_ns`, on Linux the same CLOCK_MONOTONIC, checked at start). Both stacks
run at once, and each round gives starmux then bare the same window; figures are medians
over rounds (the latency max pools all rounds). CPU is each process's run time from
`/proc/PID/task/*/schedstat` (nanoseconds, every thread) over each measured window; "other
processes" is `/proc/stat` busy time minus this benchmark's whole process tree: at or above
0.3 cores a figure is marked noisy. *Approve*: `python -m bench.sessions`'s method (a relay
and a daemon as processes, as `starmux demo`; an agent raises checkpoints with `starmux
checkpoint` one after another; time from the controller submitting its signed approval to
the agent process printing that it continued, `time.time()` on both sides), one machine;
there is no bare counterpart."""


def _median(rounds: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(r[key]) for r in rounds)


def summarize(
    n: int, kind: str, tp: list[dict[str, Any]], lat: list[dict[str, Any]]
) -> dict[str, Any]:
    pooled = sorted(d for r in lat for d in r["delays"])
    cpu_keys = sorted(k for k in tp[0] if k.startswith(("cpu_", "us_")))
    return {
        "machines": n,
        "kind": kind,
        "per_s": _median(tp, "per_s"),
        "per_s_rounds": [round(r["per_s"]) for r in tp],
        "tp_cpu": {k: _median(tp, k) for k in cpu_keys},
        "tp_others_max": max(r["cpu_others"] for r in tp),
        "p50_ms": statistics.median(percentile(r["delays"], 0.50) for r in lat),
        "p99_ms": statistics.median(percentile(r["delays"], 0.99) for r in lat),
        "p99_rounds": [round(percentile(r["delays"], 0.99), 2) for r in lat],
        "max_ms": pooled[-1] / 1e6 if pooled else float("nan"),
        "received": sum(len(r["delays"]) for r in lat),
        "lat_cpu": {k: _median(lat, k) for k in cpu_keys},
        "lat_others_max": max(r["cpu_others"] for r in lat),
    }


def _noisy(others: float) -> str:
    return f" **(noisy: {others:.2f})**" if others >= NOISY else ""


def _cores(cpu: dict[str, float], names: tuple[str, ...]) -> str:
    return " / ".join(f"{cpu.get('cpu_' + name, float('nan')):.2f}" for name in names)


def _us(cpu: dict[str, float], names: tuple[str, ...]) -> str:
    values = [cpu.get("us_" + name, float("nan")) for name in names]
    return " / ".join(f"{v:.1f}" for v in values) + f" (sum {sum(values):.1f})"


STARMUX_PARTS = ("controller", "relay", "daemons")
BARE_PARTS = ("receiver", "forwarder", "senders")


def targets(per_n: list[dict[str, Any]]) -> list[str]:
    """Issue 20's ratios, from this run: one machine against the most machines over
    several processes."""
    one = next((e for e in per_n if e["machines"] == 1), None)
    spread = [e for e in per_n if e["machines"] > 1 and e.get("processes", 1) > 1]
    if one is None or not spread:
        return []
    many = max(spread, key=lambda e: e["machines"])
    label = f"{many['machines']}×{many['processes']}"
    m1, mn = one["starmux"], many["starmux"]
    controller = mn["tp_cpu"]["us_controller"] / m1["tp_cpu"]["us_controller"]
    rate = mn["per_s"] / m1["per_s"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    return [
        f"- controller CPU per event, {label} / 1×1: {controller:.2f} "
        f"(target ≤ 1.3: {verdict(controller <= 1.3)})",
        f"- events/s delivered, {label} / 1×1: {rate:.2f} (target ≥ 0.6: {verdict(rate >= 0.6)})",
        f"- latency p99 at 1×1: {m1['p99_ms']:.2f} ms (target ≤ 3: {verdict(m1['p99_ms'] <= 3)});"
        f" at {label}: {mn['p99_ms']:.2f} ms (target ≤ 10: {verdict(mn['p99_ms'] <= 10)})",
    ]


def _flood(settings: dict[str, Any]) -> str:
    """What the throughput windows let each machine have in flight."""
    if settings.get("shared_window"):
        return f"throughput: {FLOW_BUDGET:,} events in flight shared by all machines"
    return f"throughput: {settings.get('window') or FLOW_BUDGET:,} events in flight per machine"


def figures(results: dict[str, Any]) -> list[str]:
    s = results["settings"]
    lines = [
        f"Shapes N machines × K daemon processes = "
        f"{', '.join(f'{n} × {k}' for n, k in s['shapes'])}; {s['rounds']} rounds; "
        f"throughput windows {s['warmup']:g} s warm-up + {s['seconds']:g} s, latency windows "
        f"{s['warmup']:g} + {s['latency_seconds']:g} s at {s['rate']:,.0f} events/s in all; "
        f"{_flood(s)}; "
        f"1 KiB bodies throughout. Load average before the run: {results['load_before']}.",
        "",
        "| N × K | figure | bare | starmux | starmux/bare |",
        "|---:|---|---:|---:|---:|",
    ]
    cpu_lines = [
        "| N × K | window | starmux: controller / relay / daemons | bare: receiver / forwarder "
        "/ senders | other processes (max of rounds) |",
        "|---:|---|---|---|---|",
    ]
    us_lines = [
        "| N × K | window | starmux: controller / relay / daemons | bare: receiver / forwarder "
        "/ senders |",
        "|---:|---|---|---|",
    ]
    for entry in results["per_n"]:
        b, m = entry["bare"], entry["starmux"]
        n = f"{entry['machines']} × {entry.get('processes', 1)}"
        noise_tp = _noisy(max(b["tp_others_max"], m["tp_others_max"]))
        noise_lat = _noisy(max(b["lat_others_max"], m["lat_others_max"]))
        lines += [
            f"| {n} | events/s delivered, 1 KiB (rounds: starmux {m['per_s_rounds']}, bare "
            f"{b['per_s_rounds']}){noise_tp} | {b['per_s']:,.0f} | **{m['per_s']:,.0f}** "
            f"| {m['per_s'] / b['per_s']:.2f} |",
            f"| {n} | latency p50, ms, at {s['rate']:,.0f} events/s{noise_lat} "
            f"| {b['p50_ms']:.2f} | **{m['p50_ms']:.2f}** | {m['p50_ms'] / b['p50_ms']:.1f} |",
            f"| {n} | latency p99, ms (rounds: starmux {m['p99_rounds']}, bare "
            f"{b['p99_rounds']}) | {b['p99_ms']:.2f} | **{m['p99_ms']:.2f}** "
            f"| {m['p99_ms'] / b['p99_ms']:.1f} |",
            f"| {n} | latency max, ms (events received: starmux {m['received']:,}, bare "
            f"{b['received']:,}) | {b['max_ms']:.2f} | {m['max_ms']:.2f} | |",
        ]
        for window, key in (("throughput", "tp"), ("latency", "lat")):
            cpu_lines.append(
                f"| {n} | {window} | {_cores(m[key + '_cpu'], STARMUX_PARTS)}"
                f" | {_cores(b[key + '_cpu'], BARE_PARTS)} "
                f"| {max(m[key + '_others_max'], b[key + '_others_max']):.2f} |"
            )
            us_lines.append(
                f"| {n} | {window} | {_us(m[key + '_cpu'], STARMUX_PARTS)}"
                f" | {_us(b[key + '_cpu'], BARE_PARTS)} |"
            )
    approve = results.get("approve")
    if approve is not None:
        lines.append(
            f"| 1 × 1 | approve → blocked process continues, median / p90 ms (min "
            f"{approve['min_ms']:.1f}; {approve['count']:.0f} checkpoints; machine busy "
            f"{approve['busy_cores']:.2f} cores, others {approve['cpu_others']:.2f})"
            f"{_noisy(approve['cpu_others'])} | no bare counterpart "
            f"| **{approve['median_ms']:.1f} / {approve['p90_ms']:.1f}** | |"
        )
    goals = targets(results["per_n"])
    return [*lines, "", "CPU per event delivered, µs (median of rounds; latency windows: per "
            "event offered):", "", *us_lines, "",
            "CPU during the measured windows, cores (median of rounds):", "", *cpu_lines,
            *(["", "Issue 20's targets, this run:", "", *goals] if goals else [])]  # fmt: skip


def write_results(lines: list[str], command: str, path: Path) -> None:
    write_section(HEADING, lines, command, METHOD, path)
