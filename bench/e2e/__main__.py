"""End to end: controller ⇄ relay ⇄ N daemons, side by side with the bare forwarder.

    python -m bench.e2e [--quick] [--shapes 1x1,10x4,100x4,100x1] [--profile DIR]

The full path: real keys, real pairing, Noise_KK channels, each daemon's durable
event log and the controller's SQLite cache (``bench/e2e/stacks.py``), measured in
the same run as the least router on the relay's stack (``bench/common/bare_forwarder.py``)
carrying the same 1 KiB from N senders to one receiver. The controller runs alone in
its process (``bench/e2e/controller.py``), as on a laptop; the N daemons are spread
over K processes (``bench/e2e/daemons.py``), as real machines are; K = 1 (all daemons
in one process, which then costs them more than N machines would) is kept as a row.
For each shape N×K:

1. **events/s delivered** to a watching ``LiveController``: every daemon appends
   ``Output`` events (1 KiB of data) to its ``EventLog`` as fast as an end-to-end
   window of unapplied events lets it; counted as the controller applies them. Bare:
   messages/s the receiver reads while the senders flood. With it, **CPU µs per
   event** of each part (controller, relay, daemons; bare: receiver, forwarder,
   senders) from ``/proc`` over the window.
2. **latency** from the daemon's append to the controller's apply (bare: send to
   read), p50/p99 at ``--rate`` events/s in all, spread over the N machines.

Both stacks run at once; each round gives starmux, then bare, the same window.
Then **approve → blocked process continues** for one machine, by
``python -m bench.sessions``'s method (no bare counterpart).

In the throughput windows every machine may have 1,024 events appended and not yet
applied, as one machine alone has: each of the N machines floods as the one
machine of 1×1 does (bursts of 256), and what reaches the controller is paced by
the product's own flow control (``live-ack``: each machine's share of the
controller's window, PROTOCOL.md 6.4). ``--window W`` sets that per machine (bursts
of ``W``/4). ``--shared-window`` is the shape of the first measurements: 1,024
events shared by all machines, 10 each at N = 100, so that every machine commits
and sends two events at a time, waiting on the harness's own cursor reports every
ten events, while the one machine of 1×1 commits 256; it stood in for flow control
the product did not have yet (neither is written to RESULTS.md).

``--quick``: 2×2 only, one short round, the approve round trip alongside it (a few
seconds; its figures are a smoke test). The full run (1×1, 10×4, 100×4, 100×1; about
6 minutes) writes the "End-to-end" section of ``bench/RESULTS.md``. ``--profile DIR``
samples the controller, the first daemon process and the relay with py-spy during the
first starmux throughput and latency windows of each shape (figures then perturbed:
RESULTS.md is left alone unless ``--write``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common.procs import Profiler
from bench.common.results_file import add_results_option, shown
from bench.e2e.report import figures, summarize, write_results
from bench.e2e.stacks import BARE_ARRIVAL, BareStack, CpuWindow, StarmuxStack
from bench.sessions.measure import approvals
from starmux.client.demo import DemoReport, Process, set_up_locally


@dataclass(frozen=True)
class Settings:
    #: (N machines, K daemon processes): K = 1 is the one-process shape, kept as a row.
    shapes: tuple[tuple[int, int], ...] = ((1, 1), (10, 4), (100, 4), (100, 1))
    rounds: int = 3
    warmup: float = 1.0
    seconds: float = 3.0  # throughput windows
    latency_seconds: float = 3.0
    rate: float = 1000.0  # events/s in all, latency windows
    approvals: int = 50
    arrival: float = BARE_ARRIVAL  # seconds the bare receiver waits after a latency window
    profile: Path | None = None
    #: events in flight per machine in the throughput windows (None: FLOW_BUDGET each)
    window: int | None = None
    #: FLOW_BUDGET split between all machines instead (the first measurements' shape)
    shared_window: bool = False
    #: Run the approve round trip (a relay and daemon of its own) alongside the shapes
    #: instead of after them: only for --quick, whose figures mean nothing.
    side_by_side: bool = False


FULL = Settings()
QUICK = Settings(shapes=((2, 2),), rounds=1, warmup=0.05, seconds=0.1, latency_seconds=0.1,
                 approvals=2, arrival=0.05, side_by_side=True)  # fmt: skip


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def _profiled(
    stack: StarmuxStack, window: Callable[[], Awaitable[dict[str, Any]]], path: Path | None
) -> dict[str, Any]:
    """One starmux window, with py-spy on its three processes if ``path`` is given
    (collapsed stacks in ``path``-NAME.txt)."""
    if path is None:
        return await window()
    profilers = {
        name: await Profiler.start(pid, path.with_name(f"{path.name}-{name}.txt"))
        for name, pids in stack.pids.items()
        for pid in pids[:1]  # the first daemon host stands for the others
    }
    await asyncio.sleep(0.5)  # py-spy attaches
    try:
        return await window()
    finally:
        for name, profiler in profilers.items():
            top = (await profiler.stop())[:40]
            say("\n".join([f"profile of the {name} ({path.name}):", *top]))


async def measure(tmp: Path, n: int, processes: int, settings: Settings) -> dict[str, Any]:
    started = time.monotonic()
    starmux = bare = None
    try:
        starmux = await StarmuxStack.start(tmp / "starmux", n, processes, say)
        bare = await BareStack.start(tmp / "bare", n)
        setup_s = time.monotonic() - started
        say(f"  N = {n} over {processes}: both stacks up in {setup_s:.1f} s")
        rounds: dict[str, dict[str, list[dict[str, Any]]]] = {
            "starmux": {"tp": [], "lat": []}, "bare": {"tp": [], "lat": []},
        }  # fmt: skip
        profile = settings.profile
        for number in range(settings.rounds):
            path = profile / f"n{n}x{processes}-throughput" if profile and number == 0 else None
            result = await _profiled(
                starmux,
                lambda: starmux.throughput(
                    settings.warmup,
                    settings.seconds,
                    settings.window,
                    shared=settings.shared_window,
                ),
                path,
            )
            rounds["starmux"]["tp"].append(result)
            rounds["bare"]["tp"].append(await bare.throughput(settings.warmup, settings.seconds))
            rates = rounds["starmux"]["tp"][-1]["per_s"], rounds["bare"]["tp"][-1]["per_s"]
            say(f"  N = {n}, round {number + 1}: starmux {rates[0]:,.0f} events/s, "
                f"bare {rates[1]:,.0f} msg/s")  # fmt: skip
        shape = (settings.rate, settings.warmup, settings.latency_seconds)
        for number in range(settings.rounds):
            path = profile / f"n{n}x{processes}-latency" if profile and number == 0 else None
            result = await _profiled(starmux, lambda: starmux.latency(*shape), path)
            rounds["starmux"]["lat"].append(result)
            rounds["bare"]["lat"].append(await bare.latency(*shape, settings.arrival))
            say(f"  N = {n}, latency round {number + 1} done")
    finally:
        for stack in (starmux, bare):
            if stack is not None:
                with contextlib.suppress(Exception):
                    await stack.close()
    return {
        "machines": n,
        "processes": processes,
        "setup_s": setup_s,
        **{kind: summarize(n, kind, r["tp"], r["lat"]) for kind, r in rounds.items()},
    }


async def approve(tmp: Path, count: int) -> dict[str, float]:
    processes: list[Process] = []
    try:
        home = await set_up_locally(tmp, processes, DemoReport(), say=lambda text: None)
        meter = CpuWindow({})
        result = await approvals(home, tmp, count)
        cpu = meter.read()
    finally:
        for process in processes:
            await process.stop()
    return {**result, "busy_cores": cpu["cpu_ours"] + cpu["cpu_others"], **cpu}


async def shapes(tmp: Path, settings: Settings) -> list[dict[str, Any]]:
    per_n = []
    for n, processes in settings.shapes:
        say(f"N = {n}: starting a relay, {n} daemons over {processes} processes (paired "
            "one by one), a controller, the bare forwarder and its senders…")  # fmt: skip
        where = tmp / f"n{n}x{processes}"
        (where / "starmux").mkdir(parents=True)
        (where / "bare").mkdir(parents=True)
        per_n.append(await measure(where, n, processes, settings))
    return per_n


async def run(settings: Settings, load_before: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="starmux-e2e-") as name:
        tmp = Path(name)
        (tmp / "approve").mkdir()
        if settings.side_by_side:
            say(f"approve round trip: {settings.approvals} checkpoints on one machine, "
                "alongside the shapes…")  # fmt: skip
            async with asyncio.TaskGroup() as group:
                measured = group.create_task(shapes(tmp, settings))
                approved = group.create_task(approve(tmp / "approve", settings.approvals))
            per_n, approve_result = measured.result(), approved.result()
        else:
            per_n = await shapes(tmp, settings)
            say(f"approve round trip: {settings.approvals} checkpoints on one machine…")
            approve_result = await approve(tmp / "approve", settings.approvals)
    return {
        "settings": asdict(settings),
        "load_before": load_before,
        "per_n": per_n,
        "approve": approve_result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2x2 only; one short round")
    parser.add_argument(
        "--shapes",
        default=None,
        help="comma-separated NxK: N machines over K daemon processes [1x1,10x4,100x4,100x1]",
    )
    parser.add_argument("--rounds", type=int, default=None, help="[3; --quick: 1]")
    parser.add_argument("--rate", type=float, default=None, help="latency, events/s [1000]")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy stacks go here")
    parser.add_argument(
        "--window",
        type=int,
        default=None,
        help="throughput: events in flight per machine [1,024 each, as one machine alone]",
    )
    parser.add_argument(
        "--shared-window",
        action="store_true",
        help="throughput: 1,024 events in flight shared by all machines (the first "
        "measurements' shape: a few events per machine at a time)",
    )
    parser.add_argument(
        "--write",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write the results file (default: only the full run)",
    )
    add_results_option(parser)
    args = parser.parse_args()
    base = QUICK if args.quick else FULL
    settings = Settings(
        shapes=tuple(
            (int(n), int(k)) for n, k in (shape.split("x") for shape in args.shapes.split(","))
        )
        if args.shapes
        else base.shapes,
        rounds=args.rounds or base.rounds,
        warmup=base.warmup,
        seconds=base.seconds,
        latency_seconds=base.latency_seconds,
        rate=args.rate or base.rate,
        approvals=base.approvals,
        arrival=base.arrival,
        profile=args.profile,
        window=args.window,
        shared_window=args.shared_window,
        side_by_side=base.side_by_side,
    )
    if settings.profile is not None:
        settings.profile.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open("/proc/loadavg") as loadavg:
        load_before = " ".join(loadavg.read().split()[:3])
    results = asyncio.run(run(settings, load_before))
    lines = figures(results)
    print("\n".join(lines))
    say(f"done in {time.monotonic() - started:.0f} s")
    default_write = settings == FULL  # not --quick, --profile or other sizes
    if args.write if args.write is not None else default_write:
        write_results(lines, " ".join(["python -m bench.e2e", *sys.argv[1:]]), args.results)
        say(f"wrote {shown(args.results)}")


if __name__ == "__main__":
    main()
