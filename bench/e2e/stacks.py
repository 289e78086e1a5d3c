"""The two stacks of the end-to-end benchmark, seen from its parent (``python -m bench.e2e``).

- :class:`StarmuxStack`: a relay process (``starmux relay serve``), ``N`` real daemons
  in one load process (``bench/e2e/daemons.py``) paired for real with a controller,
  and that controller's :class:`client.live.LiveController` in this process, counting
  the events it applies to its SQLite cache (``on_event`` runs after the commit).
- :class:`BareStack`: the bare forwarder (``bench/common/bare_forwarder.py``), ``N`` senders
  in one load process (``bench/e2e/bare.py``) and one receiver in this process
  (``bench/common/wsclient.py``), counting the messages it reads.

Each offers the same two windows: ``throughput`` (the senders as fast as flow control
lets them; received per second after a warm-up) and ``latency`` (a fixed total rate;
delay from the sender's stamp to the receiver, in nanoseconds of CLOCK_MONOTONIC).
:class:`CpuWindow` says how busy each process and the rest of the machine were.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.common.procs import (
    TICKS,
    LoadProcess,
    RelayProcess,
    cpu_seconds,
    free_port,
    machine_busy_seconds,
)
from bench.common.targets import BODY, MARKER
from bench.common.wsclient import COUNT, DISCARD, STAMP, RawWebSocket, connect
from bench.e2e.daemons import read_stamp
from starmux.client import actions
from starmux.client.live import LiveController
from starmux.client.store import ControllerStore
from starmux.messages import LoggedEvent
from starmux.pairing_code import parse_pairing_code

#: Every daemon connects from 127.0.0.1 and pairs within seconds: only the per-IP
#: guards are raised; the per-connection limits (frames, bytes, send queue) are shipped.
RELAY_ENV = {
    "STARMUX_RELAY_CONNECTIONS_PER_IP": "2000",
    "STARMUX_RELAY_PAIRING_REQUESTS_PER_MINUTE": "100000",
}
#: Events in flight (appended, not yet applied by the controller), over all machines.
FLOW_BUDGET = 1024
FEEDBACK = 0.01  # seconds between cursor reports to the daemons while they flood
RECEIVER_ID = b"\xff\xff"
SETUP_TIMEOUT = 60.0
DRAIN_TIMEOUT = 120.0

Say = Callable[[str], None]


# --- CPU -----------------------------------------------------------------------------------


def _tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` and its descendants, with the children they reaped."""
    parent: dict[int, int] = {}
    spent: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        pid = int(entry)
        parent[pid] = int(fields[1])
        spent[pid] = sum(int(f) for f in fields[11:15]) / TICKS  # utime stime cutime cstime
    total = 0.0
    for pid, seconds in spent.items():
        ancestor = pid
        while ancestor > 1 and ancestor != root:
            ancestor = parent.get(ancestor, 0)
        if ancestor == root:
            total += seconds
    return total


class CpuWindow:
    """Cores used over a window by named processes, by this benchmark's whole process
    tree ("ours") and by everything else on the machine ("others")."""

    def __init__(self, named: dict[str, int]) -> None:
        self.named = named
        self.start = time.monotonic()
        self.cpu = {name: cpu_seconds(pid) for name, pid in named.items()}
        self.ours = _tree_cpu(os.getpid())
        self.busy = machine_busy_seconds()

    def read(self) -> dict[str, float]:
        wall = time.monotonic() - self.start
        ours = _tree_cpu(os.getpid()) - self.ours
        result = {
            f"cpu_{name}": (cpu_seconds(pid) - self.cpu[name]) / wall
            for name, pid in self.named.items()
        }
        result["cpu_ours"] = ours / wall
        result["cpu_others"] = max(0.0, machine_busy_seconds() - self.busy - ours) / wall
        return result


# --- starmux ---------------------------------------------------------------------------------


