"""Processes of the reconnect-storm benchmark, seen from its parent (``python -m bench.storm``).

- :class:`RelayProcess`: ``starmux relay serve --json`` on a fixed port and data dir,
  started and stopped (SIGTERM or SIGKILL) as often as needed; ``ready_at`` is the
  ``time.monotonic()`` at which its "listening" line was read.
- :class:`LoadProcess`: a ``python -m bench.X.Y`` child (``bench.storm.clients``,
  ``bench.common.daemon_host``, ``bench.e2e.daemons``) that takes JSON commands on
  stdin and answers with JSON lines on stdout.
- :class:`Sampler`: RSS and CPU time of a process from ``/proc``, a few times a second.
- :class:`Profiler`: ``py-spy record`` on the relay, summed up by function.
- :func:`emit` and :func:`commands`: the children's side of the JSON-lines pipe.

Times are ``time.monotonic()`` readings, which on Linux come from one clock
(CLOCK_MONOTONIC) shared by every process, so the children's timestamps compare
directly with the parent's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import re
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- /proc -----------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def peak_rss_kib(pid: int) -> int:
    """``VmHWM``: the most RSS the process ever had."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def machine_busy_seconds() -> float:
    """CPU time spent by everything on this machine (all cores), from /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:9]]
    return (sum(values) - values[3] - values[4]) / TICKS


@dataclass(frozen=True)
class Sample:
    at: float
    cpu: float  # seconds of CPU used by the process so far
    rss_kib: int
    busy: float  # machine_busy_seconds()


class Sampler:
    """Samples one process every ``interval`` seconds until stopped or it exits."""

    def __init__(self, pid: int, *, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[Sample] = []
        self._task = asyncio.get_running_loop().create_task(self._run())

    def sample(self) -> Sample | None:
        try:
            sample = Sample(
                time.monotonic(), cpu_seconds(self.pid), rss_kib(self.pid), machine_busy_seconds()
            )
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return None
        self.samples.append(sample)
        return sample

    async def _run(self) -> None:
        while True:
            if self.sample() is None:
                return  # the process exited
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        self.sample()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def between(self, start: float, end: float) -> dict[str, float]:
        """CPU% (of one core) and seconds, peak and last RSS, machine busy cores in
        [start, end] (from the last sample before ``start``)."""
        inside = [s for s in self.samples if start <= s.at <= end]
        before = [s for s in self.samples if s.at <= start]
        first = before[-1] if before else (inside[0] if inside else None)
        last = inside[-1] if inside else None
        if first is None or last is None or last.at <= first.at:
            return {"cpu_pct": 0.0, "cpu_s": 0.0, "rss_peak_mib": 0.0, "rss_end_mib": 0.0,
                    "busy_cores": 0.0}  # fmt: skip
        wall = last.at - first.at
        return {
            "cpu_pct": 100 * (last.cpu - first.cpu) / wall,
            "cpu_s": last.cpu - first.cpu,
            "rss_peak_mib": max(s.rss_kib for s in [first, *inside]) / 1024,
            "rss_end_mib": last.rss_kib / 1024,
            "busy_cores": (last.busy - first.busy) / wall,
        }


# --- the relay -------------------------------------------------------------------------


@dataclass
class RelayProcess:
    data_dir: Path
    port: int
    env: dict[str, str]
    log_path: Path
    proc: asyncio.subprocess.Process | None = None
    _log_offset: int = 0
    ready_at: float = 0.0
    started: dict[str, Any] = field(default_factory=dict)
    url: str = ""
    _reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> RelayProcess:
        """Start and wait for the "listening" line (sets ``ready_at``)."""
        env = {**os.environ, **self.env}
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "starmux.cli", "relay", "serve", "--json",
                "--port", str(self.port), "--data-dir", str(self.data_dir),
                "--log-level", "warning",
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=log, env=env, cwd=ROOT,
            )  # fmt: skip
        assert self.proc.stdout is not None
        async with asyncio.timeout(START_TIMEOUT):
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"the relay exited at start; see {self.log_path}")
                if not line.startswith(b"{"):
                    continue
                event = json.loads(line)
                if event["event"] == "started":
                    self.started = event
                elif event["event"] == "listening":
                    self.ready_at = time.monotonic()
                    self.url = event["url"]
                    break
        self._reader = asyncio.get_running_loop().create_task(self._drain())
        return self

    async def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while await self.proc.stdout.readline():
            pass

    async def stop(self, sig: int = signal.SIGTERM) -> float:
        """Signal the relay and wait for it to exit; returns the exit time."""
        if self.proc is None:
            return time.monotonic()
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        exited = time.monotonic()
        if self._reader is not None:
            with contextlib.suppress(BaseException):
                await self._reader
        self.proc = None
        return exited

    def new_log_lines(self) -> list[str]:
        """What the relay wrote to stderr since the last call (warnings and errors)."""
        if not self.log_path.exists():
            return []
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            data = log.read()
        self._log_offset += len(data)
        return data.decode(errors="replace").splitlines()

    async def metrics(self) -> dict[str, float]:
        """``/metrics`` counters as ``{"name{labels}": value}``."""
        url = self.url.replace("ws://", "http://", 1) + "/metrics"

        def fetch() -> str:
            with urllib.request.urlopen(url, timeout=60) as response:
                return str(response.read().decode())

        values: dict[str, float] = {}
        try:
            text = await asyncio.to_thread(fetch)
        except OSError:  # a relay too busy to answer still has a storm to report
            return values
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    values[name] = float(value)
        return values


# --- load processes --------------------------------------------------------------------


class LoadProcess:
    """A ``python -m MODULE ARGS`` child speaking JSON lines (commands in, events out)."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.progress: dict[str, Any] = {}  # the latest "progress" event
        #: Events handed to a callback as they arrive instead of queued for ``expect``.
        self.listeners: dict[str, Callable[[dict[str, Any]], None]] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def start(cls, name: str, module: str, *args: str, log_path: Path) -> LoadProcess:
        with log_path.open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", module, *args,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
                cwd=ROOT, limit=2**24,
            )  # fmt: skip
        return cls(name, proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            if line.startswith(b"{"):
                message = json.loads(line)
                if message["event"] == "progress":
                    self.progress = message
                elif (listener := self.listeners.get(message["event"])) is not None:
                    listener(message)
                else:
                    self.events.put_nowait(message)
        self.events.put_nowait({"event": "exited"})

    async def send(self, command: str, **fields: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": command, **fields}).encode() + b"\n")
        await self.proc.stdin.drain()

    def send_nowait(self, command: str, **fields: Any) -> None:
        """``send`` without waiting for the pipe to drain (from a callback)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": command, **fields}).encode() + b"\n")

    async def expect(self, event: str, *, within: float) -> dict[str, Any]:
        """The next event named ``event`` (others are dropped); raises if the child exits."""
        async with asyncio.timeout(within):
            while True:
                message = await self.events.get()
                if message["event"] == event:
                    return message
                if message["event"] == "exited":
                    raise RuntimeError(f"{self.name} exited (waiting for {event!r})")
                if message["event"] == "error":
                    raise RuntimeError(f"{self.name}: {message.get('detail')}")

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.send("stop")
            try:
                async with asyncio.timeout(20):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        with contextlib.suppress(BaseException):
            await self._reader


# --- the children's side of the pipe ---------------------------------------------------


def emit(event: str, **fields: Any) -> None:
    """One JSON line to the parent."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def commands() -> AsyncIterator[dict[str, Any]]:
    """The parent's commands, one JSON object per stdin line, until stdin closes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        yield json.loads(line)


# --- profiling the relay -----------------------------------------------------------------


class Profiler:
    """``py-spy record`` on a process until :meth:`stop`; collapsed stacks in ``path``."""

    def __init__(self, proc: asyncio.subprocess.Process, path: Path) -> None:
        self.proc = proc
        self.path = path

    @classmethod
    async def start(cls, pid: int, path: Path) -> Profiler:
        py_spy = Path(sys.executable).parent / "py-spy"
        proc = await asyncio.create_subprocess_exec(
            str(py_spy), "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
            "--nonblocking", "--output", str(path),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        return cls(proc, path)

    async def stop(self) -> list[str]:
        """Stop sampling; the functions holding most samples, as table lines."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
            async with asyncio.timeout(30):
                await self.proc.wait()
        return top_functions(self.path) if self.path.exists() else ["(no profile written)"]


def top_functions(path: Path, *, count: int = 25) -> list[str]:
    """Inclusive and self shares of the functions in py-spy's collapsed stacks."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack:
            continue
        n = int(samples)
        total += n
        frames = [re.sub(r":\d+\)$", ")", f.strip()) for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    lines = [f"{total} samples; inclusive% self% function (file)"]
    for frame, n in inclusive.most_common(count):
        lines.append(f"{100 * n / total:5.1f} {100 * own[frame] / total:5.1f}  {frame}")
    lines.append("top self:")
    for frame, n in own.most_common(count):
        lines.append(f"{100 * n / total:5.1f}  {frame}")
    return lines
