"""Reconnect storm: how fast paired machines and a controller come back after a relay restart.

    python -m bench.storm [--machines 5000] [--load-processes 2] [--quick]

1. **Storm**: a real relay process and ``--machines`` paired machine identities whose
   connections run in ``--load-processes`` processes (``bench/storm/clients.py``), each
   connection following the shipped daemon's policy through the shipped ``RelayLink``
   (WebSocket, ``NodeAuth`` against the pinned relay key, ``starmux.backoff.Backoff``).
   The relay is restarted twice: **graceful** (SIGTERM: every peer gets a RESTARTING
   notice with a jittered ``retry_after``) and **crash** (SIGKILL: no notice, the
   machines back off). Measured from the new relay's "listening" line until every
   machine has authenticated again: all-back time, p50/p90, and the relay's CPU and
   RSS over that window.

   The registry is filled before the relay starts, through the real
   ``SqliteRegistry`` API (account, then create_ticket → open_ticket → grant_machine
   with a real grant signature for each machine): this skips the pairing handshake
   (``bench/storm/resync.py`` pairs for real, and ``tests/integration`` covers it)
   but leaves the relay exactly the rows pairing would.

2. **Controller resync** (``bench/storm/resync.py``): ``--controller-machines`` real
   daemons, paired for real, each with a session of history; after a SIGTERM restart,
   the time until a fresh ``LiveController`` has every machine live (Noise_KK re-run,
   log resynced).

``--quick`` is a scaled-down smoke run (20 machines in one load process, 2 daemons,
shorter pauses, the resync alongside the storm). The full run writes its figures to
``bench/RESULTS.md`` (its own section, "Reconnect storm").

Experiments, to measure a proposed change before making it (never by default, and
then RESULTS.md is left alone unless ``--write``): ``--policies`` adds reconnect
policies other than the daemon's (``bench/storm/clients.py``), and
``--profile DIR`` samples the relay with py-spy while it stops and during each storm.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvloop

from bench.common.procs import (
    LoadProcess,
    Profiler,
    RelayProcess,
    Sampler,
    free_port,
    peak_rss_kib,
)
from bench.common.relay_env import relay_env
from bench.common.results_file import add_results_option, shown
from bench.storm.clients import POLICIES, machine_card, machine_keys
from bench.storm.report import figures, quantile, write_results
from bench.storm.resync import run_resync
from starmux.home import ensure_private_dir, load_or_create_node_keys
from starmux.identity import NodeKeys, Role
from starmux.pairing_code import TICKET_SIZE
from starmux.relay.sqlite_registry import SqliteRegistry
from starmux.relay_auth import grant_transcript

if TYPE_CHECKING:  # asyncpg is the cluster extra's; the storm itself does not need it
    from starmux.relay.pg_registry import PostgresRegistry

#: Limits raised so the storm meets the relay's real work, not its per-IP guards
#: (every machine connects from 127.0.0.1 here).
RELAY_ENV = relay_env(20000)


@dataclass(frozen=True)
class Settings:
    machines: int
    load_processes: int
    controller_machines: int
    lines: int
    storm_timeout: float
    policies: tuple[str, ...] = ("shipped",)
    profile: Path | None = None  # py-spy the new relay during each storm; stacks here
    keep: bool = False  # keep the temporary folder (logs, registry) for a look afterwards
    settle: float = 1.0  # seconds for the last welcomes before a storm, and between storms
    #: Run the controller resync (its own relay) alongside the storm instead of after it:
    #: only for --quick, whose figures mean nothing; a full run keeps them apart.
    side_by_side: bool = False


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def populate_registry(path: Path, machines: int, salt: bytes) -> None:
    """One account and controller, and ``machines`` machines granted by it."""
    registry = SqliteRegistry(path)
    await registry.open()
    try:
        await fill_registry(registry, machines, salt)
    finally:
        await registry.close()


async def fill_registry(
    registry: SqliteRegistry | PostgresRegistry, machines: int, salt: bytes, *, parallel: int = 1
) -> None:
    """:func:`populate_registry` on an open registry (``bench.cluster`` fills PostgreSQL;
    ``parallel`` grants in flight overlap its round trips)."""
    controller = NodeKeys.generate()
    controller_key = controller.sign_public
    account = os.urandom(16)
    await registry.create_account(
        controller_key=controller_key,
        controller_card=controller.card(Role.CONTROLLER, "storm-controller").encode(),
        account=account,
        token_hash=None,
        now=time.time(),
    )

    async def grant(index: int) -> None:
        keys = machine_keys(salt, index)
        card = machine_card(keys, index).encode()
        ticket, now = os.urandom(TICKET_SIZE), time.time()
        await registry.create_ticket(
            ticket=ticket, machine_key=keys.sign_public, machine_card=card, now=now, ttl=600
        )
        await registry.open_ticket(ticket, controller_key=controller_key, now=now)
        await registry.grant_machine(
            ticket=ticket,
            account=account,
            granted_by=controller_key,
            machine_card=card,
            machine_key=keys.sign_public,
            grant_signature=controller.sign(grant_transcript(account, card, now)),
            grant_issued_at=now,
            now=now,
        )

    for first in range(0, machines, parallel):
        await asyncio.gather(*map(grant, range(first, min(first + parallel, machines))))


async def tell_progress(loads: list[LoadProcess], ready: float) -> None:
    while True:
        await asyncio.sleep(5.0)
        back = sum(int(load.progress.get("back", 0)) for load in loads)
        say(f"  {time.monotonic() - ready:.0f} s after ready: {back} back")


async def storm(
    relay: RelayProcess,
    loads: list[LoadProcess],
    sig: signal.Signals,
    settings: Settings,
    policy: str,
) -> dict[str, Any]:
    """Restart the relay with ``sig``; wait until every machine authenticated again."""
    since = time.monotonic()
    for load in loads:
        await load.send("arm", since=since, policy=policy)
    for load in loads:
        await load.expect("armed", within=30)
    load_samplers = [Sampler(load.pid, interval=0.25) for load in loads]
    stop_profiler = None
    if settings.profile is not None and sig == signal.SIGTERM:
        stop_profiler = await Profiler.start(relay.pid, settings.profile / f"{policy}-stop.txt")
        await asyncio.sleep(0.5)  # py-spy attaches
    relay.new_log_lines()
    signalled = time.monotonic()
    exited = await relay.stop(sig)
    stop_log = [line for line in relay.new_log_lines() if "ERROR" in line or "Error" in line]
    if stop_profiler is not None:
        say("\n".join(["relay profile while it stops:", *await stop_profiler.stop()]))
    await relay.start()
    ready = relay.ready_at
    sampler = Sampler(relay.pid)
    profiler = None
    if settings.profile is not None:
        name = f"{policy}-{'graceful' if sig == signal.SIGTERM else 'crash'}.txt"
        profiler = await Profiler.start(relay.pid, settings.profile / name)
    ticker = asyncio.create_task(tell_progress(loads, ready))
    reports: list[dict[str, Any]] = []
    for load in loads:
        try:
            remaining = max(1.0, ready + settings.storm_timeout - time.monotonic())
            reports.append(await load.expect("back", within=remaining))
        except TimeoutError:
            await load.send("report")
            reports.append(await load.expect("report", within=30))
    ticker.cancel()
    rss_hwm_mib = peak_rss_kib(relay.pid) / 1024
    await sampler.stop()
    if profiler is not None:
        say("\n".join(["relay profile during the storm:", *await profiler.stop()]))
    for load_sampler in load_samplers:
        await load_sampler.stop()
    times = sorted(t - ready for report in reports for t in report["times"])
    end = ready + (times[-1] if times else 0.0)
    stats: dict[str, int] = {}
    for report in reports:
        for name, value in report["stats"].items():
            stats[name] = stats.get(name, 0) + int(value)
    metrics = await relay.metrics()
    return {
        "mode": "graceful (SIGTERM)" if sig == signal.SIGTERM else "crash (SIGKILL)",
        "policy": policy,
        "back": len(times),
        "stop_s": exited - signalled,
        "start_s": ready - exited,
        "all_back_s": times[-1] if len(times) == settings.machines else math.inf,
        "p50_s": quantile(times, 0.5),
        "p90_s": quantile(times, 0.9),
        "first_s": times[0] if times else math.nan,
        "relay": sampler.between(ready, end),
        "rss_hwm_mib": rss_hwm_mib,
        "stop_log": stop_log,
        "load_cpu_pct": [s.between(ready, end)["cpu_pct"] for s in load_samplers],
        "stats": stats,
        "auth_failures": {
            re.sub(r'.*reason="([^"]+)".*', r"\1", name): int(value)
            for name, value in metrics.items()
            if name.startswith("starmux_relay_auth_failures_total")
        },
    }


async def run_storm(tmp: Path, settings: Settings) -> dict[str, Any]:
    data_dir = ensure_private_dir(tmp / "relay")
    salt = os.urandom(16)
    started = time.monotonic()
    await populate_registry(data_dir / "registry.sqlite3", settings.machines, salt)
    populate_s = time.monotonic() - started
    say(f"registry: {settings.machines} machines granted in {populate_s:.1f} s")
    relay_keys, _ = load_or_create_node_keys(data_dir / "relay.key")
    relay = RelayProcess(data_dir, free_port(), RELAY_ENV, tmp / "relay.log")
    await relay.start()
    loads: list[LoadProcess] = []
    try:
        share = -(-settings.machines // settings.load_processes)
        for n in range(settings.load_processes):
            first = n * share
            count = min(share, settings.machines - first)
            if count <= 0:
                break
            args = ["--url", relay.url, "--relay-key", relay_keys.sign_public.hex()]
            args += ["--salt", salt.hex(), "--first", str(first), "--count", str(count)]
            loads.append(
                await LoadProcess.start(
                    f"load {n}", "bench.storm.clients", *args, log_path=tmp / f"load{n}.log"
                )
            )
        connect_started = time.monotonic()
        for load in loads:
            await load.expect("connected", within=600)
        connect_s = time.monotonic() - connect_started
        await asyncio.sleep(settings.settle)  # let the last welcomes and presence settle
        steady_rss = Sampler(relay.pid).sample()
        say(f"connected: {settings.machines} machines in {connect_s:.1f} s")
        results = []
        for policy in settings.policies:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                result = await storm(relay, loads, sig, settings, policy)
                say(
                    f"{result['mode']}, {policy} policy: {result['back']} back, "
                    f"all in {result['all_back_s']:.2f} s"
                )
                results.append(result)
                await asyncio.sleep(settings.settle)
        return {
            "machines": settings.machines,
            "populate_s": populate_s,
            "connect_s": connect_s,
            "steady_rss_mib": steady_rss.rss_kib / 1024 if steady_rss else math.nan,
            "storms": results,
        }
    finally:
        for load in loads:
            await load.stop()
        await relay.stop(signal.SIGKILL)


async def run(settings: Settings) -> tuple[dict[str, Any], dict[str, Any] | None]:
    with contextlib.ExitStack() as stack:
        if settings.keep:
            tmp = Path(tempfile.mkdtemp(prefix="storm-"))
            say(f"keeping the relay's and the load processes' files in {tmp}")
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="storm-")))
        if settings.side_by_side and settings.controller_machines:
            say(f"controller resync: {settings.controller_machines} daemons, alongside the storm…")
            async with asyncio.TaskGroup() as group:
                stormed = group.create_task(run_storm(tmp, settings))
                resynced = group.create_task(controller_resync(tmp, settings))
            return stormed.result(), resynced.result()
        storm_results = await run_storm(tmp, settings)
        if not settings.controller_machines:
            return storm_results, None
        say(f"controller resync: {settings.controller_machines} daemons…")
        return storm_results, await controller_resync(tmp, settings)


async def controller_resync(tmp: Path, settings: Settings) -> dict[str, Any]:
    return await run_resync(
        tmp, machines=settings.controller_machines, lines=settings.lines, env=RELAY_ENV, say=say
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--machines", type=int, default=None, help="[5000; --quick: 20]")
    parser.add_argument("--load-processes", type=int, default=None, help="[2; --quick: 1]")
    parser.add_argument("--controller-machines", type=int, default=None, help="[100; --quick: 2]")
    parser.add_argument("--lines", type=int, default=100, help="history lines per daemon")
    parser.add_argument(
        "--policies",
        default="shipped",
        help=f"reconnect policies to storm, comma-separated, of {', '.join(POLICIES)} "
        "(only `shipped` is the daemon's; see bench/storm/clients.py) [shipped]",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy the relay during each storm; collapsed stacks go to this folder",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--skip-resync", action="store_true", help="only the storm")
    parser.add_argument("--quick", action="store_true", help="a scaled-down smoke run")
    parser.add_argument(
        "--write",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write the results file (default: only for a full run without experiments)",
    )
    add_results_option(parser)
    args = parser.parse_args()
    settings = Settings(
        machines=args.machines or (20 if args.quick else 5000),
        load_processes=args.load_processes or (1 if args.quick else 2),
        controller_machines=0
        if args.skip_resync
        else args.controller_machines or (2 if args.quick else 100),
        lines=args.lines,
        storm_timeout=60.0 if args.quick else 120.0,
        policies=tuple(p for p in args.policies.split(",") if p),
        profile=args.profile,
        keep=args.keep,
        settle=0.1 if args.quick else 1.0,
        side_by_side=args.quick,
    )
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    if unknown := set(settings.policies) - set(POLICIES):
        parser.error(f"unknown policies: {', '.join(sorted(unknown))}")
    started = time.monotonic()
    with open("/proc/loadavg") as loadavg:
        load_before = " ".join(loadavg.read().split()[:3])
    storm_results, resync = uvloop.run(run(settings))
    lines = figures(
        storm_results,
        resync,
        load_processes=settings.load_processes,
        load_before=load_before,
    )
    print("\n".join(lines))
    say(f"done in {time.monotonic() - started:.0f} s")
    experiment = settings.policies != ("shipped",)
    if args.write if args.write is not None else not (args.quick or experiment):
        write_results(lines, " ".join(["python -m bench.storm", *sys.argv[1:]]), args.results)
        say(f"wrote {shown(args.results)}")


if __name__ == "__main__":
    main()
