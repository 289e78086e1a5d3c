"""Relay against a bare forwarder on the same stack: ``python -m bench.relay [--quick]``.

Each server runs in its own process, the load generator (``bench/relay/loadgen.py``) in
another, on this machine's cores; nothing is pinned. Measured:

1. throughput: routed msg/s, 1 KiB bodies, 100 saturated sender → receiver pairs;
2. latency: p50/p99 at an offered 10k msg/s over 500 connections (250 pairs);
3. memory: server RSS per idle connection at 5,000 connections (authenticated, for
   the relay; id announced, for the bare forwarder);
4. stalled receiver: 2 again, plus a receiver that never reads while its sender
   keeps sending to it;

then the same stack on other settings (event loop, WebSocket implementation,
per-message deflate) with the bare forwarder, since the relay runs on the same
uvicorn configuration. For 1, 2 and 4 both servers run at once and the load
generator alternates short windows between them, round after round, so drifts in
the machine's speed hit both alike; medians over the rounds are reported.

Prints a table; the full run (about 3-4 minutes) also writes ``bench/RESULTS.md``.
``--quick`` is a smoke test of a few seconds: its figures mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from queue import Empty, Queue
from typing import Any

from bench.common.relay_env import relay_env
from bench.common.results_file import ROOT, add_results_option, shown
from bench.relay.loadgen import AFTER_STALL, ARRIVAL

START_TIMEOUT = 30.0
LOADGEN_TIMEOUT = 450.0
#: The relay's limits are raised so the benchmark measures routing, not the limiter.
RELAY_ENV = relay_env(20000, FRAMES_PER_SECOND="1000000", FRAME_BURST="2000000")
#: The relay issue's targets, with issue 20's on throughput (≥ 0.9× bare, was 0.8×) and
#: on the tail (p99 within 1.5× bare's in the same run, besides ≤ 3 ms).
TARGETS = {
    "throughput_ratio": 0.9,
    "p99_ms": 3.0,
    "p99_ratio": 1.5,
    "kib_per_connection": 32.0,
    "stall": 0.10,
}
#: The machine counts as quiet below this many busy cores; other processes' CPU above
#: NOISY during a measurement is flagged next to the figures.
QUIET = 0.15
NOISY = 0.3


@dataclass(frozen=True)
class Settings:
    rounds: int = 5
    pairs: int = 100
    window: int = 32
    latency_pairs: int = 250
    rate: float = 10_000
    stall_rate: float = 2_000
    warmup: float = 0.5
    seconds: float = 1.5
    stall_seconds: float = 3.0
    arrival: float = ARRIVAL  # seconds a latency window waits for its last messages
    after_stall: float = AFTER_STALL  # seconds after a stalled window to the RSS "after"
    connections: int = 5000
    stack: bool = True
    stack_rounds: int = 3
    quiet_wait: float = 10.0  # seconds to wait for a quiet machine before measuring
    round_quiet_wait: float = 2.0  # and before each round
    settle: float = 1.0  # seconds the server gets before each RSS reading
    #: Measure memory (fresh servers of its own) in the background while the traffic
    #: part runs, instead of after it: only for --quick, whose figures mean nothing.
    side_by_side: bool = False

    def memory_args(self) -> list[str]:
        return [f"--connections={self.connections}", f"--settle={self.settle}"]

    def traffic_args(self) -> list[str]:
        return [
            f"--rounds={self.rounds}",
            f"--pairs={self.pairs}",
            f"--window={self.window}",
            f"--latency-pairs={self.latency_pairs}",
            f"--rate={self.rate}",
            f"--stall-rate={self.stall_rate}",
            f"--warmup={self.warmup}",
            f"--seconds={self.seconds}",
            f"--stall-seconds={self.stall_seconds}",
            f"--arrival={self.arrival}",
            f"--after-stall={self.after_stall}",
            f"--quiet-wait={self.round_quiet_wait}",
        ]


FULL = Settings()
#: A smoke run: every scenario once, in windows just long enough to fill them. The
#: staller is fed fast enough that the relay still closes it (4011) within its window.
QUICK = Settings(
    rounds=1,
    pairs=4,
    latency_pairs=4,
    # Enough messages in a window that the servers' CPU over it is several clock ticks
    # (the figures divide by it), even with everything on one core.
    rate=20_000,
    stall_rate=20_000,
    warmup=0.05,
    seconds=0.2,
    stall_seconds=0.5,
    arrival=0.05,
    after_stall=0.2,
    connections=50,
    stack=False,
    quiet_wait=0.0,
    round_quiet_wait=0.0,
    settle=0.1,
    side_by_side=True,
)


# --- processes -----------------------------------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen[str]
    url: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def spec(self, name: str, kind: str) -> str:
        return f"--server={name}={kind},{self.url},{self.pid}"


@contextlib.contextmanager
def server(command: list[str], env: dict[str, str] | None = None) -> Iterator[Server]:
    """Start a server that prints ``{"event": "listening", "url": ...}``; stop it after."""
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: Queue[str] = Queue()
    output: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            lines.put(line)
        lines.put("")

    threading.Thread(target=read, daemon=True).start()
    try:
        while True:
            try:
                line = lines.get(timeout=START_TIMEOUT)
            except Empty:
                raise RuntimeError("server did not start:\n" + "".join(output)) from None
            if not line:
                raise RuntimeError("server exited:\n" + "".join(output))
            if line.startswith("{") and json.loads(line).get("event") == "listening":
                url = json.loads(line)["url"]
                break
        yield Server(process, url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def bare(*options: str) -> contextlib.AbstractContextManager[Server]:
    return server([sys.executable, "-m", "bench.common.bare_forwarder", "--port", "0", *options])


@contextlib.contextmanager
def relay() -> Iterator[Server]:
    """A fresh relay (new key, empty registry) with the benchmark's limits."""
    with tempfile.TemporaryDirectory(prefix="starmux-bench-") as scratch:
        command = [
            *(sys.executable, "-m", "starmux.cli", "relay", "serve", "--json", "--port", "0"),
            *("--data-dir", scratch, "--open-registration", "--log-level", "warning"),
        ]
        with server(command, RELAY_ENV) as srv:
            yield srv


