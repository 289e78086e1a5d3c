"""The two measurements of ``python -m bench.sessions`` (``approvals`` is also part
of ``python -m bench.e2e``): each drives a paired daemon from a controller in this
process."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

from starmux.client.cache import Cache
from starmux.client.live import LiveController
from starmux.client.sessions import signed_decision
from starmux.client.store import ControllerStore
from starmux.messages import (
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
