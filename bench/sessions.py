"""Sessions through every real part: chatty-session throughput and approve latency.

    python bench/sessions.py [--lines 200000] [--approvals 50]

Starts a relay and a daemon as processes (like ``starmux demo``), pairs a controller
(in this process) and measures:

- **chatty**: one session prints ``--lines`` numbered 100-byte lines as fast as it
  can; every line is durable in the daemon's event log (group commit) and delivered
  through the relay to this controller, which applies it to its SQLite cache.
  Reports lines/s and log events/s from the first to the last line applied.
- **approve**: a session raises ``--approvals`` checkpoints one after another with
  ``starmux checkpoint``; for each, the time from this controller submitting its
  signed approval to the agent process running again (the agent prints the time it
  continued; same machine, same clock). Reports median and p90.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if not p.endswith("/bench")]  # bench/relay.py shadows relay

from starmux.client.cache import Cache  # noqa: E402
from starmux.client.demo import DemoReport, Process, set_up_locally  # noqa: E402
from starmux.client.live import LiveController  # noqa: E402
from starmux.client.sessions import signed_decision  # noqa: E402
from starmux.client.store import ControllerStore  # noqa: E402
from starmux.messages import (  # noqa: E402
    APP,
    CheckpointRaised,
    LoggedEvent,
    Output,
    SessionStatusChanged,
    StartSession,
)

CHATTY = """\
import sys
out = sys.stdout
pad = "x" * 90
for i in range(1, {lines} + 1):
    out.write(f"{{i:08d}}{{pad}}\\n")
"""

APPROVER = """\
import subprocess, sys, time
for i in range({count}):
    subprocess.run([sys.executable, "-m", "starmux.cli", "checkpoint", f"step {{i}}",
                    "--timeout", "5m"], check=True, stdout=subprocess.DEVNULL)
    print(f"continued {{i}} {{time.time():.6f}}", flush=True)
"""


async def chatty(home: Path, root: Path, lines: int) -> dict[str, float]:
    done = asyncio.Event()
    state = {"lines": 0, "events": 0, "first": 0.0, "last": 0.0}
    session = f"s-chatty{int(time.time())}"

    def on_event(machine: bytes, event: LoggedEvent) -> None:
        if event.session != session:
            return
        message = APP.decode(event.body)
        if isinstance(message, Output):
            if not state["first"]:
                state["first"] = time.perf_counter()
            state["lines"] += message.data.count(b"\n")
            state["events"] += 1
            state["last"] = time.perf_counter()
        elif isinstance(message, SessionStatusChanged) and message.status == "succeeded":
            done.set()

    async with ControllerStore(home) as store:
        controller = LiveController(store, await store.config(), on_event=on_event)
        await controller.start()
        machine = next(iter(controller.machines))
        await controller.wait_live([machine])
        code = CHATTY.format(lines=lines)
        await controller.submit(
            machine,
            StartSession(
                session, (sys.executable, "-c", code), str(root / "work"), "chatty", {}, False
            ),
        )
        async with asyncio.timeout(600):
            await done.wait()
        await controller.close()
    seconds = state["last"] - state["first"]
    assert state["lines"] == lines, state
    return {
        "lines": lines,
        "seconds": seconds,
        "lines_per_s": lines / seconds,
        "events_per_s": state["events"] / seconds,
        "events": state["events"],
    }


async def approvals(home: Path, root: Path, count: int) -> dict[str, float]:
    raised: asyncio.Queue[str] = asyncio.Queue()
    continued: asyncio.Queue[float] = asyncio.Queue()
    session = f"s-approve{int(time.time())}"

    def on_event(machine: bytes, event: LoggedEvent) -> None:
        if event.session != session:
            return
        message = APP.decode(event.body)
        if isinstance(message, CheckpointRaised):
            raised.put_nowait(message.checkpoint)
        elif isinstance(message, Output):
            for line in message.data.decode().splitlines():
                if line.startswith("continued"):
                    continued.put_nowait(float(line.split()[2]))

    latencies = []
    async with ControllerStore(home) as store:
        controller = LiveController(store, await store.config(), on_event=on_event)
        await controller.start()
        machine = next(iter(controller.machines))
        await controller.wait_live([machine])
        code = APPROVER.format(count=count)
        await controller.submit(
            machine,
            StartSession(
                session, (sys.executable, "-c", code), str(root / "work"), "approver", {}, False
            ),
        )
        keys = store.keys()
        for _ in range(count):
            async with asyncio.timeout(60):
                checkpoint_id = await raised.get()
            row = await Cache(store.db).checkpoint(checkpoint_id)
            assert row is not None
            started = time.time()
            ack = await controller.submit(
                machine, signed_decision(keys, row, approve=True, reason="bench")
            )
            assert ack is not None and ack.ok, ack
            async with asyncio.timeout(60):
                latencies.append(await continued.get() - started)
        await controller.close()
    latencies.sort()
    return {
        "count": count,
        "median_ms": statistics.median(latencies) * 1000,
        "p90_ms": latencies[int(len(latencies) * 0.9) - 1] * 1000,
        "min_ms": latencies[0] * 1000,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--approvals", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="starmux-bench-") as tmp:
        root = Path(tmp)
        processes: list[Process] = []
        try:
            home = await set_up_locally(root, processes, DemoReport(), say=lambda text: None)
            result = await chatty(home, root, args.lines)
            print(
                f"chatty session: {result['lines']} lines of 100 bytes in "
                f"{result['seconds']:.2f} s = {result['lines_per_s']:,.0f} lines/s "
                f"({result['events']:.0f} log events, {result['events_per_s']:,.0f} events/s)"
                ", durable on the daemon and applied by the controller"
            )
            result = await approvals(home, root, args.approvals)
            print(
                f"approve → agent continues: median {result['median_ms']:.1f} ms, "
                f"p90 {result['p90_ms']:.1f} ms, min {result['min_ms']:.1f} ms "
                f"over {result['count']:.0f} checkpoints"
            )
        finally:
            for process in processes:
                await process.stop()


if __name__ == "__main__":
    asyncio.run(main())