def loadgen(*argv: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.relay.loadgen", *argv]
    done = subprocess.run(
        command, cwd=ROOT, stdout=subprocess.PIPE, text=True, timeout=LOADGEN_TIMEOUT
    )
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed ({done.returncode}): {' '.join(command)}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def memory(kind: str, settings: Settings, *options: str, server_options: Sequence[str] = ()) -> Any:
    say(f"{kind} {' '.join(server_options)}: {settings.connections} idle connections")
    with bare(*server_options) if kind == "bare" else relay() as srv:
        return loadgen(
            "idle",
            f"--kind={kind}",
            f"--url={srv.url}",
            f"--server-pid={srv.pid}",
            *settings.memory_args(),
            *options,
        )


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def busy_cores(interval: float) -> float:
    """How many cores the whole machine kept busy over ``interval`` seconds."""

    def busy() -> float:
        with open("/proc/stat") as stat:
            fields = [int(f) for f in stat.readline().split()[1:9]]
        return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")

    before = busy()
    time.sleep(interval)
    return (busy() - before) / interval


def wait_for_quiet(limit: float) -> None:
    """Wait (at most ``limit`` s) until the machine has been idle for a second."""
    if limit <= 0:
        return
    deadline = time.monotonic() + limit
    calm = 0
    while time.monotonic() < deadline:
        calm = calm + 1 if busy_cores(0.5) < QUIET else 0
        if calm >= 2:
            return
    say(f"  other processes keep ≥ {QUIET} cores busy; measuring anyway (see the noise row)")


# --- the runs ------------------------------------------------------------------------------


def measure(settings: Settings) -> dict[str, Any]:
    wait_for_quiet(settings.quiet_wait)
    kinds = ("bare", "starmux")
    with ThreadPoolExecutor(max_workers=1) as background:
        early = (
            {kind: background.submit(memory, kind, settings) for kind in kinds}
            if settings.side_by_side
            else {}
        )
        say("bare forwarder and starmux relay: throughput, latency, stalled receiver")
        with bare() as bare_server, bare("--direct") as direct, relay() as relay_server:
            results = loadgen(
                "traffic",
                bare_server.spec("bare", "bare"),
                direct.spec("direct", "bare"),
                relay_server.spec("starmux", "starmux"),
                *settings.traffic_args(),
            )
        for kind in kinds:
            results[kind]["memory"] = early[kind].result() if early else memory(kind, settings)
    if settings.stack:
        results["stack"] = stack(settings, results["bare"])
    return results


STACKS = [
    ("uvloop, websockets-sansio, deflate off, frames through ASGI (the baseline's)", []),
    (
        "the same, frames read and written directly (the relay's: relay/direct_frames.py)",
        ["--direct"],
    ),
    ("asyncio loop, websockets-sansio", ["--loop", "asyncio"]),
    ("uvloop, websockets (legacy)", ["--ws", "websockets"]),
    ("uvloop, wsproto", ["--ws", "wsproto"]),
]


def stack(settings: Settings, baseline: dict[str, Any]) -> list[dict[str, Any]]:
    """The bare forwarder on each stack: throughput (alternating) and memory per connection."""
    stacks = [
        (label, options)
        for label, options in STACKS
        if "wsproto" not in options or importlib.util.find_spec("wsproto") is not None
    ]
    say("stacks: throughput")
    with contextlib.ExitStack() as running:
        specs = [
            running.enter_context(bare(*options)).spec(f"s{index}", "bare")
            for index, (_, options) in enumerate(stacks)
        ]
        rates = loadgen(
            "traffic",
            *specs,
            *settings.traffic_args(),
            "--scenarios=throughput",
            f"--rounds={settings.stack_rounds}",  # the last --rounds wins
        )
    rows = []
    for index, (label, options) in enumerate(stacks):
        kib = (
            baseline["memory"]["kib_per_connection"]
            if not options
            else memory("bare", settings, server_options=options)["kib_per_connection"]
        )
        rows.append(
            {
                "stack": label,
                "messages_per_s": rates[f"s{index}"]["throughput"]["messages_per_s"],
                "kib_per_connection": kib,
            }
        )
    if len(stacks) < len(STACKS):
        rows.append({"stack": "uvloop, wsproto (not installed)", "messages_per_s": math.nan})
    deflate = memory("bare", settings, "--offer-deflate", server_options=["--deflate"])
    rows.append(
        {
            "stack": "uvloop, websockets-sansio, deflate on (the client offers it)",
            "messages_per_s": math.nan,
            "kib_per_connection": deflate["kib_per_connection"],
        }
    )
    return rows


# --- the report ----------------------------------------------------------------------------


def _n(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def figures(results: dict[str, Any], settings: Settings) -> list[str]:
    b, s = results["bare"], results["starmux"]
    bt, st = b["throughput"], s["throughput"]
    bl, sl = b["latency"], s["latency"]
    bs, ss = b["stalled"], s["stalled"]
    bm, sm = b["memory"], s["memory"]
    dt, dl = results["direct"]["throughput"], results["direct"]["latency"]
    ratio = st["messages_per_s"] / bt["messages_per_s"]

    def mib(run: dict[str, Any]) -> str:
        keys = ("rss_before_kib", "rss_peak_kib", "rss_after_kib")
        return " / ".join(f"{run[key] / 1024:.1f}" for key in keys)

    def noise(*runs: dict[str, Any]) -> str:
        return " / ".join(f"{run['other_cpu']:.2f}" for run in runs)

    cuts = [cut for cut in ss["unreachable_after_s"] if cut is not None]
    closed = f"{ss['closes_4011']} of {settings.rounds}" + (
        f", {sorted(cuts)[len(cuts) // 2]:.1f} s after it stopped reading" if cuts else ""
    )
    rounds = f"median of {settings.rounds}"
    tail_met = sl["p99_ms"] <= min(TARGETS["p99_ms"], TARGETS["p99_ratio"] * bl["p99_ms"])
    rows = [
        "| figure | bare | starmux | starmux/bare | target |",
        "|---|---:|---:|---:|---|",
        f"| 1. throughput, msg/s ({settings.pairs} pairs, {settings.window} in flight each, "
        f"1 KiB; {rounds}, best in brackets) | {_n(bt['messages_per_s'])} "
        f"({_n(bt['best_messages_per_s'])}) | {_n(st['messages_per_s'])} "
        f"({_n(st['best_messages_per_s'])}) "
        f"| {ratio:.2f} | ≥ {TARGETS['throughput_ratio']}: "
        f"{_verdict(ratio >= TARGETS['throughput_ratio'])} |",
        f"| 1. server CPU per routed message, µs | {bt['server_us_per_message']:.1f} "
        f"| {st['server_us_per_message']:.1f} "
        f"| {st['server_us_per_message'] / bt['server_us_per_message']:.2f} | |",
        f"| 1. the same against a bare forwarder that also reads and writes frames "
        f"directly, as the relay does: msg/s, CPU µs per message | {_n(dt['messages_per_s'])}, "
        f"{dt['server_us_per_message']:.1f} | {_n(st['messages_per_s'])}, "
        f"{st['server_us_per_message']:.1f} | {st['messages_per_s'] / dt['messages_per_s']:.2f}, "
        f"{st['server_us_per_message'] / dt['server_us_per_message']:.2f} | |",
        f"| 2. the same against it: latency p99, ms | {dl['p99_ms']:.3f} | {sl['p99_ms']:.3f} "
        f"| {sl['p99_ms'] / dl['p99_ms']:.2f} | |",
        f"| 2. latency p50, ms ({_n(settings.rate)} msg/s over {bl['connections']} "
        f"connections; {rounds}) | {bl['p50_ms']:.3f} | {sl['p50_ms']:.3f} "
        f"| {sl['p50_ms'] / bl['p50_ms']:.2f} | |",
        f"| 2. latency p99, ms (best round in brackets) | {bl['p99_ms']:.3f} "
        f"({bl['best_p99_ms']:.3f}) | {sl['p99_ms']:.3f} ({sl['best_p99_ms']:.3f}) "
        f"| {sl['p99_ms'] / bl['p99_ms']:.2f} "
        f"| ≤ {TARGETS['p99_ms']} ms and ≤ {TARGETS['p99_ratio']}× bare: "
        f"{_verdict(tail_met)} |",
        f"| 2. latency p99.9 / max over all rounds, ms | {bl['p999_ms']:.2f} / "
        f"{bl['max_ms']:.2f} | {sl['p999_ms']:.2f} / {sl['max_ms']:.2f} | | |",
        f"| 2. server CPU at {_n(settings.rate)} msg/s, cores | {bl['server_cpu']:.2f} "
        f"| {sl['server_cpu']:.2f} | {sl['server_cpu'] / bl['server_cpu']:.2f} | |",
        f"| 3. RSS per idle connection, KiB ({_n(settings.connections)} connections) "
        f"| {bm['kib_per_connection']:.1f} | {sm['kib_per_connection']:.1f} "
        f"| {sm['kib_per_connection'] / bm['kib_per_connection']:.2f} "
        f"| ≤ {TARGETS['kib_per_connection']:.0f}: "
        f"{_verdict(sm['kib_per_connection'] <= TARGETS['kib_per_connection'])} |",
        f"| 3. server CPU per connection set up, ms / connections per s "
        f"| {bm['server_cpu_ms_per_connect']:.2f} / {_n(bm['connect_per_s'])} "
        f"| {sm['server_cpu_ms_per_connect']:.2f} / {_n(sm['connect_per_s'])} | | |",
        f"| 4. stalled receiver ({_n(settings.stall_rate)} msg/s sent to it): p99 of the "
        f"others, ms, and change vs 2 in the same round | {bs['p99_ms']:.3f} "
        f"({bs['p99_change']:+.0%}) | {ss['p99_ms']:.3f} ({ss['p99_change']:+.0%}) | "
        f"| within {TARGETS['stall']:.0%}: {_verdict(ss['p99_change'] <= TARGETS['stall'])} |",
        f"| 4. server RSS before / peak / {settings.after_stall:g} s after, MiB | {mib(bs)} "
        f"| {mib(ss)} | | bounded |",
        f"| 4. stalled receiver closed with 4011 | no: the sender is pushed back | {closed} "
        f"| | every round |",
        f"| other processes' CPU during 1 / 2 / 4, cores (noise if ≥ {NOISY}) "
        f"| {noise(bt, bl, bs)} | {noise(st, sl, ss)} | | |",
    ]
    worst = max(run["other_cpu"] for run in (bt, bl, bs, st, sl, ss))
    if worst >= NOISY:
        rows[:0] = [
            f"**Other processes used up to {worst:.1f} cores during these runs: the figures "
            "are mostly noise; rerun on a quiet machine before drawing conclusions.**",
            "",
        ]
    if "stack" in results:
        rows += [
            "",
            "Stacks, measured with the bare forwarder (the baseline above runs on the first"
            " row's, the relay on the second's):",
            "",
            "| stack | msg/s | RSS per idle connection, KiB |",
            "|---|---:|---:|",
        ]
        for row in results["stack"]:
            kib = _n(row.get("kib_per_connection", math.nan), 1)
            rows.append(f"| {row['stack']} | {_n(row['messages_per_s'])} | {kib} |")
    return rows


def machine_facts() -> list[str]:
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    packages = ("uvicorn", "starlette", "websockets", "uvloop", "msgpack")
    versions = ", ".join(f"{name} {version(name)}" for name in packages)
    return [
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: `nproc` = {nproc}, {platform.machine()}, Linux {platform.release()}; "
        f"load average before the run {os.getloadavg()[0]:.2f}",
        f"- `python --version`: Python {platform.python_version()}; {versions}",
    ]


METHOD = """\
How it is measured. The load generator (`bench/relay/loadgen.py`) runs on uvloop with a
minimal client protocol (`bench/common/wsclient.py`: frames masked with the zero key, built
once, counted in place) so that the client costs as little as possible of the two
cores it shares with the server. Throughput: each sender keeps a window of messages
in flight and tops it up as its receiver gets them; the figure is what the receivers
count after a warm-up. Latency: sender and receiver are in the same process, the
send time (`perf_counter_ns`) travels in the body, so the figure includes both
kernel hops and the client. Both servers run at once and the load generator
alternates short windows between them, round after round; the figures are medians
over rounds (p99.9 and max pool all rounds). The stalled receiver is a fresh pair
each round whose receiver pauses reading; its sender keeps sending. Memory is the
server's `VmRSS` after N idle connections minus before (after 50 warm-up
connections), over N, each server fresh. The relay runs with its limits raised
(`STARMUX_RELAY_CONNECTIONS_PER_IP`, `_FRAMES_PER_SECOND`, `_FRAME_BURST`,
`_PAIRING_REQUESTS_PER_MINUTE`); its pairs are real accounts and machines paired
through the ticket flow, its idle connections authenticated unpaired machines.
"Other processes' CPU" is what the rest of the machine used meanwhile: on a shared
machine, figures taken while it is high are noise.
"""


def write_results(lines: list[str], command: str, path: Path) -> None:
    text = "\n".join(
        [
            "# Relay benchmark",
            "",
            "Written by `python -m bench.relay`; rerun it rather than editing the figures.",
            "",
            *machine_facts(),
            f"- command: `{command}`",
            "",
            *lines,
            "",
            METHOD,
        ]
    )
    # This benchmark owns the top of the file; other benchmarks' sections ("## ...")
    # follow it and are kept.
    existing = path.read_text() if path.exists() else ""
    others = existing.find("\n## ")
    path.write_text(text.rstrip("\n") + "\n" + (existing[others:] if others != -1 else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a few seconds; figures mean nothing")
    parser.add_argument(
        "--write",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write the results file (default: on for the full run, off for --quick)",
    )
    add_results_option(parser)
    parser.add_argument("--json", action="store_true", help="also print the raw results")
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    started = time.monotonic()
    results = measure(settings)
    lines = figures(results, settings)
    print("\n".join(lines))
    if args.json:
        print(json.dumps(results, indent=1))
    say(f"done in {time.monotonic() - started:.0f} s")
    if args.write if args.write is not None else not args.quick:
        command = "python -m bench.relay" + (" --quick" if args.quick else "")
        write_results(lines, command, args.results)
        say(f"wrote {shown(args.results)}")


if __name__ == "__main__":
    main()
