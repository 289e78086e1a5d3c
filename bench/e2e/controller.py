"""The end-to-end benchmark's controller, alone in its process (as on a laptop).

``python -m bench.e2e.controller --home DIR``

Runs the shipped :class:`client.live.LiveController` on the controller agent's loop
(:func:`starmux.node.event_loop.run`: uvloop) over a controller home that is
already paired, counts the events it has applied to its SQLite cache (``on_event``
runs after the commit) and, for latency, reads the append time each stamped body carries. Answers
``{"event": "live", "machines": [hex, ...]}`` once every machine is live, then
commands (stdin, JSON lines):

- ``count``: ``{"event": "count", "count": n}``, the events applied so far.
- ``feedback`` ``{"on": bool}``: while on, every :data:`FEEDBACK` seconds the
  cursors that moved, ``{"event": "applied", "seqs": [[i, seq], ...]}`` with ``i``
  the machine's index in the ``live`` answer (the daemons' flow control, relayed
  by the parent; indexes rather than 64-character keys, since this harness traffic
  is counted in the controller's CPU).
- ``wait`` ``{"last_seq": {hex: seq}}``: ``{"event": "caught-up"}`` once every
  cursor reached it (in the background: other commands keep being answered).
- ``delays`` ``{"on": bool}``: start recording append → apply delays; off answers
  ``{"event": "delays", "delays": [ns, ...]}`` sorted.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from bench.common.procs import commands, emit
from bench.e2e.daemons import read_stamp
from starmux.client.live import LiveController
from starmux.client.store import ControllerStore
from starmux.messages import LoggedEvent
from starmux.node import event_loop

FEEDBACK = 0.01  # seconds between cursor reports while the daemons flood
SETUP_TIMEOUT = 60.0
WAIT_TIMEOUT = 120.0


class Watcher:
    def __init__(self) -> None:
        self.applied: dict[bytes, int] = {}
        self.moved: set[bytes] = set()
        self.index: dict[bytes, int] = {}  # machine → its place in the "live" answer
        self.count = 0
        self.delays: list[int] | None = None
        self.progress = asyncio.Event()

    def on_event(self, machine: bytes, event: LoggedEvent) -> None:
        self.applied[machine] = event.seq
        self.moved.add(machine)
        self.count += 1
        self.progress.set()
        if self.delays is not None and (stamp := read_stamp(event.body)) is not None:
            self.delays.append(time.monotonic_ns() - stamp)

    async def feedback(self) -> None:
        while True:
            await asyncio.sleep(FEEDBACK)
            if self.moved:
                seqs = [[self.index[key], self.applied[key]] for key in self.moved]
                self.moved.clear()
                emit("applied", seqs=seqs)

    async def wait(self, last_seq: dict[str, int], controller: LiveController) -> None:
        wanted = {bytes.fromhex(key): seq for key, seq in last_seq.items()}
        async with asyncio.timeout(WAIT_TIMEOUT):
            while any(self.applied.get(key, 0) < seq for key, seq in wanted.items()):
                if controller.closed.is_set():
                    emit("error", detail=f"the controller closed: {controller.close_reason}")
                    return
                self.progress.clear()
                await self.progress.wait()
        emit("caught-up")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, required=True)
    args = parser.parse_args()
    watcher = Watcher()
    background: set[asyncio.Task[None]] = set()
    feedback: asyncio.Task[None] | None = None
    async with ControllerStore(args.home) as store:
        controller = LiveController(store, await store.config(), on_event=watcher.on_event)
        await controller.start()
        live = await controller.wait_live(within=SETUP_TIMEOUT)
        watcher.index = {key: i for i, key in enumerate(live)}
        emit("live", machines=[key.hex() for key in live])
        command: dict[str, Any]
        async for command in commands():
            name = command["cmd"]
            if name == "count":
                emit("count", count=watcher.count)
            elif name == "feedback":
                if feedback is not None:
                    feedback.cancel()
                    feedback = None
                if command["on"]:
                    watcher.moved = set(watcher.applied)
                    feedback = asyncio.create_task(watcher.feedback())
            elif name == "wait":
                task = asyncio.create_task(watcher.wait(command["last_seq"], controller))
                background.add(task)
                task.add_done_callback(background.discard)
            elif name == "delays":
                if command["on"]:
                    watcher.delays = []
                else:
                    emit("delays", delays=sorted(watcher.delays or []))
                    watcher.delays = None
            elif name == "stop":
                break
        await controller.close()


if __name__ == "__main__":
    event_loop.run(main())
