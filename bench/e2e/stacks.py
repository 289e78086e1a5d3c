"""The two stacks of the end-to-end benchmark, seen from its parent (``python -m bench.e2e``).

- :class:`StarmuxStack`: a relay process (``starmux relay serve``), ``N`` real daemons
  spread over ``K`` load processes (``bench/e2e/daemons.py``; real machines are
  separate processes, and ``K`` = 1 is the old, harsher shape) paired for real with a
  controller, and that controller alone in its own process (``bench/e2e/controller.py``),
  counting the events it applies to its SQLite cache (``on_event`` runs after the
  commit).
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
import sys
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
from bench.common.relay_env import relay_env
from bench.common.targets import BODY, MARKER
from bench.common.wsclient import COUNT, DISCARD, STAMP, RawWebSocket, connect
from starmux.client import actions
from starmux.pairing_code import parse_pairing_code

#: Every daemon connects from 127.0.0.1 and pairs within seconds: only the per-IP
#: guards are raised; the per-connection limits (frames, bytes, send queue) are shipped.
RELAY_ENV = relay_env(2000)
#: Events a machine may have appended and the controller not applied yet: each
#: machine's, as one machine alone has (``shared``: over all machines together).
FLOW_BUDGET = 1024
RECEIVER_ID = b"\xff\xff"
SETUP_TIMEOUT = 60.0
DRAIN_TIMEOUT = 120.0
BARE_DRAIN_TIMEOUT = 30.0
#: Seconds the bare receiver keeps reading after a latency window, for the last ones.
BARE_ARRIVAL = 0.3

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


def run_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` in nanoseconds from ``schedstat``: windows of a
    second need better than ``/proc/PID/stat``'s 10 ms ticks."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return cpu_seconds(pid)
    for task in tasks:
        with (
            contextlib.suppress(FileNotFoundError, ProcessLookupError),
            open(f"/proc/{pid}/task/{task}/schedstat") as schedstat,
        ):
            total += int(schedstat.read().split()[0])
    return total / 1e9


class CpuWindow:
    """Cores used over a window by named groups of processes, by this benchmark's whole
    process tree ("ours") and by everything else on the machine ("others")."""

    def __init__(self, named: dict[str, list[int]]) -> None:
        self.named = named
        self.start = time.monotonic()
        self.cpu = {name: self._cpu(pids) for name, pids in named.items()}
        self.ours = _tree_cpu(os.getpid())
        self.busy = machine_busy_seconds()

    @staticmethod
    def _cpu(pids: list[int]) -> float:
        return sum(run_seconds(pid) for pid in pids)

    def read(self, events: float | None = None) -> dict[str, float]:
        """Cores per group over the window; with ``events``, also CPU µs per event
        (``us_NAME``) for each group."""
        wall = time.monotonic() - self.start
        ours = _tree_cpu(os.getpid()) - self.ours
        spent = {name: self._cpu(pids) - self.cpu[name] for name, pids in self.named.items()}
        result = {f"cpu_{name}": seconds / wall for name, seconds in spent.items()}
        if events:
            result.update({f"us_{name}": 1e6 * s / events for name, s in spent.items()})
        result["cpu_ours"] = ours / wall
        result["cpu_others"] = max(0.0, machine_busy_seconds() - self.busy - ours) / wall
        return result


# --- starmux ---------------------------------------------------------------------------------


def shares(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal counts (the first ones one larger)."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


class StarmuxStack:
    """A relay, ``N`` daemons over ``K`` host processes, a controller in its own."""

    def __init__(
        self, relay: RelayProcess, hosts: list[LoadProcess], controller: LoadProcess
    ) -> None:
        self.relay = relay
        self.hosts = hosts
        self.controller = controller
        self.where: dict[str, tuple[int, int]] = {}  # machine hex → (host, index in it)
        self.sizes: list[int] = []
        self.live_order: list[str] = []  # machine hex by the controller's index

    @classmethod
    async def start(cls, tmp: Path, machines: int, processes: int, say: Say) -> StarmuxStack:
        relay = RelayProcess(tmp / "relay", free_port(), RELAY_ENV, tmp / "relay.log")
        await relay.start()
        home = tmp / "controller"
        token_file = Path(str(relay.started["registration_token_file"]))
        token = (await asyncio.to_thread(token_file.read_text)).strip()
        await actions.init(home, relay_url=relay.url, token=token, name="e2e-controller")
        hosts: list[LoadProcess] = []
        first, sizes = 0, shares(machines, processes)
        for h, count in enumerate(sizes):
            hosts.append(
                await LoadProcess.start(
                    f"daemon host {h}",
                    "bench.e2e.daemons",
                    "--url",
                    relay.url,
                    "--count",
                    str(count),
                    "--first",
                    str(first),
                    "--root",
                    str(tmp / f"daemons{h}"),
                    log_path=tmp / f"daemons{h}.log",
                )
            )
            first += count
        done = 0
        where: dict[str, tuple[int, int]] = {}
        for h, host in enumerate(hosts):
            for _ in range(sizes[h]):
                event = await host.expect("code", within=SETUP_TIMEOUT)
                code = parse_pairing_code(event["code"])
                await actions.pair(home, code, confirm=lambda card, comparison: True)
                done += 1
                if done % 25 == 0:
                    say(f"    paired {done}/{machines}")
            paired = await host.expect("all-paired", within=SETUP_TIMEOUT)
            where.update({key: (h, i) for i, key in enumerate(paired["machines"])})
        controller = await LoadProcess.start(
            "controller", "bench.e2e.controller", "--home", str(home),
            log_path=tmp / "controller.log",
        )  # fmt: skip
        stack = cls(relay, hosts, controller)
        stack.where, stack.sizes = where, sizes
        controller.listeners["applied"] = stack._relay_cursors
        live = await controller.expect("live", within=SETUP_TIMEOUT)
        stack.live_order = live["machines"]
        if len(live["machines"]) < machines:
            raise RuntimeError(f"only {len(live['machines'])}/{machines} machines went live")
        for host in hosts:
            await host.send("prepare")
        await stack.wait_applied(await stack._last_seqs("prepared"), within=SETUP_TIMEOUT)
        return stack

    @property
    def pids(self) -> dict[str, list[int]]:
        return {
            "controller": [self.controller.pid],
            "relay": [self.relay.pid],
            "daemons": [host.pid for host in self.hosts],
        }

    def _relay_cursors(self, message: dict[str, Any]) -> None:
        """The controller's cursors to the daemons' hosts (their flow control)."""
        per_host: dict[int, dict[str, int]] = {}
        for i, seq in message["seqs"]:
            h, index = self.where[self.live_order[i]]
            per_host.setdefault(h, {})[str(index)] = seq
        for h, seqs in per_host.items():
            self.hosts[h].send_nowait("applied", seqs=seqs)

    async def _last_seqs(self, event: str, within: float = SETUP_TIMEOUT) -> dict[str, int]:
        """Every host's answer ``event`` (in host order), as machine hex → last seq."""
        by_host = [(await host.expect(event, within=within))["last_seq"] for host in self.hosts]
        return {key: by_host[h][i] for key, (h, i) in self.where.items()}

    async def wait_applied(self, last_seq: dict[str, int], *, within: float) -> None:
        """Until the controller applied every daemon's log up to ``last_seq``."""
        await self.controller.send("wait", last_seq=last_seq)
        await self.controller.expect("caught-up", within=within)

    async def _count(self) -> tuple[int, float]:
        await self.controller.send("count")
        return int((await self.controller.expect("count", within=10))["count"]), time.monotonic()

    async def throughput(
        self, warmup: float, seconds: float, window: int | None = None, *, shared: bool = False
    ) -> dict[str, Any]:
        """``window``: events in flight per machine (default: :data:`FLOW_BUDGET`, or
        with ``shared`` that budget split between the machines)."""
        window = window or (max(8, FLOW_BUDGET // len(self.where)) if shared else FLOW_BUDGET)
        await self.controller.send("feedback", on=True)
        try:
            for host in self.hosts:
                await host.send("flood", window=window, burst=max(1, window // 4))
            for host in self.hosts:
                await host.expect("flooding", within=10)
            await asyncio.sleep(warmup)
            (before, started), meter = await self._count(), CpuWindow(self.pids)
            await asyncio.sleep(seconds)
            after, ended = await self._count()
            events = after - before
            cpu = meter.read(events)
            for host in self.hosts:
                await host.send("stop-flood")
            last = await self._last_seqs("flood-stopped", DRAIN_TIMEOUT)
            await self.wait_applied(last, within=DRAIN_TIMEOUT)
        finally:
            await self.controller.send("feedback", on=False)
        return {"per_s": events / (ended - started), "events": events, "window": window, **cpu}

    async def latency(self, rate: float, warmup: float, seconds: float) -> dict[str, Any]:
        total = len(self.where)
        for host, size in zip(self.hosts, self.sizes, strict=True):
            await host.send("pace", rate=rate * size / total, seconds=warmup + seconds)
        await asyncio.sleep(warmup)
        await self.controller.send("delays", on=True)
        meter = CpuWindow(self.pids)
        await asyncio.sleep(seconds)
        cpu = meter.read(rate * seconds)
        paced = [await host.expect("paced", within=DRAIN_TIMEOUT) for host in self.hosts]
        last = {key: paced[h]["last_seq"][i] for key, (h, i) in self.where.items()}
        await self.wait_applied(last, within=DRAIN_TIMEOUT)
        sent = sum(int(answer["sent"]) for answer in paced)
        await self.controller.send("delays", on=False)
        delays = (await self.controller.expect("delays", within=DRAIN_TIMEOUT))["delays"]
        return {"delays": delays, "sent": sent, **cpu}

    async def close(self) -> None:
        await self.controller.stop()
        for host in self.hosts:
            await host.stop()
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
    def pids(self) -> dict[str, list[int]]:
        return {
            "receiver": [os.getpid()],
            "forwarder": [self.forwarder.pid],
            "senders": [self.senders.pid],
        }

    async def throughput(self, warmup: float, seconds: float) -> dict[str, Any]:
        receiver = self.receiver
        receiver.count, receiver.mode = 0, COUNT
        await self.senders.send("flood")
        await self.senders.expect("flooding", within=10)
        await asyncio.sleep(warmup)
        before, meter = receiver.count, CpuWindow(self.pids)
        await asyncio.sleep(seconds)
        messages = receiver.count - before
        cpu = meter.read(messages)
        elapsed = time.monotonic() - meter.start
        await self.senders.send("stop-flood")
        sent = int((await self.senders.expect("flood-stopped", within=10))["sent"])
        deadline = time.monotonic() + BARE_DRAIN_TIMEOUT
        while receiver.count < sent and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        receiver.mode = DISCARD
        # The figure was taken in the window; a flood that did not drain in time (a
        # machine shared with other work) is said, not fatal: the next window's
        # warm-up takes up what is left.
        undrained = max(0, sent - receiver.count)
        if undrained:
            late = f"{undrained} of {sent} messages not read within {BARE_DRAIN_TIMEOUT:.0f} s"
            print(f"  bare: {late}", file=sys.stderr, flush=True)
        return {"per_s": messages / elapsed, "events": messages, "undrained": undrained, **cpu}

    async def latency(
        self, rate: float, warmup: float, seconds: float, arrival: float = BARE_ARRIVAL
    ) -> dict[str, Any]:
        receiver, delays = self.receiver, list[int]()
        receiver.delays = delays
        receiver.stamp_offset = (RECEIVER_ID + BODY).find(MARKER)
        receiver.mode = STAMP
        await self.senders.send("pace", rate=rate, seconds=warmup + seconds)
        await asyncio.sleep(warmup)
        delays.clear()
        meter = CpuWindow(self.pids)
        await asyncio.sleep(seconds)
        cpu = meter.read(rate * seconds)
        paced = await self.senders.expect("paced", within=DRAIN_TIMEOUT)
        await asyncio.sleep(arrival)  # the last ones arrive
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