class StarmuxStack:
    def __init__(self, relay: RelayProcess, host: LoadProcess, store: ControllerStore) -> None:
        self.relay = relay
        self.host = host
        self.store = store
        self.controller: LiveController | None = None
        self.index: dict[bytes, int] = {}  # machine key → daemon index
        self.applied: list[int] = []  # the controller's cursor per daemon
        self.count = 0  # events applied so far
        self.delays: list[int] | None = None  # ns, while a latency window runs
        self._moved: set[int] = set()

    @classmethod
    async def start(cls, tmp: Path, machines: int, say: Say) -> StarmuxStack:
        relay = RelayProcess(tmp / "relay", free_port(), RELAY_ENV, tmp / "relay.log")
        await relay.start()
        home = tmp / "controller"
        token = str(relay.started["registration_token"])
        await actions.init(home, relay_url=relay.url, token=token, name="e2e-controller")
        host = await LoadProcess.start(
            "daemon host", "bench.e2e.daemons",
            "--url", relay.url, "--count", str(machines), "--root", str(tmp / "daemons"),
            log_path=tmp / "daemons.log",
        )  # fmt: skip
        for done in range(machines):
            event = await host.expect("code", within=SETUP_TIMEOUT)
            code = parse_pairing_code(event["code"])
            await actions.pair(home, code, confirm=lambda card, comparison: True)
            if (done + 1) % 25 == 0:
                say(f"    paired {done + 1}/{machines}")
        paired = await host.expect("all-paired", within=SETUP_TIMEOUT)
        store = ControllerStore(home)
        await store.open()
        stack = cls(relay, host, store)
        stack.index = {bytes.fromhex(key): i for i, key in enumerate(paired["machines"])}
        stack.applied = [0] * machines
        stack.controller = LiveController(store, await store.config(), on_event=stack.on_event)
        await stack.controller.start()
        live = await stack.controller.wait_live(within=SETUP_TIMEOUT)
        if len(live) < machines:
            raise RuntimeError(f"only {len(live)}/{machines} machines went live")
        await host.send("prepare")
        prepared = await host.expect("prepared", within=SETUP_TIMEOUT)
        await stack.wait_applied(prepared["last_seq"], within=SETUP_TIMEOUT)
        return stack

    @property
    def pids(self) -> dict[str, int]:
        return {"controller": os.getpid(), "relay": self.relay.pid, "daemons": self.host.pid}

    def on_event(self, machine: bytes, event: LoggedEvent) -> None:
        index = self.index.get(machine)
        if index is None:
            return
        self.applied[index] = event.seq
        self._moved.add(index)
        self.count += 1
        if self.delays is not None and (stamp := read_stamp(event.body)) is not None:
            self.delays.append(time.monotonic_ns() - stamp)

    def _check_open(self) -> None:
        assert self.controller is not None
        if self.controller.closed.is_set():
            reason = self.controller.close_reason
            raise RuntimeError(f"the controller's relay connection closed: {reason}")

    async def wait_applied(self, last_seq: list[int], *, within: float) -> None:
        """Until the controller applied every daemon's log up to ``last_seq``."""
        deadline = time.monotonic() + within
        while any(a < s for a, s in zip(self.applied, last_seq, strict=True)):
            self._check_open()
            if time.monotonic() > deadline:
                behind = sum(max(0, s - a) for a, s in zip(self.applied, last_seq, strict=True))
                raise RuntimeError(f"the controller is still {behind} events behind")
            await asyncio.sleep(0.01)

    async def _feedback(self) -> None:
        while True:
            await asyncio.sleep(FEEDBACK)
            if self._moved:
                seqs = {str(i): self.applied[i] for i in self._moved}
                self._moved.clear()
                await self.host.send("applied", seqs=seqs)

    async def throughput(self, warmup: float, seconds: float) -> dict[str, Any]:
        window = max(8, FLOW_BUDGET // len(self.applied))
        self._moved = set(range(len(self.applied)))
        feedback = asyncio.get_running_loop().create_task(self._feedback())
        try:
            await self.host.send("flood", window=window, burst=max(1, window // 4))
            await self.host.expect("flooding", within=10)
            await asyncio.sleep(warmup)
            before, meter = self.count, CpuWindow(self.pids)
            await asyncio.sleep(seconds)
            events, cpu = self.count - before, meter.read()
            elapsed = time.monotonic() - meter.start
            await self.host.send("stop-flood")
            stopped = await self.host.expect("flood-stopped", within=DRAIN_TIMEOUT)
            await self.wait_applied(stopped["last_seq"], within=DRAIN_TIMEOUT)
        finally:
            feedback.cancel()
        self._check_open()
        return {"per_s": events / elapsed, "events": events, "window": window, **cpu}

    async def latency(self, rate: float, warmup: float, seconds: float) -> dict[str, Any]:
        self.delays = []
        await self.host.send("pace", rate=rate, seconds=warmup + seconds)
        await asyncio.sleep(warmup)
        self.delays.clear()
        meter = CpuWindow(self.pids)
        await asyncio.sleep(seconds)
        cpu = meter.read()
        paced = await self.host.expect("paced", within=DRAIN_TIMEOUT)
        await self.wait_applied(paced["last_seq"], within=DRAIN_TIMEOUT)
        delays, self.delays = sorted(self.delays), None
        self._check_open()
        return {"delays": delays, "sent": int(paced["sent"]), **cpu}

    async def close(self) -> None:
        if self.controller is not None:
            await self.controller.close()
        await self.store.close()
        await self.host.stop()
        await self.relay.stop(signal.SIGKILL)


# --- bare --------------------------------------------------------------------------------------


class BareStack:
    def __init__(self, forwarder: LoadProcess, senders: LoadProcess, receiver: RawWebSocket):
        self.forwarder = forwarder
        self.senders = senders
        self.receiver = receiver

    @classmethod
    async def start(cls, tmp: Path, machines: int) -> BareStack:
        if time.get_clock_info("perf_counter").implementation != (
            time.get_clock_info("monotonic").implementation
        ):  # the receiver reads perf_counter_ns; the senders stamp monotonic_ns
            raise RuntimeError("perf_counter is not CLOCK_MONOTONIC here: latencies would lie")
        forwarder = await LoadProcess.start(
            "bare forwarder",
            "bench.common.bare_forwarder",
            "--port",
            "0",
            log_path=tmp / "bare.log",
        )
        url = (await forwarder.expect("listening", within=SETUP_TIMEOUT))["url"]
        parts = urlsplit(url)
        receiver = await connect(parts.hostname or "127.0.0.1", parts.port or 80, "/v1/ws")
        receiver.send(RECEIVER_ID)
        receiver.mode = DISCARD
        await asyncio.sleep(0.2)  # the forwarder registers the receiver before any sender
        senders = await LoadProcess.start(
            "bare senders", "bench.e2e.bare",
            "--url", url, "--count", str(machines), "--to", RECEIVER_ID.hex(),
            log_path=tmp / "bare-senders.log",
        )  # fmt: skip
        await senders.expect("connected", within=SETUP_TIMEOUT)
        return cls(forwarder, senders, receiver)

    @property
    def pids(self) -> dict[str, int]:
        return {
            "receiver": os.getpid(),
            "forwarder": self.forwarder.pid,
            "senders": self.senders.pid,
        }

    async def throughput(self, warmup: float, seconds: float) -> dict[str, Any]:
        receiver = self.receiver
        receiver.count, receiver.mode = 0, COUNT
        await self.senders.send("flood")
        await self.senders.expect("flooding", within=10)
        await asyncio.sleep(warmup)
        before, meter = receiver.count, CpuWindow(self.pids)
        await asyncio.sleep(seconds)
        messages, cpu = receiver.count - before, meter.read()
        elapsed = time.monotonic() - meter.start
        await self.senders.send("stop-flood")
        sent = int((await self.senders.expect("flood-stopped", within=10))["sent"])
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while receiver.count < sent and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        receiver.mode = DISCARD
        if receiver.count < sent:
            raise RuntimeError(f"the bare receiver got {receiver.count} of {sent} messages")
        return {"per_s": messages / elapsed, "events": messages, **cpu}

    async def latency(self, rate: float, warmup: float, seconds: float) -> dict[str, Any]:
        receiver, delays = self.receiver, list[int]()
        receiver.delays = delays
        receiver.stamp_offset = (RECEIVER_ID + BODY).find(MARKER)
        receiver.mode = STAMP
        await self.senders.send("pace", rate=rate, seconds=warmup + seconds)
        await asyncio.sleep(warmup)
        delays.clear()
        meter = CpuWindow(self.pids)
        await asyncio.sleep(seconds)
        cpu = meter.read()
        paced = await self.senders.expect("paced", within=DRAIN_TIMEOUT)
        await asyncio.sleep(0.3)  # the last ones arrive
        receiver.mode = DISCARD
        sent = int(paced["sent"]) - int(paced["dropped"])
        return {"delays": sorted(delays), "sent": sent, **cpu}

    async def close(self) -> None:
        self.receiver.abort()
        await self.senders.stop()
        if self.forwarder.proc.returncode is None:
            self.forwarder.proc.terminate()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await self.forwarder.proc.wait()
        await self.forwarder.stop()
