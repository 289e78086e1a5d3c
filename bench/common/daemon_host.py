"""A load process of the controller-resync benchmark: many real machine daemons.

``python -m bench.common.daemon_host --url URL --count N --root DIR``

Runs ``N`` real :class:`daemon.runtime.Daemon` objects on one event loop (uvloop),
each with its own home under ``DIR`` (keys, store, SQLite event log, local API
socket), all dialling the relay at ``URL``. Each daemon's terminal writes JSON
lines into a stream that this process reads, so what a person would see is what
drives the benchmark:

- ``{"event": "code", "index": i, "code": "starmux://pair/v1?..."}`` for every
  pairing code a daemon shows (the parent pairs it through ``client.actions.pair``);
- ``{"event": "all-paired"}`` once every daemon is paired and connected.

Commands (stdin, JSON lines):

- ``history`` ``{"lines": K}``: every daemon appends a finished session of ``K``
  output lines (100 bytes each) to its event log, as the session manager would;
  answers ``{"event": "history", "last_seq": {machine key hex: seq}}``.
- ``arm`` ``{"since": T}``: the first "connected" of each daemon after monotonic
  time ``T`` is recorded; when every daemon has one: ``{"event": "back", "times":
  [...], "stats": {...}}`` (``report`` sends the same at once).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop

from bench.common.procs import commands, emit
from starmux.daemon.runtime import Daemon
from starmux.daemon.terminal import Terminal
from starmux.messages import APP, Output, OutputStream, SessionCreated, SessionStatusChanged
from starmux.session_state import Status

LINE = b"x" * 99 + b"\n"


class EventStream(io.StringIO):
    """A terminal stream that hands each JSON line to ``on_event`` and keeps nothing."""

    def __init__(self, on_event: Callable[[dict[str, Any]], None]) -> None:
        super().__init__()
        self._on_event = on_event

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.startswith("{"):
                self._on_event(json.loads(line))
        return len(text)


class DaemonHost:
    def __init__(self, url: str, count: int, root: Path, first: int = 0) -> None:
        work = root / "work"
        work.mkdir(parents=True, exist_ok=True)
        self.daemons = [
            Daemon(
                root / f"d{i:03d}",
                relay_url=url,
                name=f"storm-d{first + i:03d}",
                terminal=Terminal(stream=EventStream(self._listener(i)), json_lines=True),
                allow_roots=[work],
            )
            for i in range(count)
        ]
        self.work = work
        self.paired: set[int] = set()
        self.all_paired = asyncio.Event()
        self.since: float | None = None
        self.pending: set[int] = set()
        self.times: list[float] = []
        self.stats: collections.Counter[str] = collections.Counter()

    def run_all(self) -> list[asyncio.Task[None]]:
        """Run every daemon; one that stops with an error is reported to the parent."""

        def crashed(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                emit("error", detail=f"a daemon stopped: {task.exception()!r}")

        tasks = [asyncio.create_task(d.run()) for d in self.daemons]
        for task in tasks:
            task.add_done_callback(crashed)
        return tasks

    def _listener(self, index: int) -> Callable[[dict[str, Any]], None]:
        def on_event(event: dict[str, Any]) -> None:
            self._on_event(index, event)

        return on_event

    def _on_event(self, index: int, event: dict[str, Any]) -> None:
        name = event["event"]
        self.stats[name] += 1
        if name == "pairing-code":
            emit("code", index=index, code=event["code"])
        elif name == "connected":
            now = time.monotonic()
            self.paired.add(index)
            if len(self.paired) == len(self.daemons):
                self.all_paired.set()
            if self.since is not None and index in self.pending and now > self.since:
                self.pending.discard(index)
                self.times.append(now)
                if not self.pending:
                    self.report("back")

    def arm(self, since: float) -> None:
        self.since = since
        self.pending = set(range(len(self.daemons)))
        self.times = []
        self.stats = collections.Counter()

    def report(self, event: str) -> None:
        emit(event, times=self.times, pending=len(self.pending), stats=dict(self.stats))

    async def history(self, lines: int) -> dict[str, int]:
        """A finished session of ``lines`` output lines in every daemon's log."""

        async def one(index: int, daemon: Daemon) -> tuple[str, int]:
            session, log, now = f"s-storm{index:03d}", daemon.log, time.time()
            created = SessionCreated(("storm",), str(self.work), "storm history", False, "k-0")
            await log.append(session, APP.encode(created), at=now)
            body = APP.encode(Output(OutputStream.STDOUT, LINE))
            await asyncio.gather(*(log.append(session, body, at=now) for _ in range(lines)))
            done = SessionStatusChanged(Status.SUCCEEDED, 0, "exited 0")
            seq = await log.append(session, APP.encode(done), at=now)
            assert daemon.keys is not None
            return daemon.keys.sign_public.hex(), seq

        return dict(await asyncio.gather(*(one(i, d) for i, d in enumerate(self.daemons))))


async def start_from_argv() -> tuple[DaemonHost, list[asyncio.Task[None]]]:
    """A load process's daemons from ``--url --count --root``, running and all paired."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--first", type=int, default=0, help="the first daemon's number")
    args = parser.parse_args()
    host = DaemonHost(args.url, args.count, args.root, args.first)
    tasks = host.run_all()
    await host.all_paired.wait()
    return host, tasks


async def stop_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def main() -> None:
    host, tasks = await start_from_argv()
    emit("all-paired")
    async for command in commands():
        if command["cmd"] == "history":
            started = time.monotonic()
            last_seq = await host.history(int(command["lines"]))
            emit("history", last_seq=last_seq, seconds=time.monotonic() - started)
        elif command["cmd"] == "arm":
            host.arm(float(command["since"]))
            emit("armed")
        elif command["cmd"] == "report":
            host.report("report")
        elif command["cmd"] == "stop":
            break
    await stop_all(tasks)


if __name__ == "__main__":
    uvloop.run(main())
