"""A load process of the end-to-end benchmark: real daemons writing output to their logs.

``python -m bench.e2e.daemons --url URL --count N --root DIR``

Runs ``N`` real :class:`daemon.runtime.Daemon` objects (through
:class:`bench.common.daemon_host.DaemonHost`: each its own home, keys, SQLite event log,
relay link) on the event loop ``starmux daemon start`` uses
(:func:`starmux.node.event_loop.run`: uvloop). Pairing is storm_daemons' (``code``
events for the parent to pair), then
``{"event": "all-paired", "machines": [machine key hex, ...]}`` in daemon order.

Every event is an ``Output`` of 1 KiB of data (:data:`bench.common.targets.BODY`), appended
to the daemon's real :class:`~daemon.eventlog.EventLog`; the live service pushes it
to the controller as it would a session's output. Commands (stdin, JSON lines):

- ``prepare``: each daemon logs a ``SessionCreated`` for its session; answers
  ``{"event": "prepared", "last_seq": [...]}``.
- ``flood`` ``{"window": W, "burst": B}``: every daemon appends as fast as it can,
  ``B`` events per call, keeping at most ``W`` events the controller has not applied
  (``applied`` commands tell it the controller's cursor) and at most two bursts
  uncommitted; answers ``flooding``. ``stop-flood`` ends it: ``{"event":
  "flood-stopped", "last_seq": [...]}`` once every append committed.
- ``applied`` ``{"seqs": {"index": seq}}``: the controller's cursors (flow control).
- ``pace`` ``{"rate": R, "seconds": S}``: ``R`` events/s in all, round-robin over the
  daemons, each carrying ``time.monotonic_ns()`` taken at the append (CLOCK_MONOTONIC,
  one clock for every process on the host) at :data:`STAMP_AT` of its body; answers
  ``{"event": "paced", "sent": n, "last_seq": [...]}``.
"""

from __future__ import annotations

import asyncio
import collections
import struct
import time
from typing import Any

from bench.common.daemon_host import start_from_argv, stop_all
from bench.common.pacing import paced
from bench.common.procs import commands, emit
from bench.common.targets import BODY, MARKER
from starmux.daemon.runtime import Daemon
from starmux.messages import APP, Output, OutputStream, SessionCreated
from starmux.node import event_loop

#: The event body: ``Output(OutputStream.STDOUT, 1 KiB)``; the stamp goes where MARKER is.
TEMPLATE = APP.encode(Output(OutputStream.STDOUT, BODY))
STAMP_AT = TEMPLATE.find(MARKER)
_STAMP = struct.Struct("<q")


def session_id(index: int) -> str:
    return f"s-e2e{index:03d}"


def stamped(now_ns: int) -> bytes:
    return TEMPLATE[:STAMP_AT] + _STAMP.pack(now_ns) + TEMPLATE[STAMP_AT + _STAMP.size :]


def read_stamp(body: bytes) -> int | None:
    """The send time in a body made by :func:`stamped` (None for other bodies)."""
    if len(body) != len(TEMPLATE):
        return None
    return int(_STAMP.unpack_from(body, STAMP_AT)[0])


class Traffic:
    """What the daemons write, and the flow control that keeps the flood bounded."""

    def __init__(self, daemons: list[Daemon]) -> None:
        self.daemons = daemons
        self.applied = [0] * len(daemons)  # the controller's cursor per daemon
        self.moved = [asyncio.Event() for _ in daemons]
        self.flooding = False
        self.tasks: list[asyncio.Task[None]] = []

    def last_seqs(self) -> list[int]:
        return [d.log.last_seq for d in self.daemons]

    async def prepare(self) -> None:
        now = time.time()
        for index, daemon in enumerate(self.daemons):
            created = SessionCreated(("e2e",), "/", f"e2e {index}", False, f"k-e2e{index}")
            await daemon.log.append(session_id(index), APP.encode(created), at=now)

    def on_applied(self, seqs: dict[str, int]) -> None:
        for index, seq in seqs.items():
            i = int(index)
            self.applied[i] = max(self.applied[i], seq)
            self.moved[i].set()

    def start_flood(self, window: int, burst: int) -> None:
        self.flooding = True
        loop = asyncio.get_running_loop()
        self.tasks = [
            loop.create_task(self._flood(i, window, burst)) for i in range(len(self.daemons))
        ]

    async def stop_flood(self) -> None:
        self.flooding = False
        for moved in self.moved:
            moved.set()
        await asyncio.gather(*self.tasks)
        self.tasks = []

    async def _flood(self, index: int, window: int, burst: int) -> None:
        log, session = self.daemons[index].log, session_id(index)
        issued = log.last_seq  # the seq the last queued append will get (no other writer)
        uncommitted: collections.deque[asyncio.Future[int]] = collections.deque()
        least = max(1, min(burst, window // 4))
        while self.flooding:
            room = window - (issued - self.applied[index])
            if room < least:
                self.moved[index].clear()
                await self.moved[index].wait()
                continue
            count, at = min(room, burst), time.time()
            for _ in range(count - 1):
                log.append_nowait(session, TEMPLATE, at=at)
            uncommitted.append(log.append_nowait(session, TEMPLATE, at=at))
            issued += count
            if len(uncommitted) > 1:
                await uncommitted.popleft()
        for future in uncommitted:
            await future

    async def pace(self, rate: float, seconds: float) -> int:
        """``rate`` stamped events/s round-robin over the daemons for ``seconds``."""
        logs = [(d.log, session_id(i)) for i, d in enumerate(self.daemons)]
        pending: list[asyncio.Future[int]] = []
        sent = turn = 0
        async for due in paced(rate, seconds):
            at = time.time()
            for _ in range(due):
                log, session = logs[turn]
                turn = (turn + 1) % len(logs)
                pending.append(log.append_nowait(session, stamped(time.monotonic_ns()), at=at))
            sent += due
        await asyncio.gather(*pending)  # every append committed (or its error raised)
        return sent


async def main() -> None:
    host, tasks = await start_from_argv()
    keys = [d.keys.sign_public.hex() for d in host.daemons if d.keys is not None]
    emit("all-paired", machines=keys)
    traffic = Traffic(host.daemons)
    command: dict[str, Any]
    async for command in commands():
        name = command["cmd"]
        if name == "applied":
            traffic.on_applied(command["seqs"])
        elif name == "prepare":
            await traffic.prepare()
            emit("prepared", last_seq=traffic.last_seqs())
        elif name == "flood":
            traffic.start_flood(int(command["window"]), int(command["burst"]))
            emit("flooding")
        elif name == "stop-flood":
            await traffic.stop_flood()
            emit("flood-stopped", last_seq=traffic.last_seqs())
        elif name == "pace":
            sent = await traffic.pace(float(command["rate"]), float(command["seconds"]))
            emit("paced", sent=sent, last_seq=traffic.last_seqs())
        elif name == "stop":
            break
    await stop_all(tasks)


if __name__ == "__main__":
    event_loop.run(main())
